"""Observe, never guess (issue 16): grids, readings and layers from the forward pass itself.

Every oracle here reads the feature tensor with a hand-written reshape (or captum's own
Grad-CAM), never with gradattr's layout code: a naive Grad-CAM hooks the layer, takes the
gradient of the score with autograd and reads both with the same lambda.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError, GradattrWarning


def naive_grad_cam(net, x, score, module, to_ncs, call=-1):
    """Grad-CAM by hand: hook ``module``'s output (its ``call``-th call), read it with ``to_ncs``."""
    outs = []
    h = module.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
    try:
        y = net(x)
    finally:
        h.remove()
    a = outs[call]
    (g,) = torch.autograd.grad(score(y).sum(), a)
    a, g = to_ncs(a.detach()), to_ncs(g)
    w = g.flatten(2).mean(-1)
    return torch.relu(torch.einsum("nc,nc...->n...", w, a))


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an observed reading is no guess: nothing to warn about
        return fn(*a, **kw)


def close(a, b):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float(b.abs().max()) > 0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


# ----------------------------------------------------------------- 1. geometry observed
def test_timm_vit_dynamic_padding_on_a_non_square_input_is_1_plus_6_x_10():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, dynamic_img_size=True,
                            dynamic_img_pad=True, depth=2).eval()
    x = torch.randn(1, 3, 96, 150)  # 150 is padded to 160: 10 columns of patches, not 9
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 3, upsampling="none", return_layers=True)
    assert layer == "blocks.1.norm1" and cam.shape == (1, 6, 10)
    want = naive_grad_cam(net, x, lambda y: y[:, 3], net.blocks[1].norm1,
                          lambda t: t[:, 1:].reshape(1, 6, 10, -1).permute(0, 3, 1, 2))
    close(cam, want)


class PatchSeries(nn.Module):
    """PatchTST-style: a Conv1d patcher (8 patches of 8 steps), a class token, an encoder."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv1d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        t = self.patch(x).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1)
        return self.fc(self.enc(t)[:, 0])


def test_1d_patches_with_a_class_token_are_read_as_1_plus_8():
    torch.manual_seed(0)
    net, x = PatchSeries().eval(), torch.randn(2, 3, 64)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 1, upsampling="none", return_layers=True)
    # the last layer's patch tokens feed only themselves: the class token reads layer 0's output
    assert layer == "enc.layers.0" and cam.shape == (2, 8)
    want = naive_grad_cam(net, x, lambda y: y[:, 1], net.enc.layers[0], lambda t: t[:, 1:].transpose(1, 2))
    close(cam, want)
    # said outright, the same reading; the class token is not time step 0
    close(gradattr.grad_cam(net, x, 1, upsampling="none", feature_layer="enc.layers.0",
                            feature_layout="tokens:1"), want)


def test_mvit_video_tokens_1_plus_8x4x4_and_an_explicit_tokens_1_is_honoured():
    mv = pytest.importorskip("torchvision.models.video.mvit")
    torch.manual_seed(0)
    c = mv.MSBlockConfig
    blocks = [c(1, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
              c(2, 32, 64, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])]  # the 2nd pools space 2x
    net = mv.MViT(spatial_size=(16, 16), temporal_size=16, block_setting=blocks, residual_pool=True,
                  residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True,
                  num_classes=5).eval()
    x = torch.randn(1, 3, 16, 16, 16)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 2, upsampling="none", return_layers=True)
    assert layer == "blocks.1.norm1" and cam.shape == (1, 8, 4, 4)
    want = naive_grad_cam(net, x, lambda y: y[:, 2], net.blocks[1].norm1,
                          lambda t: t[:, 1:].reshape(1, 8, 4, 4, -1).permute(0, 4, 1, 2, 3))
    close(cam, want)
    close(gradattr.grad_cam(net, x, 2, feature_layer=layer, feature_layout="tokens:1", upsampling="none"),
          want)
    # after the pooling stage the grid is the block's own (8 x 2 x 2), as MViT returns it; the last
    # block's patch tokens feed only themselves, so the class score does not depend on them: said
    with pytest.warns(GradattrWarning, match="the score does not depend on this layer"):
        after = gradattr.grad_cam(net, x, 2, feature_layer="blocks.1", upsampling="none")
    assert after.shape == (1, 8, 2, 2)


@pytest.mark.slow
def test_hf_ast_overlapping_patches_are_2_plus_12_x_9():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_length=100, num_mel_bins=128, num_labels=3)
    ast = transformers.ASTForAudioClassification(cfg).eval()

    class Spectrogram(nn.Module):  # (N, 1, 128 mel bins, 100 frames), as an image
        def __init__(self):
            super().__init__()
            self.ast = ast

        def forward(self, x):
            return self.ast(x[:, 0].transpose(1, 2)).logits

    net, x = Spectrogram().eval(), torch.randn(1, 1, 128, 100)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 1, upsampling="none", return_layers=True)
    assert layer == "ast.audio_spectrogram_transformer.layers.1.layernorm_before" and cam.shape == (1, 12, 9)
    mod = net.ast.audio_spectrogram_transformer.layers[1].layernorm_before
    want = naive_grad_cam(net, x, lambda y: y[:, 1], mod,
                          lambda t: t[:, 2:].reshape(1, 12, 9, -1).permute(0, 3, 1, 2))
    close(cam, want)


# ----------------------------------------------------------------- 2. readings honoured
class TCN(nn.Module):
    """Three dilated Conv1d blocks, the last step into a Linear (the issue's regression)."""

    class Block(nn.Module):
        def __init__(self, c_in, c_out, d):
            super().__init__()
            self.conv, self.act = nn.Conv1d(c_in, c_out, 3, padding=d, dilation=d), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x))

    def __init__(self):
        super().__init__()
        self.tcn = nn.Sequential(self.Block(6, 32, 1), self.Block(32, 32, 2), self.Block(32, 32, 4))
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.tcn(x)[:, :, -1])


