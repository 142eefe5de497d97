"""Token provenance (issue 25): which grid cell each token holds is followed through the pass.

Oracles here never use gradattr's layout code: the expected grid and the position of each
patch token come from where the toy model (``zoo_models``) puts them, and the attention maps
from probabilities the models return themselves (``output_attentions``, explicit softmax).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_models import DetTransformer, ToyAttention, _det_transformer, _video_hwt, hwt

import gradattr
from gradattr.errors import GradattrError
from expected_warnings import ZERO_MAPS


def _grad_cam_oracle(net, x, layer, read, target=1, relu=True):
    kept = {}
    h = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        y = net(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(y[:, target].sum(), kept["a"])
    a, g = read(kept["a"].detach()), read(g)
    w = g.flatten(2).mean(-1)
    cam = (w.reshape(*w.shape, *[1] * (a.ndim - 2)) * a).sum(1)
    return torch.relu(cam) if relu else cam


def test_token_order_reads_trailing_and_permuted_positions():
    """A shadow by hand: -1 at 0 and at the end, cells of a 2 x 3 grid in column order between."""
    from gradattr.provenance import token_order
    cells = [0, 3, 1, 4, 2, 5]  # (h, w) stored column-major
    s = torch.tensor([-1, *cells, -1, -1], dtype=torch.int32)[None, :, None].expand(2, 9, 4)
    order = token_order(s, 1, (2, 3))
    assert order.grid == (2, 3)
    assert order.index == (1, 3, 5, 2, 4, 6)
    assert order.others == (0, 7, 8) and order.extra == 3 and not order.leading


def test_detection_tokens_after_the_patches_explicit_and_automatic():
    """[CLS] + 4 x 6 patches + 5 detection tokens: c6b319c read 6 leading extras (shifted by 5)."""
    net, x = _det_transformer()
    read = lambda t: t[:, 1:25].reshape(2, 4, 6, -1).movedim(-1, 1)  # noqa: E731 - where the toy puts them
    ref = _grad_cam_oracle(net, x, "blocks.1.norm1", read)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="blocks.1.norm1", upsampling="none")
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-5)
    cam, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    torch.testing.assert_close(cam, _grad_cam_oracle(net, x, layer, read), rtol=1e-4, atol=1e-5)


def test_leading_count_that_the_pass_contradicts_is_refused_and_its_advice_works():
    """feature_layout='tokens:6' (c6b319c's own advice) is refused; following the refusal's
    suggestion literally (feature_layout='tokens') gives the oracle's map."""
    net, x = _det_transformer()
    with pytest.raises(GradattrError, match=r"6 other tokens at positions 0, 25-29") as e:
        gradattr.grad_cam(net, x, 1, feature_layer="blocks.1.norm1", feature_layout="tokens:6")
    assert "feature_layout='tokens' reads them as observed" in str(e.value)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="blocks.1.norm1", feature_layout="tokens",
                            upsampling="none")
    read = lambda t: t[:, 1:25].reshape(2, 4, 6, -1).movedim(-1, 1)  # noqa: E731
    torch.testing.assert_close(cam, _grad_cam_oracle(net, x, "blocks.1.norm1", read), rtol=1e-4, atol=1e-5)


def test_divided_space_time_tokens_keep_time_first():
    """Tokens in (h, w, t) order are read as (T, h, w): c6b319c returned an (h, w, T) grid."""
    net, x = _video_hwt(3, (16, 24))
    ref = _grad_cam_oracle(net, x, "norm", hwt(3, 2, 3))
    cam = gradattr.grad_cam(net, x, 1, feature_layer="norm", upsampling="none", input_format="BCSSS")
    assert cam.shape == (2, 3, 2, 3)
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-5)
    full = gradattr.grad_cam(net, x, 1, feature_layer="norm", input_format="BCSSS", upsampling="nearest")
    assert full.shape == (2, 3, 16, 24)  # time stays the time axis (3 frames)


