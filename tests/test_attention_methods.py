"""attention_rollout and transformer_attribution on timm, torchvision and Hugging Face ViTs.

The references read the attention probabilities of *un-fused* models (timm with
``fused_attn=False``, at each ``attn_drop``'s input; Hugging Face eager attention's
returned probabilities; ``nn.MultiheadAttention(need_weights=True)``) and are compared
with the methods on the same weights running fused ``scaled_dot_product_attention``.
Token grids in the oracles come from the model's configuration, never from gradattr.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import gradattr
from gradattr.errors import GradattrError
from references import naive_chefer, naive_rollout, unfused_attention

timm = pytest.importorskip("timm")


def tiny_vit(img_size=(32, 32), patch=8, reg_tokens=0, classes=4, seed=0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    net = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=32, depth=3, num_heads=4,
                            num_classes=classes, reg_tokens=reg_tokens).double().eval()
    assert all(b.attn.fused_attn for b in net.blocks)  # the fused path is what is explained
    return net


def unfused(net):
    twin = copy.deepcopy(net)
    for b in twin.blocks:
        b.attn.fused_attn = False
    return twin, [b.attn.attn_drop for b in twin.blocks]


def x_of(shape=(2, 3, 32, 32), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("size,reg", [((32, 32), 0), ((32, 48), 2)])
def test_transformer_attribution_on_fused_timm_equals_naive_chefer_on_unfused(size, reg):
    """Non-square grid (4 x 6, not sqrt(L)) and register tokens (3 extra tokens) included."""
    net = tiny_vit(size, reg_tokens=reg)
    twin, drops = unfused(net)
    x = x_of((2, 3, *size))
    grid = (size[0] // 8, size[1] // 8)
    extra = 1 + reg
    got = gradattr.transformer_attribution(net, x, [1, 3], upsampling="none")
    assert got.shape == (2, 2, *grid)
    for i in range(2):
        for k, c in enumerate([1, 3]):
            ref = naive_chefer(twin, x[i:i + 1], drops, lambda y, c=c: y[:, c], extra).reshape(grid)
            torch.testing.assert_close(got[i, k], ref.float(), rtol=1e-5, atol=1e-6)
    assert got.std() > 0


def test_attention_rollout_equals_hand_written_rollout():
    net = tiny_vit()
    twin, drops = unfused(net)
    x = x_of()
    got = gradattr.attention_rollout(net, x, upsampling="none")
    for i in range(2):
        _, probs = unfused_attention(twin, x[i:i + 1], drops)
        torch.testing.assert_close(got[i], naive_rollout(probs).reshape(4, 4).float(), rtol=1e-5, atol=1e-7)
    # upsampled like grad_cam: bicubic to the input's size by default
    assert gradattr.attention_rollout(net, x).shape == (2, 32, 32)
    assert gradattr.attention_rollout(net, x[0], head_fusion="max", discard_ratio=0.5).shape == (32, 32)


def test_discard_ratio_zeroes_the_lowest_attentions_but_not_the_class_token():
    from gradattr.methods.attention import rollout

    a = torch.tensor([[[[0.7, 0.1, 0.2], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]]]])
    # discard 4 of 9: 0.05, 0.05, 0.1, 0.2 -> 0 (ties broken by topk), then (A + I) / 2 renormalised
    kept = torch.tensor([[0.7, 0.0, 0.0], [0.0, 0.9, 0.0], [0.3, 0.3, 0.4]])
    step = (kept + torch.eye(3)) / 2
    torch.testing.assert_close(rollout([a], discard_ratio=4 / 9)[0], step / step.sum(-1, keepdim=True))


def test_deit_distilled_two_extra_tokens():
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            depth=2, num_classes=3).double().eval()
    twin, drops = unfused(net)
    x = x_of()
    got = gradattr.transformer_attribution(net, x, 2, upsampling="none")
    ref = naive_chefer(twin, x[:1], drops, lambda y: y[:, 2], extra=2).reshape(4, 4)
    torch.testing.assert_close(got[0], ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # importing transformers takes seconds
def test_huggingface_vit_sdpa_equals_eager_reference():
    transformers = pytest.importorskip("transformers")
    cfg = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    sdpa = transformers.ViTForImageClassification(transformers.ViTConfig(**cfg, attn_implementation="sdpa"))
    eager = transformers.ViTForImageClassification(transformers.ViTConfig(**cfg, attn_implementation="eager"))
    eager.load_state_dict(sdpa.state_dict())
    sdpa, eager = sdpa.double().eval(), eager.double().eval()
    x = x_of()
    got = gradattr.transformer_attribution(sdpa, x, 1, upsampling="none")
    for i in range(2):
        with torch.enable_grad():
            out = eager(x[i:i + 1], output_attentions=True)
            probs = list(out.attentions)
            grads = torch.autograd.grad(out.logits[0, 1], probs)
        r = torch.eye(17, dtype=torch.float64)
        for a, g in zip(probs, grads):
            r = r + (g[0] * a[0].detach()).clamp(min=0).mean(0) @ r
        torch.testing.assert_close(got[i], r[0, 1:].reshape(4, 4).float(), rtol=1e-5, atol=1e-6)
    # eager attention computes softmax(QK^T) by hand: no call to observe, a clear refusal
    with pytest.raises(GradattrError, match="no attention call was observed"):
        gradattr.attention_rollout(eager, x)


def test_multihead_attention_probabilities_equal_need_weights():
    """torchvision's ViT calls MultiheadAttention(need_weights=False): the captured
    probabilities are what need_weights=True, average_attn_weights=False returns."""
    tv = pytest.importorskip("torchvision")
    from gradattr.capture.attention_blocks import AttentionCapture

    torch.manual_seed(0)
    net = tv.models.VisionTransformer(32, 8, 2, 4, 32, 64, num_classes=3).double().eval()
    nn.init.normal_(net.heads.head.weight)  # torchvision zero-initialises the head
    x = x_of()
    inputs = []
    hs = [layer.self_attention.register_forward_pre_hook(lambda m, a, k: inputs.append(a[0]), with_kwargs=True)
          for layer in net.encoder.layers]
    try:
        with AttentionCapture() as cap:
            y = net(x)
    finally:
        for h in hs:
            h.remove()
    with torch.no_grad():
        y0 = net(x)
    torch.testing.assert_close(y, y0)
    assert len(cap.probs) == 2
    for layer, q, a in zip(net.encoder.layers, inputs, cap.probs):
        _, w = layer.self_attention(q, q, q, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(a, w)
    m = gradattr.transformer_attribution(net, x, [0, 2], upsampling="none")
    assert m.shape == (2, 2, 4, 4) and m.abs().sum() > 0


class SeqTransformer(nn.Module):
    """A 1-D patch embedding (Conv1d, stride 4) and an nn.TransformerEncoder, no class token."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv1d(2, 16, 4, stride=4)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.embed(x).transpose(1, 2)).mean(1))