def test_tcn_explicit_layer_is_read_channels_first_and_equals_captum():
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    net, x = TCN().eval(), torch.randn(2, 6, 64)
    cam = quiet(gradattr.grad_cam, net, x, 0, feature_layer="tcn", upsampling="none")
    want = captum.LayerGradCam(net, net.tcn).attribute(x, 0, relu_attributions=True)[:, 0]
    assert cam.shape == (2, 64)  # the input's 64 steps, not 32 channels read as time
    close(cam, want.detach())


@pytest.mark.slow
def test_swin3d_norm_reads_channels_last_by_its_observed_grid_and_the_stem_is_not_chosen():
    tvv = pytest.importorskip("torchvision.models.video")
    torch.manual_seed(0)
    net, x = tvv.swin3d_t().eval(), torch.randn(1, 3, 8, 64, 64)
    cam = quiet(gradattr.grad_cam, net, x, 0, feature_layer="norm", upsampling="none")
    want = naive_grad_cam(net, x, lambda y: y[:, 0], net.norm, lambda t: t.permute(0, 4, 1, 2, 3))
    assert cam.shape == (1, 4, 2, 2)  # (T, H, W) of (1, 4, 2, 2, 768): time 2x, space 32x
    close(cam, want)
    auto, layer, _ = gradattr.grad_cam(net, x, 0, upsampling="none", return_layers=True)
    assert not layer.startswith("patch_embed") and auto.shape == (1, 4, 2, 2)


class Opaque(nn.Module):
    """Tokens from a linear layer over the flattened image: no grid to observe."""

    def __init__(self):
        super().__init__()
        self.lift = nn.Linear(3 * 8 * 8, 12 * 16)
        self.mix = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        t = self.lift(x.flatten(1)).view(len(x), 12, 16)
        return self.fc(self.mix(t).mean(1))