class _ExplicitAttention(nn.Module):
    """ToyAttention's weights computed explicitly, keeping the probabilities (the oracle's)."""

    def __init__(self, attn: ToyAttention, store: list):
        super().__init__()
        self.attn, self.store = attn, store

    def forward(self, x):
        a = self.attn
        b, length, c = x.shape
        q, k, v = a.qkv(x).reshape(b, length, 3, a.heads, c // a.heads).permute(2, 0, 3, 1, 4).unbind(0)
        p = torch.softmax(q @ k.transpose(-1, -2) / (c // a.heads) ** 0.5, -1)
        self.store.append(p)
        return a.proj((p @ v).transpose(1, 2).reshape(b, length, c))


def _probs(net: DetTransformer, x):
    store = []
    olds = [blk.attn for blk in net.blocks]
    try:
        for blk in net.blocks:
            blk.attn = _ExplicitAttention(blk.attn, store)
        y = net(x)
    finally:
        for blk, old in zip(net.blocks, olds):
            blk.attn = old
    return y, store


def test_attention_rollout_and_chefer_read_the_patches_between_class_and_detection_tokens():
    net, x = _det_transformer()
    y, probs = _probs(net, x)
    cols = torch.arange(1, 25)
    r = torch.eye(30).expand(2, 30, 30)
    for p in probs:
        step = (p.mean(1) + torch.eye(30)) / 2
        r = (step / step.sum(-1, keepdim=True)) @ r
    want = r[:, 0, cols].reshape(2, 4, 6)  # the class token's row over the patches
    got = gradattr.attention_rollout(net, x, upsampling="none")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    grads = torch.autograd.grad(y[:, 1].sum(), probs)
    r = torch.eye(30).expand(2, 30, 30)
    for p, g in zip(probs, grads):
        r = r + (g * p).clamp(min=0).mean(1) @ r
    want = r[:, 0, cols].reshape(2, 4, 6)
    got = gradattr.transformer_attribution(net, x, 1, upsampling="none")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _bert(**cfg):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3, max_position_embeddings=32, **cfg)
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(config).eval()
    eager = transformers.BertForSequenceClassification(
        transformers.BertConfig(**{**config.to_dict(), "attn_implementation": "eager"})).eval()
    eager.load_state_dict(net.state_dict())
    return net, eager


def test_text_classifier_attention_maps_are_per_token():
    """BERT on token ids (N, L): one value per token, (N, L); c6b319c returned (N,)."""
    net, eager = _bert()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    out = eager(input_ids=ids, output_attentions=True)
    att = out.attentions
    r = torch.eye(12).expand(2, 12, 12)
    for a in att:
        step = (a.mean(1) + torch.eye(12)) / 2
        r = (step / step.sum(-1, keepdim=True)) @ r
    got = gradattr.attention_rollout(net, (ids,), upsampling="none")
    assert got.shape == (2, 12)
    torch.testing.assert_close(got, r.mean(1), rtol=1e-4, atol=1e-6)
    grads = torch.autograd.grad(out.logits[:, 2].sum(), att)
    r = torch.eye(12).expand(2, 12, 12)
    for a, g in zip(att, grads):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    got = gradattr.transformer_attribution(net, (ids,), 2, upsampling="none")
    assert got.shape == (2, 12)
    torch.testing.assert_close(got, r.mean(1), rtol=1e-4, atol=1e-6)


@ZERO_MAPS
def test_a_pooled_vector_is_never_read_channels_last():
    """(N, 5, 1, 1) from a pooling on a 5 x 1 input: c6b319c read it channels last as a 5 x 1 grid."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()
    x = torch.randn(2, 3, 5, 1)
    cam, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert layer in ("0", "1")
    assert cam.shape == (2, 5, 1)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="2", upsampling="none")
    assert cam.shape == (2, 1, 1)  # its 1 x 1 map, channels first (MATLAB accepts any explicit layer)


@pytest.mark.slow  # building CoaT takes a second
def test_a_tensor_inside_attention_is_refused_and_the_advice_works():
    """CoaT's conv relative-position term (N, heads, tokens, head_dim): never chosen, refused when
    named; the refusal's two suggestions, followed literally, both give maps."""
    from zoo_models import _coat
    net, x = _coat()
    _, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert "crpe" not in layer and layer == "serial_blocks4.0.norm1"
    with pytest.raises(GradattrError, match=r"inside attention") as e:
        gradattr.grad_cam(net, x, 1, feature_layer="serial_blocks4.0.factoratt_crpe.crpe")
    msg = str(e.value)
    assert "choose the output of the block or of the attention module" in msg
    assert "feature_layout=callable" in msg
    for name in ("serial_blocks4.0", "serial_blocks4.0.factoratt_crpe"):  # the block's, the module's
        cam = gradattr.grad_cam(net, x, 1, feature_layer=name, upsampling="none")
        assert cam.shape == (2, 2, 2)

    def per_head(t):  # (N, heads, 1 + 4, d) -> (N, heads * d, 2, 2), the class token dropped
        return t[:, :, 1:].permute(0, 1, 3, 2).reshape(t.shape[0], -1, 2, 2)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="serial_blocks4.0.factoratt_crpe.crpe",
                            feature_layout=per_head, upsampling="none")
    assert cam.shape == (2, 2, 2)


def test_plain_cnn_readings_are_unchanged_by_provenance():
    """A CNN's channels-first map, with padding and strides, still reads as before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 3, 32, 40)
    cam, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert layer == "4" and cam.shape == (2, 8, 10)
    read = lambda t: t  # noqa: E731
    torch.testing.assert_close(cam, _grad_cam_oracle(net, x, "4", read), rtol=1e-4, atol=1e-6)


def test_functional_pad_and_shadow_do_not_break_unknown_ops():
    """An operation the provenance cannot follow (an FFT) ends it; the pass is not disturbed."""
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            f = self.conv(F.pad(x, (1, 1, 1, 1)))[..., 1:-1, 1:-1]
            return self.fc(torch.fft.fft2(f).abs().mean((2, 3)))
    torch.manual_seed(0)
    net = Spectral().eval()
    x = torch.randn(2, 3, 8, 8)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="conv", upsampling="none")
    assert cam.shape == (2, 10, 10)


class ConvRelPos(nn.Module):
    """CoaT's convolutional relative-position term: a depthwise convolution of the values on
    the grid, times the queries: ``(N, heads, 1 + h w, head_dim)``."""

    def __init__(self, heads, d, grid):
        super().__init__()
        self.grid, self.conv = grid, nn.Conv2d(heads * d, heads * d, 3, padding=1, groups=heads * d)

    def forward(self, q, v):
        n, heads, length, d = v.shape
        img = v[:, :, 1:].transpose(-1, -2).reshape(n, heads * d, *self.grid)
        rel = self.conv(img).reshape(n, heads, d, length - 1).transpose(-1, -2)
        return F.pad(q[:, :, 1:] * rel, (0, 0, 1, 0))


class FactorAttention(nn.Module):
    """Factorized attention (softmax over the keys' tokens, ``K^T V`` then ``Q (K^T V)``): no
    softmax over the last dim and no ``*Attention`` class name to recognise it by."""

    def __init__(self, d, grid, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.crpe = ConvRelPos(heads, d // heads, grid)

    def forward(self, x):
        n, length, c = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        factor = k.softmax(dim=2).transpose(-1, -2) @ v
        o = q @ factor + self.crpe(q, v)
        return self.proj(o.transpose(1, 2).reshape(n, length, c))


class FactorNet(nn.Module):
    def __init__(self, d=16, grid=(4, 4), pool="cls"):
        super().__init__()
        self.pool = pool  # "cls": the class token scores; "mean": every token does
        self.patch, self.cls = nn.Conv2d(3, d, 4, 4), nn.Parameter(torch.randn(1, 1, d))
        self.norm1, self.attn, self.norm = nn.LayerNorm(d), FactorAttention(d, grid), nn.LayerNorm(d)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        t = torch.cat([self.cls.expand(len(x), -1, -1), self.patch(x).flatten(2).transpose(1, 2)], 1)
        t = t + self.attn(self.norm1(t))
        t = self.norm(t)
        return self.fc(t[:, 0] if self.pool == "cls" else t.mean(1))


def test_a_per_head_tensor_inside_factorized_attention_is_no_candidate_and_its_refusal_advice_works():
    """c6b319c chose the relative-position term (N, heads, tokens, head_dim) automatically, read
    channels first, and accepted it by name. Now: the block's input norm, read on the 4 x 4 grid."""
    torch.manual_seed(0)
    net, x = FactorNet().eval(), torch.randn(2, 3, 16, 16)
    cam, layer, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert layer == "norm1"
    read = lambda t: t[:, 1:].reshape(2, 4, 4, -1).movedim(-1, 1)  # noqa: E731 - where the toy puts them
    torch.testing.assert_close(cam, _grad_cam_oracle(net, x, "norm1", read), rtol=1e-4, atol=1e-6)
    with pytest.raises(GradattrError, match=r"'attn\.crpe''s output.*inside attention") as e:
        gradattr.grad_cam(net, x, 1, feature_layer="attn.crpe")
    assert "choose the output of the block or of the attention module" in str(e.value)
    # the advice, followed literally: the attention module's output; a callable. The one-block toy
    # scores its class token, which the block's patch outputs do not feed: score every token here
    net.pool = "mean"
    cam = gradattr.grad_cam(net, x, 1, feature_layer="attn", upsampling="none", relu=False)
    want = _grad_cam_oracle(net, x, "attn", read, relu=False)
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-6)

    def per_head(t):
        return t[:, :, 1:].permute(0, 1, 3, 2).reshape(t.shape[0], -1, 4, 4)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="attn.crpe", feature_layout=per_head, upsampling="none",
                            relu=False)
    want = _grad_cam_oracle(net, x, "attn.crpe", per_head, relu=False)
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-6)