def test_sequence_transformer_without_class_token_takes_the_mean_row():
    torch.manual_seed(0)
    net = SeqTransformer().double().eval()
    x = x_of((2, 2, 24))
    got = gradattr.attention_rollout(net, x, upsampling="none")
    assert got.shape == (2, 6)  # the grid of the Conv1d's output, 24 / 4
    inputs = []
    hs = [layer.self_attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for layer in net.enc.layers]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hs:
            h.remove()
    for i in range(2):
        probs = [layer.self_attn(q[i:i + 1], q[i:i + 1], q[i:i + 1], need_weights=True,
                                 average_attn_weights=False)[1] for layer, q in zip(net.enc.layers, inputs)]
        torch.testing.assert_close(got[i], naive_rollout(probs, extra=0).float(), rtol=1e-5, atol=1e-7)
    assert gradattr.transformer_attribution(net, x, 1).shape == (2, 24)


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.sdpa = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.sdpa += func is F.scaled_dot_product_attention
        return func(*args, **(kwargs or {}))


def test_model_state_unchanged_and_interception_off_after_the_call():
    net = tiny_vit()
    net.train()
    net.blocks[0].attn.qkv.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    x = x_of()
    x0 = x.clone()
    gradattr.transformer_attribution(net, x, 1)
    gradattr.attention_rollout(net, x)
    with pytest.raises(GradattrError):
        gradattr.transformer_attribution(net, x, 99)  # bad class: the mode must still end
    assert not torch._C._is_torch_function_mode_enabled()
    assert [m.training for m in net.modules()] == flags
    assert not net.blocks[0].attn.qkv.weight.requires_grad and net.blocks[1].attn.qkv.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert torch.equal(x, x0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    net.eval()
    rec = _Recorder()
    with rec, torch.no_grad():
        net(x)
    assert rec.sdpa == 3  # a plain forward still calls the fused kernel, once per block


def test_refusals():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(GradattrError, match="no attention call was observed"):
        gradattr.transformer_attribution(conv, torch.randn(1, 3, 8, 8), 0)
    net = tiny_vit()
    with pytest.raises(GradattrError, match="target"):
        gradattr.attribute(net, x_of(), 1, method="attention_rollout")
    with pytest.raises(GradattrError, match="head_fusion"):
        gradattr.attention_rollout(net, x_of(), head_fusion="median")
    with pytest.raises(GradattrError, match="discard_ratio"):
        gradattr.attention_rollout(net, x_of(), discard_ratio=1.0)


class NoConvTokens(nn.Module):
    """Tokens from a Linear on the time axis: the time steps are the tokens, on the grid the
    pooling's output ``(N, C, T)`` shows (no convolution anywhere)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool1d(1)  # (N, C, T): the grid of T time steps
        self.embed = nn.Linear(2, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.embed(self.pool(x).transpose(1, 2))
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_time_step_tokens_are_read_on_the_observed_time_grid():
    torch.manual_seed(0)
    net, x = NoConvTokens().double().eval(), torch.randn(2, 2, 16, dtype=torch.float64)
    got = gradattr.attention_rollout(net, x, upsampling="none")
    assert got.shape == (2, 16)  # one value per time step, no extra token
    with torch.no_grad():
        t = net.embed(x.transpose(1, 2))
    for i in range(2):
        probs = [net.attn(t[i:i + 1], t[i:i + 1], t[i:i + 1], need_weights=True,
                          average_attn_weights=False)[1]]
        torch.testing.assert_close(got[i], naive_rollout(probs, extra=0).float(), rtol=1e-5, atol=1e-7)


class PairTokens(nn.Module):
    """8 tokens from pairs of time steps by a reshape of a 1-D input: no grid the pass shows has
    8 cells (a 1-D reshape shows none; the input's grid has 16)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        n = x.shape[0]
        t = self.embed(x.reshape(n, 2, 8, 2).permute(0, 2, 1, 3).reshape(n, 8, 4))
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_no_patch_embedding_is_refused_not_guessed():
    with pytest.raises(GradattrError, match=r"patch embedding.* got attention over 8 tokens and the "
                                            r"grid 16 \(the input\); the grid is not guessed"):
        gradattr.attention_rollout(PairTokens().eval(), torch.randn(2, 2, 16), input_format="BCT")


def test_multi_head_attention_parameters_are_torchs():
    """The names and defaults the interception binds F.multi_head_attention_forward's call with
    are the installed torch's, in order."""
    import inspect

    from gradattr.capture.attention_blocks import _MHA_NAMES, _REQUIRED

    params = inspect.signature(F.multi_head_attention_forward).parameters.values()
    want = [(p.name, _REQUIRED if p.default is inspect.Parameter.empty else p.default) for p in params]
    assert list(_MHA_NAMES) == want