def test_tokens_with_no_observed_grid_are_refused_with_the_layout_that_settles_it():
    net, x = Opaque().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(GradattrError, match=r"'mix' outputs tokens of shape \(1, 12, 16\) whose length 12 "
                                            r"cannot be tied.*feature_layout=callable"):
        gradattr.grad_cam(net, x, 0, feature_layer="mix", input_format="BCSS")
    with pytest.raises(GradattrError, match=r"feature_layout: expected 1 extra tokens \+ 11 tokens on a grid "
                                            r"observed in the forward pass for 'mix', got shape \(1, 12, 16\)"):
        gradattr.grad_cam(net, x, 0, feature_layer="mix", feature_layout="tokens:1", input_format="BCSS")
    with pytest.raises(GradattrError, match="no layer of this network outputs"):
        gradattr.grad_cam(net, x, 0, input_format="BCSS")
    # a callable says how to read it: then it is read that way
    cam = gradattr.grad_cam(net, x, 0, feature_layer="mix", upsampling="none", input_format="BCSS",
                            feature_layout=lambda t: t.reshape(1, 3, 4, 16).permute(0, 3, 1, 2))
    assert cam.shape == (1, 3, 4)


# ----------------------------------------------------------------- 3. the automatic layer
class SdpaMixer(nn.Module):
    """Attention under a name that says nothing: found by the attention it computes."""

    def __init__(self, c):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, t):
        return nn.functional.scaled_dot_product_attention(self.q(t), self.k(t), self.v(t))


class TinyVit(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.norm = nn.LayerNorm(16)
        self.mixer = SdpaMixer(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], 1)
        t = t + self.mixer(self.norm(t))
        return self.fc(t[:, 0])


def test_attention_is_known_by_what_it_computes_not_by_its_name():
    torch.manual_seed(0)
    net, x = TinyVit().eval(), torch.randn(1, 3, 16, 16)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 1, upsampling="none", return_layers=True)
    assert layer == "norm" and cam.shape == (1, 4, 4)  # not mixer.v, whose tokens the score also reads
    want = naive_grad_cam(net, x, lambda y: y[:, 1], net.norm,
                          lambda t: t[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2))
    close(cam, want)


def test_monai_attention_unet_explains_its_decoder_not_its_stem():
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = monai.AttentionUnet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    x = torch.randn(1, 1, 32, 32)
    cam, layer, red = quiet(gradattr.grad_cam, net, x, 1, upsampling="none", return_layers=True)
    # model.1 is the AttentionLayer that wraps the whole encoder/decoder; model.0 the stem
    assert layer == "model.1" and red == "model" and cam.shape == (1, 32, 32)
    want = naive_grad_cam(net, x, lambda y: y[:, 1].sum((1, 2)), net.model[1], lambda t: t)
    close(cam, want)


def test_timm_cait_never_chooses_inside_class_attention():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("cait_xxs24_224", pretrained=False, img_size=64, depth=2).eval()
    x = torch.randn(1, 3, 64, 64)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 0, upsampling="none", return_layers=True)
    assert ".attn" not in layer and layer == "blocks_token_only.1.norm1" and cam.shape == (1, 4, 4)
    want = naive_grad_cam(net, x, lambda y: y[:, 0], net.blocks_token_only[1].norm1,
                          lambda t: t[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2))
    close(cam, want)


@pytest.mark.slow
def test_hf_swin_never_chooses_its_pooler():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                  num_heads=[2, 2], window_size=4, num_labels=3)
    net, x = transformers.SwinForImageClassification(cfg).eval(), torch.randn(1, 3, 32, 32)
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, 0, upsampling="none", return_layers=True)
    assert layer == "swin.layernorm" and cam.shape == (1, 4, 4)  # the last stage's 4 x 4 tokens
    want = naive_grad_cam(net, x, lambda y: y.logits[:, 0], net.swin.layernorm,
                          lambda t: t.reshape(1, 4, 4, -1).permute(0, 3, 1, 2))
    close(cam, want)