def test_a_reading_in_the_networks_order_puts_maps_back_where_it_took_them():
    """Perturbation methods (Score-CAM, Ablation-CAM) put (B, C, *S) maps back into the tokens:
    each cell's values land at the position that holds it, the other tokens kept."""
    from gradattr.layouts import Reading
    index = (5, 0, 3, 1, 4, 2)  # cell j at position index[j]; positions 6, 7 hold no cell
    r = Reading("tokens", "by hand", extra=2, grid=(2, 3), index=index)
    t = torch.randn(2, 8, 4)
    a = r.to_ncs(t)
    assert torch.equal(a[1, :, 0, 1], t[1, 0]) and torch.equal(a[0, :, 1, 2], t[0, 2])
    b = torch.randn(3, 4, 2, 3)
    back = r.from_ncs(b, t[:1])
    assert torch.equal(back[2, 5], b[2, :, 0, 0]) and torch.equal(back[1, 3], b[1, :, 0, 2])
    assert torch.equal(back[:, 6:], t[:1, 6:].expand(3, 2, 4))


@pytest.mark.slow  # building Hiera takes seconds
def test_hiera_with_its_zero_head_chooses_the_last_stage_and_says_the_score_depends_on_nothing():
    """timm creates Hiera's head as zeros: c6b319c refused the automatic call ("no layer ... with the
    input's layout"); the last stage is readable now, and the warning names the real cause."""
    from gradattr.errors import GradattrWarning
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("hiera_tiny_224", pretrained=False, img_size=64, embed_dim=32, num_heads=1,
                            stages=(1, 1, 1, 1), num_classes=5).eval()
    with pytest.warns(GradattrWarning, match=r"feature layer 'blocks\.3'.*the score does not depend on this layer"):
        cam, layer, _ = gradattr.grad_cam(net, torch.randn(2, 3, 64, 64), 1, upsampling="none",
                                          return_layers=True)
    assert layer == "blocks.3" and cam.shape == (2, 2, 2)