@pytest.mark.slow
def test_monai_3d_efficientnet_never_chooses_a_padding_around_a_1x1x1_map():
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = monai.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=1,
                               num_classes=2).eval()
    cam, layer, _ = gradattr.grad_cam(net, torch.randn(1, 1, 32, 32, 32), 0, upsampling="none",
                                      return_layers=True)
    assert "padding" not in layer and cam.shape == (1, 2, 2, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_detectors_are_explained_at_their_backbones_last_map(name):
    det = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    kw = {} if name.startswith("ssd") else {"min_size": 64, "max_size": 64}
    net = getattr(det, name)(weights=None, weights_backbone=None, num_classes=3, **kw).eval()
    _, layer, _ = gradattr.grad_cam(net, torch.rand(1, 3, 64, 64), return_layers=True,
                                    reduction_fn=lambda out: torch.stack([o["scores"].sum() for o in out]))
    assert layer.startswith("backbone.") and "head" not in layer


class Captioner(nn.Module):
    """A CNN encoder, a GRU decoder: (N, 3, 32, 32) -> (N, T, vocabulary)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.init = nn.Linear(16, 16)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.init(self.enc(x).mean((2, 3)))
        o, _ = self.gru(h[:, None].expand(-1, self.steps, -1).contiguous(), h[None].contiguous())
        return self.out(o)


@pytest.mark.parametrize("steps", [4, 16, 64])  # 4 and 16 steps once read as 2 x 2 and 4 x 4 "maps"
def test_a_captioner_is_explained_at_its_encoders_last_map(steps):
    torch.manual_seed(0)
    net, x = Captioner(steps).eval(), torch.randn(1, 3, 32, 32)
    word = lambda y: y[:, -1, 3]  # noqa: E731 - the last step's word 3
    cam, layer, _ = quiet(gradattr.grad_cam, net, x, reduction_fn=word, upsampling="none",
                          return_layers=True)
    assert layer == "enc" and cam.shape == (1, 8, 8)
    close(cam, naive_grad_cam(net, x, word, net.enc, lambda t: t))


# ----------------------------------------------------------------- 4. empty and broken maps
@pytest.mark.slow  # building Hiera takes seconds
def test_a_zero_initialised_head_warns_why_and_what_to_try():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("hiera_tiny_224", pretrained=False, img_size=64).eval()  # head.fc is zeros
    with pytest.warns(GradattrWarning, match=r"grad_cam at feature layer 'patch_embed.proj': the map is all "
                                             r"zero.*the score does not depend on this layer.*; try "
                                             r"another feature_layer$"):
        cam = gradattr.grad_cam(net, torch.randn(1, 3, 64, 64), 0, feature_layer="patch_embed.proj")
    assert float(cam.abs().max()) == 0


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()


def test_relu_of_only_negative_sums_warns_with_its_reason():
    net = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        net[4].weight.fill_(-1.0)  # every channel counts against class 0: all weighted sums < 0
    with pytest.warns(GradattrWarning, match=r"every weighted sum was <= 0 before the ReLU"):
        gradattr.grad_cam(net, x, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(gradattr.grad_cam(net, x, 0, counterfactual=True).abs().max()) > 0


def test_a_head_that_reads_nothing_warns_that_the_score_does_not_depend_on_the_layer():
    net = small_cnn()
    with torch.no_grad():
        net[4].weight.zero_()  # a zero-initialised head, as timm's Hiera is created
    with pytest.warns(GradattrWarning, match=r"grad_cam at feature layer '1': the map is all zero \(first: "
                                             r"sample 0, target 0\): the score does not depend on this layer") as w:
        assert float(gradattr.grad_cam(net, torch.randn(1, 3, 8, 8), 0).abs().max()) == 0
    # no sign or ReLU can help a score that does not read the layer: only another layer is suggested
    assert str(w[0].message).endswith("; try another feature_layer"), str(w[0].message)


def test_nan_in_another_class_weight_row_is_an_error_naming_method_layer_and_cause():
    net = small_cnn()
    with torch.no_grad():
        net[4].weight[2, 0] = float("nan")
    x = torch.randn(1, 3, 8, 8)
    assert torch.isfinite(net(x)[:, 0]).all()  # the score of class 0 is finite
    with pytest.raises(GradattrError, match=r"grad_cam: expected finite maps, but the map of sample 0, target "
                                            r"0 at feature layer '1' has NaN or Inf values: the gradients"):
        gradattr.grad_cam(net, x, 0)
    with pytest.raises(GradattrError, match=r"expected finite outputs for the target classes"):
        gradattr.grad_cam(net, x, 2)  # its own score is NaN: refused before any map
    # the model is left as found
    assert torch.isnan(net[4].weight[2, 0]) and not any(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------- 5. every documented name
@pytest.mark.slow  # a fresh interpreter imports torch
def test_import_gradattr_gives_every_documented_module():
    import importlib
    import subprocess
    import sys

    code = ("import gradattr; gradattr.detection.box_score; gradattr.metrics.deletion; gradattr.plot;"
            "gradattr.GradattrWarning; import sys; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # matplotlib, an extra, is imported only to draw
    assert importlib.import_module("gradattr").detection is importlib.import_module("gradattr.detection")


# ----------------------------------------------------------------- MATLAB's rule on CNNs, pinned
def _example(name):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


EXAMPLE_NETS = {  # the MATLAB examples' networks (random weights: the choice depends on the layers only)
    "digits_regression": (lambda: _example("digits_regression").digits_regression_net(), (1, 1, 28, 28),
                          ("dropout", "fc")),
    "japanese_vowels": (lambda: _example("japanese_vowels").vowels_net(torch.zeros(12), torch.ones(12)),
                        (1, 12, 20), ("layernorm_2", "fc")),
    "volume_3d": (lambda: _example("volume_3d").volume_net(), (1, 1, 32, 32, 32), ("relu_3", "fc")),
    "segmentation": (lambda: _example("segmentation").DigitSegmenter(), (1, 1, 20, 40), ("head", "score")),
}
CNNS = {  # what 0.1 picked, before grids were observed
    "resnet18": ("torchvision", "resnet18", ("layer4", "fc")),
    "resnet50": ("torchvision", "resnet50", ("layer4", "fc")),
    "efficientnet_b0": ("torchvision", "efficientnet_b0", ("features", "classifier")),
    "densenet121": ("torchvision", "densenet121", ("features", "classifier")),
    "vgg11": ("torchvision", "vgg11", ("avgpool", "classifier")),
    "convnext_tiny": ("torchvision", "convnext_tiny", ("features", "classifier")),
    "timm_convnext_atto": ("timm", "convnext_atto", ("norm_pre", "head")),
    "timm_resnet18": ("timm", "resnet18", ("layer4", "fc")),
    "timm_efficientnet_b0": ("timm", "efficientnet_b0", ("bn2", "classifier")),
}


@pytest.mark.parametrize("name", list(EXAMPLE_NETS))
def test_the_matlab_examples_keep_their_layers(name):
    build, shape, want = EXAMPLE_NETS[name]
    torch.manual_seed(0)
    net, x = build().eval(), torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradattrWarning)  # random weights may give empty maps
        assert gradattr.grad_cam(net, x, 0, return_layers=True)[1:] == want


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_families_keep_matlabs_rule(name):
    lib, arch, want = CNNS[name]
    torch.manual_seed(0)
    if lib == "timm":
        net = pytest.importorskip("timm").create_model(arch, pretrained=False)
    else:
        net = getattr(pytest.importorskip("torchvision.models"), arch)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradattrWarning)
        assert gradattr.grad_cam(net.eval(), torch.randn(1, 3, 64, 64), 0, return_layers=True)[1:] == want
