"""The zoo: small, seeded, random-weight architectures with their expected feature layer.

Every entry says how to build the network and its input, which feature layer a person
would pick (``layers``: the first is the one the explicit check uses; the others are
equally right automatic choices), and how that layer's output is read as ``(N, C, *grid)``,
written by hand from the configuration the network was built with (``img_size //
patch_size``, the number of class/register tokens, ...), never from gradattr's layout code.

Nothing is downloaded: timm, torchvision, Hugging Face and MONAI networks are built from
configurations, with ``weights=None`` where a builder has weights.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


# ------------------------------------------------------------------ hand-written readings
def cf(t):
    """channels first ``(N, C, *S)``: as is."""
    return t


def cl(t):
    """channels last ``(N, *S, C)``."""
    return t.movedim(-1, 1)


def tokens(extra: int, *grid: int) -> Callable:
    """``(N, extra + prod(grid), C)``: drop the leading extra tokens, patches in row-major order."""
    def read(t):
        assert t.shape[1] == extra + math.prod(grid), (tuple(t.shape), extra, grid)
        return t[:, extra:].reshape(t.shape[0], *grid, t.shape[-1]).movedim(-1, 1)
    read.__name__ = f"tokens({extra}, {grid})"
    return read


def time_first(t):
    """``(T, N, C)`` (PyTorch's default RNN layout)."""
    return t.permute(1, 2, 0)


# ------------------------------------------------------------------ scores
def logits(y):
    """The class scores of a plain, dict (``logits``/``out``), ModelOutput or tuple output."""
    if isinstance(y, torch.Tensor):
        return y
    if hasattr(y, "keys"):
        for k in ("logits", "out"):
            if k in y:
                return y[k]
    return y[0]


def class_score(target: int) -> Callable:
    """What an integer target scores: the class logit, summed over space for a dense output."""
    def score(y):
        z = logits(y)[:, target]
        return z.flatten(1).sum(1) if z.ndim > 1 else z
    return score


@dataclass
class Case:
    id: str
    family: str
    build: Callable[[], tuple[nn.Module, torch.Tensor]]
    # expected layer -> its hand-written reading (the first: the explicit check), or a function of
    # the network giving that dict (module names that differ between library versions)
    layers: dict[str, Callable] | Callable[[nn.Module], dict[str, Callable]]
    target: int = 1
    fn: Callable | None = None  # a reduction_fn (y -> (N,)); None: the integer target
    fn_from: Callable | None = None  # (net, x) -> reduction_fn, for scores that need a forward pass
    kwargs: dict = field(default_factory=dict)  # further grad_cam options (output_key, ...)
    auto: bool = True  # check the automatic choice too
    refuse: str | None = None  # explicit layer that must be refused (nothing observable)
    fast: bool = False
    rule: str = ""
    explicit_kwargs: dict = field(default_factory=dict)  # options of the explicit check only
    zero_ok: str = ""  # why the oracle map may be all zero (the layer choice is still checked)
    may_refuse: bool = False  # the explicit layer may be refused (an error naming feature_layout)


CASES: list[Case] = []


def named(pattern: str, read: Callable) -> Callable:
    """Expected layers given by a regular expression over module names, read alike."""
    def layers(net):
        found = {n: read for n, _ in net.named_modules() if n and re.fullmatch(pattern, n)}
        assert found, f"no module matches {pattern!r}"
        return found
    return layers


def case(id, family, layers, **kw):
    def deco(build):
        CASES.append(Case(id, family, build, layers, **kw))
        return build
    return deco


def seeded(fn):
    def wrapper(*a, **k):
        torch.manual_seed(0)
        return fn(*a, **k)
    return wrapper


def rand(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _timm(name, **kw):
    import timm
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()


def _normal_head(net, *names):
    """Heads that a library initialises to zero (a constant score) get normal weights."""
    mods = dict(net.named_modules())
    with torch.no_grad():
        for n in names:
            nn.init.normal_(mods[n].weight, std=0.5)
    return net


# ==================================================================== timm
VIT = {"img_size": 64, "depth": 2}
NORM1 = "norm1 of the last block: after the last attention the patch tokens feed only themselves"

case("timm_vit", "timm", {"blocks.1.norm1": tokens(1, 4, 4)}, rule=NORM1)(
    lambda: (_timm("vit_tiny_patch16_224", **VIT), rand(2, 3, 64, 64)))
case("timm_vit_registers", "timm", {"blocks.1.norm1": tokens(5, 4, 4)}, rule=NORM1)(
    lambda: (_timm("vit_tiny_patch16_224", reg_tokens=4, **VIT), rand(2, 3, 64, 64)))
# dynamic padding: 150 is padded to 160, so 6 x ceil(150 / 16) = 6 x 10 patches + the class token
case("timm_vit_dynamic_pad_96x150", "timm", {"blocks.1.norm1": tokens(1, 6, math.ceil(150 / 16))},
     fast=True, rule=NORM1)(
    lambda: (_timm("vit_tiny_patch16_224", dynamic_img_size=True, dynamic_img_pad=True, **VIT),
             rand(1, 3, 96, 150)))
case("timm_vit_non_square", "timm", {"blocks.1.norm1": tokens(1, 64 // 16, 96 // 16)}, rule=NORM1)(
    lambda: (_timm("vit_tiny_patch16_224", img_size=(64, 96), depth=2), rand(2, 3, 64, 96)))
case("timm_vit_avgpool_no_class_token", "timm",
     {"norm": tokens(0, 4, 4), "blocks": tokens(0, 4, 4), "blocks.1": tokens(0, 4, 4)},
     rule="average pooled: the last token tensor (the score depends on every token)")(
    lambda: (_timm("vit_tiny_patch16_224", class_token=False, global_pool="avg", **VIT),
             rand(2, 3, 64, 64)))
case("timm_deit_distilled", "timm", {"blocks.1.norm1": tokens(2, 4, 4)}, rule=NORM1)(
    lambda: (_timm("deit_tiny_distilled_patch16_224", **VIT), rand(2, 3, 64, 64)))
case("timm_deit3", "timm", {"blocks.1.norm1": tokens(1, 4, 4)}, rule=NORM1)(
    lambda: (_timm("deit3_small_patch16_224", embed_dim=64, num_heads=2, **VIT), rand(2, 3, 64, 64)))
case("timm_eva02", "timm", {"norm": tokens(1, 4, 4), "blocks.1": tokens(1, 4, 4)},
     rule="average pooled over the patch tokens: the last token tensor")(
    lambda: (_timm("eva02_tiny_patch14_224", img_size=56, depth=2), rand(2, 3, 56, 56)))
case("timm_beit", "timm", {"norm": tokens(1, 4, 4), "blocks.1": tokens(1, 4, 4)},
     rule="average pooled over the patch tokens: the last token tensor")(
    lambda: (_timm("beit_base_patch16_224", embed_dim=64, num_heads=2, **VIT), rand(2, 3, 64, 64)))
case("timm_cait", "timm", {"blocks_token_only.1.norm1": tokens(1, 4, 4)},
     rule="norm1 of the last class-attention block (its keys and values are the patch tokens)")(
    lambda: (_timm("cait_xxs24_224", embed_dim=64, num_heads=2, depth=2, depth_token_only=2, img_size=64),
             rand(2, 3, 64, 64)))
case("timm_xcit", "timm", {"cls_attn_blocks.1.norm1": tokens(1, 4, 4)},
     rule="norm1 of the last class-attention block")(
    lambda: (_timm("xcit_nano_12_p16_224", depth=2, img_size=64), rand(2, 3, 64, 64)))
# PiT: 96 px, 16 px patches at stride 8: (96 - 16) // 8 + 1 = 11, pooled 11 -> 6 -> 3
case("timm_pit", "timm", {"transformers.2.blocks.0.norm1": tokens(1, 3, 3)}, rule=NORM1)(
    lambda: (_timm("pit_ti_224", img_size=96, depth=(1, 1, 1)), rand(2, 3, 96, 96)))
# LeViT: a 16x stem, then two 2x subsamplings: 128 -> 8 -> 4 -> 2
case("timm_levit", "timm", {"stages": tokens(0, 2, 2), "stages.2": tokens(0, 2, 2),
                            "stages.2.blocks": tokens(0, 2, 2), "stages.2.blocks.0": tokens(0, 2, 2)},
     rule="mean of the last stage's tokens: the last stage")(
    lambda: (_timm("levit_128s", img_size=128, depth=(1, 1, 1)), rand(2, 3, 128, 128)))
# Hiera: 4x patches then 3 pooled stages: 64 -> 16 -> 2; its head is zero at creation
def _hiera():
    return _normal_head(_timm("hiera_tiny_224", img_size=64, embed_dim=32, num_heads=1, stages=(1, 1, 1, 1)),
                        "head.fc"), rand(2, 3, 64, 64)


# Inside Hiera the tokens are in mask-unit ("unrolled") order, not row-major: a 16 x 16 stage read
# row-major is a permuted map. The reading is timm's own inverse (Hiera.reroll), or a refusal.
case("timm_hiera_inner_stage", "timm",
     lambda net: {"blocks.1.proj": lambda t: net.reroll(t, 0).movedim(-1, 1)}, auto=False, may_refuse=True,
     rule="an inner stage's tokens are unrolled: the right map or a refusal, never a row-major reading")(
    _hiera)
# After the last pooling Hiera's 2 x 2 tokens are in raster order again, but only replaying the
# unroll's reshapes and permutes would show it: the pass shows tokens gathered back from the batch
# dim, whose order is the network's own. gradattr refuses them (naming feature_layout=callable);
# the automatic choice falls back to the last map the pass shows in raster order (patch_embed).
case("timm_hiera", "timm", {"blocks.3": tokens(0, 2, 2)}, auto=False, may_refuse=True,
     rule="mean of the last stage's tokens: the right map or a refusal, never a row-major reading")(
    _hiera)
case("timm_maxvit", "timm", {"norm": cf}, target=2,
     rule="MATLAB's rule: the last map (the norm after the last stage, NCHW)")(
    lambda: (_timm("maxvit_rmlp_nano_rw_256", img_size=64, depths=(1, 1, 1, 1),
                   embed_dim=(32, 32, 64, 64)), rand(2, 3, 64, 64)))
case("timm_coatnet", "timm", {"norm": cf},
     rule="MATLAB's rule: the last stage (convolutions then relative-attention stages, NCHW)")(
    lambda: (_timm("coatnet_nano_rw_224", img_size=64, depths=(1, 1, 1, 1),
                   embed_dim=(32, 32, 64, 64)), rand(2, 3, 64, 64)))
case("timm_mobilevit", "timm", {"final_conv": cf}, rule="MATLAB's rule: the last map")(
    lambda: (_timm("mobilevit_xxs"), rand(2, 3, 64, 64)))
case("timm_efficientformer", "timm", {"norm": tokens(0, 7, 7)},
     rule="mean of the last stage's tokens: the final norm (N, L, C)")(
    lambda: (_timm("efficientformer_l1", depths=(1, 1, 1, 2), embed_dims=(16, 32, 48, 64), num_vit=1),
             rand(1, 3, 224, 224)))  # its attention biases are for 7 x 7 tokens
case("timm_poolformer", "timm", {"stages.3": cf, "stages": cf},
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("poolformer_s12"), rand(2, 3, 64, 64)))
case("timm_convnextv2", "timm", {"stages.3": cf, "stages": cf, "norm_pre": cf},
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("convnextv2_atto"), rand(2, 3, 64, 64)))
case("timm_fastvit", "timm", {"final_conv": cf}, rule="MATLAB's rule: the last map")(
    lambda: (_timm("fastvit_t8"), rand(2, 3, 64, 64)))
case("timm_pvt_v2", "timm", {"stages.3": cf, "stages": cf},
     rule="the last stage (tokens reshaped back to NCHW by the stage)")(
    lambda: (_timm("pvt_v2_b0", depths=(1, 1, 1, 1)), rand(2, 3, 64, 64)))
case("timm_twins_svt", "timm", {"norm": tokens(0, 2, 2)},
     rule="mean of the last stage's tokens: the final norm (N, L, C)")(
    lambda: (_timm("twins_svt_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
                   num_heads=(1, 2, 2, 4)), rand(2, 3, 64, 64)))
case("timm_twins_pcpvt", "timm", {"norm": tokens(0, 2, 2)},
     rule="mean of the last stage's tokens: the final norm (N, L, C)")(
    lambda: (_timm("twins_pcpvt_small", depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
                   num_heads=(1, 2, 2, 4)), rand(2, 3, 64, 64)))
case("timm_swin", "timm", {"norm": cl, "layers.3": cl, "layers": cl},
     rule="the last stage's norm, channels last (N, H, W, C)")(
    lambda: (_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2, depths=(1, 1, 1, 1),
                   embed_dim=16, num_heads=(1, 2, 2, 4)), rand(2, 3, 64, 64)))
case("timm_swinv2", "timm", {"norm": cl, "layers.3": cl, "layers": cl},
     rule="the last stage's norm, channels last (N, H, W, C)")(
    lambda: (_timm("swinv2_tiny_window8_256", img_size=64, window_size=2, depths=(1, 1, 1, 1),
                   embed_dim=16, num_heads=(1, 2, 2, 4)), rand(2, 3, 64, 64)))
case("timm_resnet18", "timm", {"layer4": cf}, rule="MATLAB's rule: the last stage")(
    lambda: (_timm("resnet18"), rand(2, 3, 64, 64)))
case("timm_efficientnet_b0", "timm", {"bn2": cf}, rule="MATLAB's rule: the head's norm + activation")(
    lambda: (_timm("efficientnet_b0"), rand(2, 3, 64, 64)))
case("timm_mobilenetv3", "timm", {"blocks": cf, "blocks.5": cf},
     rule="MATLAB's rule: the last map (its conv_head runs after the pooling)")(
    lambda: (_timm("mobilenetv3_small_050"), rand(2, 3, 64, 64)))
case("timm_densenet121", "timm", {"features": cf, "features.norm5": cf},
     rule="MATLAB's rule: the last map")(
    lambda: (_timm("densenet121"), rand(1, 3, 64, 64)))
case("timm_regnet", "timm", {"final_conv": cf, "s4": cf}, rule="MATLAB's rule: the last stage")(
    lambda: (_timm("regnetx_002"), rand(2, 3, 64, 64)))
case("timm_mixer", "timm", {"norm": tokens(0, 4, 4)},
     rule="mean of the tokens: the final norm (N, L, C)")(
    lambda: (_normal_head(_timm("mixer_s16_224", img_size=64), "head"), rand(2, 3, 64, 64)))
case("timm_convit", "timm", {"blocks.2.norm1": tokens(1, 4, 4)},
     rule="norm1 of the last block (the class token joins after the local blocks)")(
    lambda: (_timm("convit_tiny", img_size=64, depth=3, local_up_to_layer=2), rand(2, 3, 64, 64)))
case("timm_tiny_vit", "timm", {"stages.3": cf, "stages": cf, "head.norm": cf},
     rule="MATLAB's rule: the last stage (NCHW between stages)")(
    lambda: (_timm("tiny_vit_5m_224", depths=(1, 1, 1, 1)),
             rand(2, 3, 64, 64)))
case("timm_davit", "timm", {"stages.3": cf, "stages": cf, "norm_pre": cf},
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64),
                   num_heads=(1, 2, 2, 4), window_size=2), rand(2, 3, 64, 64)))
case("timm_edgenext", "timm", {"stages.3": cf, "stages": cf, "norm_pre": cf},
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("edgenext_xx_small"), rand(2, 3, 64, 64)))
case("timm_repvit", "timm", {"stages.3": cf, "stages": cf}, target=3,
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("repvit_m0_9"), rand(2, 3, 64, 64)))
case("timm_focalnet", "timm", {"norm": cf, "layers.3": cf, "layers": cf},
     rule="MATLAB's rule: the last map")(
    lambda: (_timm("focalnet_tiny_srf"), rand(2, 3, 64, 64)))
case("timm_inception_next", "timm", {"stages.3": cf, "stages": cf},
     rule="MATLAB's rule: the last stage")(
    lambda: (_timm("inception_next_atto"), rand(2, 3, 64, 64)))


# ==================================================================== torchvision
def _tv(name, size=64, n=2, **kw):
    import torchvision.models as tvm
    torch.manual_seed(0)
    return getattr(tvm, name)(weights=None, num_classes=5, **kw).eval(), rand(n, 3, size, size)


CNN = "MATLAB's rule: the last map"
case("tv_resnet18", "torchvision", {"layer4": cf}, fast=True, rule=CNN)(lambda: _tv("resnet18"))
case("tv_vgg11", "torchvision", {"features": cf, "avgpool": cf}, rule=CNN)(lambda: _tv("vgg11", n=1))
case("tv_densenet121", "torchvision", {"features": cf, "features.norm5": cf}, rule=CNN)(
    lambda: _tv("densenet121", n=1))
case("tv_mobilenet_v3_small", "torchvision", {"features": cf, "features.12": cf}, rule=CNN)(
    lambda: _tv("mobilenet_v3_small"))
case("tv_efficientnet_b0", "torchvision", {"features": cf, "features.8": cf}, rule=CNN)(
    lambda: _tv("efficientnet_b0"))
case("tv_convnext_tiny", "torchvision", {"features": cf, "features.7": cf}, rule=CNN)(
    lambda: _tv("convnext_tiny", n=1))
case("tv_regnet_y_400mf", "torchvision", {"trunk_output": cf}, rule=CNN)(lambda: _tv("regnet_y_400mf"))
case("tv_shufflenet_v2", "torchvision", {"conv5": cf}, rule=CNN)(lambda: _tv("shufflenet_v2_x0_5"))
case("tv_mnasnet", "torchvision", {"layers": cf}, rule=CNN)(lambda: _tv("mnasnet0_5"))
case("tv_googlenet", "torchvision", {"inception5b": cf}, rule=CNN)(
    lambda: _tv("googlenet", aux_logits=False, init_weights=False))
case("tv_inception_v3", "torchvision", {"Mixed_7c": cf}, rule=CNN)(
    lambda: _tv("inception_v3", 160, n=1, aux_logits=False, init_weights=True))
case("tv_swin_t", "torchvision", {"norm": cl, "permute": cf}, target=4,
     rule="the last stage's norm: channels last, or the permute after it (channels first)")(
    lambda: _tv("swin_t", n=1))


@case("tv_vit_small", "torchvision", {"encoder.layers.encoder_layer_1.ln_1": tokens(1, 4, 4)}, rule=NORM1)
def _():
    import torchvision.models as tvm
    torch.manual_seed(0)
    net = tvm.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                                mlp_dim=64, num_classes=5).eval()
    return _normal_head(net, "heads.head"), rand(2, 3, 64, 64)


@case("tv_maxvit_small", "torchvision", {"blocks.1": cf}, rule=CNN)
def _():
    from torchvision.models.maxvit import MaxVit
    torch.manual_seed(0)
    net = MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2, block_channels=[16, 32],
                 block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5).eval()
    return net, rand(2, 3, 64, 64)


# video (N, 3, T, H, W)
def _video(name, **kw):
    import torchvision.models.video as tvv
    torch.manual_seed(0)
    return getattr(tvv, name)(weights=None, num_classes=5, **kw).eval(), rand(1, 3, 8, 32, 32)


case("tv_r3d_18", "torchvision-video", {"layer4": cf}, rule=CNN)(lambda: _video("r3d_18"))
case("tv_mc3_18", "torchvision-video", {"layer4": cf}, rule=CNN)(lambda: _video("mc3_18"))
case("tv_r2plus1d_18", "torchvision-video", {"layer4": cf}, target=3, rule=CNN)(lambda: _video("r2plus1d_18"))


@case("tv_swin3d_small", "torchvision-video", {"norm": cl},
      rule="the last stage's norm, channels last (N, T, H, W, C); time is downsampled 2x while "
           "space 8x")
def _():
    from torchvision.models.video.swin_transformer import SwinTransformer3d
    torch.manual_seed(0)
    net = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                            window_size=[2, 2, 2], stochastic_depth_prob=0.0, num_classes=5).eval()
    return net, rand(1, 3, 8, 32, 32)


@case("tv_mvit_small", "torchvision-video", {"blocks.2.norm1": tokens(1, 8, 4, 4)},
      rule="norm1 of the last block; patches 16 x 32 x 32 -> 8 x 8 x 8 (stride 2, 4, 4), then "
           "pooled 1 x 2 x 2")
def _():
    from torchvision.models.video.mvit import MSBlockConfig, MViT
    torch.manual_seed(0)
    cfg = [MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
           MSBlockConfig(2, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
           MSBlockConfig(2, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1])]
    net = MViT(spatial_size=(32, 32), temporal_size=16, block_setting=cfg, residual_pool=True,
               residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True,
               stochastic_depth_prob=0.0, num_classes=5).eval()
    return net, rand(1, 3, 16, 32, 32)


case("tv_mvit_small_layout_tokens1", "torchvision-video", {"blocks.2.norm1": tokens(1, 8, 4, 4)}, auto=False,
     explicit_kwargs={"feature_layout": "tokens:1"},
     rule="an explicit feature_layout='tokens:1' is honoured as given")(CASES[-1].build)


# detectors: the score is the detections' own (box_score of every detection)
def _det_score(net, x):
    from gradattr.detection import box_score
    with torch.no_grad():
        found = net(x)[0]
    assert len(found["boxes"]) > 0, "no detection to explain"
    return box_score(found["labels"], found["boxes"])


def _det(name, size=128, **kw):
    import torchvision.models.detection as tvd
    torch.manual_seed(0)
    net = getattr(tvd, name)(weights=None, weights_backbone=None, num_classes=3, **kw).eval()
    return net, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))


DET = "the backbone's last map (MATLAB's rule inside the backbone)"
RCNN = {"min_size": 128, "max_size": 128, "box_score_thresh": 0.0}
case("tv_fasterrcnn_resnet50_fpn", "torchvision-detection", {"backbone.body.layer4": cf},
     fn_from=_det_score, rule=DET)(lambda: _det("fasterrcnn_resnet50_fpn", **RCNN))
case("tv_fasterrcnn_mobilenet_v3_large_fpn", "torchvision-detection", {"backbone.body.16": cf},
     fn_from=_det_score, rule=DET)(lambda: _det("fasterrcnn_mobilenet_v3_large_fpn", **RCNN))
case("tv_fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision-detection", {"backbone.body.16": cf},
     fn_from=_det_score, rule=DET)(lambda: _det("fasterrcnn_mobilenet_v3_large_320_fpn", **RCNN))
case("tv_maskrcnn_resnet50_fpn", "torchvision-detection", {"backbone.body.layer4": cf},
     fn_from=_det_score, rule=DET)(lambda: _det("maskrcnn_resnet50_fpn", **RCNN))
case("tv_retinanet_resnet50_fpn", "torchvision-detection", {"backbone.body.layer4": cf},
     fn_from=_det_score, rule=DET)(
    lambda: _det("retinanet_resnet50_fpn", min_size=128, max_size=128, score_thresh=0.0))
case("tv_fcos_resnet50_fpn", "torchvision-detection", {"backbone.body.layer4": cf},
     fn_from=_det_score, rule=DET)(
    lambda: _det("fcos_resnet50_fpn", min_size=128, max_size=128, score_thresh=0.0))
DET_SSD = ("the backbone's last map the detections depend on: these random detections come from the "
           "high-resolution levels, the later extra maps feed none of them (their gradient is zero)")
case("tv_ssd300_vgg16", "torchvision-detection", {"backbone.extra.1": cf}, fn_from=_det_score, rule=DET_SSD)(lambda: _det("ssd300_vgg16", size=300, score_thresh=0.0))
case("tv_ssdlite320_mobilenet_v3_large", "torchvision-detection", {"backbone.features.1": cf},
     fn_from=_det_score, rule=DET_SSD, zero_ok="every backbone map's Grad-CAM of these random detections "
     "is zero (ReLU of negative sums), for six inputs tried")(lambda: _det("ssdlite320_mobilenet_v3_large", size=320, score_thresh=0.0))


def _seg(name, **kw):
    import torchvision.models.segmentation as tvs
    torch.manual_seed(0)
    return getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=4, **kw).eval(), \
        rand(1, 3, 64, 64)


SEG = "the feature before the prediction layer"
case("tv_fcn_resnet50", "torchvision-segmentation", {"classifier.3": cf}, rule=SEG)(
    lambda: _seg("fcn_resnet50"))
case("tv_deeplabv3_resnet50", "torchvision-segmentation", {"classifier.3": cf}, rule=SEG)(
    lambda: _seg("deeplabv3_resnet50"))
case("tv_deeplabv3_mobilenet_v3_large", "torchvision-segmentation", {"classifier.3": cf}, rule=SEG)(
    lambda: _seg("deeplabv3_mobilenet_v3_large"))
case("tv_lraspp_mobilenet_v3_large", "torchvision-segmentation", {"classifier.cbr": cf}, rule=SEG)(
    lambda: _seg("lraspp_mobilenet_v3_large"))


# ==================================================================== Hugging Face
def _hf(model_cls, config_cls, **cfg):
    import transformers
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**cfg)
    return getattr(transformers, model_cls)(config).eval()


HF_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 5}

case("hf_vit", "huggingface", named(r"vit\.(encoder\.layer|layers)\.1\.layernorm_before", tokens(1, 4, 4)),
     fast=True,
     rule=NORM1)(
    lambda: (_hf("ViTForImageClassification", "ViTConfig", image_size=32, patch_size=8, **HF_TINY),
             rand(2, 3, 32, 32)))
case("hf_deit_distilled", "huggingface",
     named(r"deit\.(encoder\.layer|layers)\.1\.layernorm_before", tokens(2, 4, 4)),
     rule=NORM1)(
    lambda: (_hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", image_size=32, patch_size=8,
                 **HF_TINY), rand(2, 3, 32, 32)))
case("hf_dinov2", "huggingface", {"dinov2.layernorm": tokens(1, 4, 4)},
     rule="the head reads the class token and the mean of the patch tokens: the final layernorm")(
    lambda: (_hf("Dinov2ForImageClassification", "Dinov2Config", image_size=56, patch_size=14,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, num_labels=5),
             rand(2, 3, 56, 56)))
# Swin: 4x patches (8 x 8), one merge -> 4 x 4 tokens, no class token
case("hf_swin", "huggingface", {"swin.layernorm": tokens(0, 4, 4)},
     rule="the final layernorm's tokens (N, L, C), not the pooler")(
    lambda: (_hf("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                 depths=[1, 1], num_heads=[1, 2], window_size=2, num_labels=5), rand(2, 3, 32, 32)))
case("hf_convnext", "huggingface", {"convnext.encoder.stages.3": cf}, rule=CNN)(
    lambda: (_hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16, 32, 64],
                 depths=[1, 1, 1, 1], num_labels=5), rand(2, 3, 64, 64)))
case("hf_segformer", "huggingface", {"decode_head.dropout": cf, "decode_head.activation": cf},
     rule=SEG)(
    lambda: (_hf("SegformerForSemanticSegmentation", "SegformerConfig", hidden_sizes=[8, 16, 32, 64],
                 depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16,
                 num_labels=5), rand(1, 3, 64, 64)))


class AudioWrap(nn.Module):
    """``(N, 1, T)`` waveforms (or ``(N, 1, F, T)`` spectrograms) into a HF audio model."""

    def __init__(self, model, spectrogram=False):
        super().__init__()
        self.model, self.spectrogram = model, spectrogram

    def forward(self, x):
        if self.spectrogram:  # AST takes (N, time, mel bins)
            return self.model(x[:, 0].transpose(1, 2)).logits
        return self.model(x[:, 0]).logits


# Wav2Vec2: conv feature extractor (kernel 10 stride 5, kernel 3 stride 2): 400 -> 79 -> 39 steps
W2V_T = ((400 - 10) // 5 + 1 - 3) // 2 + 1
case("hf_wav2vec2", "huggingface", {"model.projector": tokens(0, W2V_T)},
     rule="the last time-major tensor before the mean over time (the classifier's projector)")(
    lambda: (AudioWrap(_hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", conv_dim=(16, 16),
                           conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=2, classifier_proj_size=16, **HF_TINY)).eval(),
             rand(2, 1, 400)))
# AST: 16 x 16 patches at stride 10 over 128 mel bins x 100 frames: 12 x 9 patches + 2 tokens
case("hf_ast", "huggingface",
     named(r"model\.audio_spectrogram_transformer\.(encoder\.layer|layers)\.1\.layernorm_before",
           tokens(2, (128 - 16) // 10 + 1, (100 - 16) // 10 + 1)),
     rule=NORM1 + "; overlapping patches (stride 10 < 16)")(
    lambda: (AudioWrap(_hf("ASTForAudioClassification", "ASTConfig", patch_size=16, frequency_stride=10,
                           time_stride=10, max_length=100, num_mel_bins=128, **HF_TINY),
                       spectrogram=True).eval(), rand(2, 1, 128, 100)))


class BertOnEmbeddings(nn.Module):
    """BERT over ``(N, C, T)`` embeddings (``inputs_embeds``); the pooler reads step 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(inputs_embeds=x.transpose(1, 2)).logits


case("hf_bert_embeddings", "huggingface",
     named(r"model\.bert\.encoder\.layer\.0(\.output|\.output\.LayerNorm)?", tokens(0, 12)),
     kwargs={"input_format": "BCT"},
     rule="the pooler reads step 0 of the last layer: the last layer's input is the last tensor "
          "whose steps the score depends on")(
    lambda: (BertOnEmbeddings(_hf("BertForSequenceClassification", "BertConfig", vocab_size=50,
                                  max_position_embeddings=32, **HF_TINY)).eval(), rand(2, 32, 12)))


# ==================================================================== MONAI
def _monai(name, **kw):
    import monai.networks.nets as mn
    torch.manual_seed(0)
    return getattr(mn, name)(**kw).eval()


case("monai_unet", "monai", {"model.1": cf}, fast=True, rule=SEG)(
    lambda: (_monai("UNet", spatial_dims=2, in_channels=3, out_channels=4, channels=(8, 16, 32),
                    strides=(2, 2)), rand(1, 3, 32, 32)))
case("monai_attention_unet", "monai", {"model.1": cf},
     rule=SEG + " (model.1 wraps the whole encoder-decoder; model.0 is the stem)")(
    lambda: (_monai("AttentionUnet", spatial_dims=2, in_channels=3, out_channels=4, channels=(8, 16, 32),
                    strides=(2, 2)), rand(1, 3, 32, 32)))
case("monai_basic_unet", "monai", {"upcat_1": cf}, rule=SEG)(
    lambda: (_monai("BasicUNet", spatial_dims=2, in_channels=3, out_channels=4,
                    features=(8, 8, 16, 16, 32, 8)), rand(1, 3, 32, 32)))
case("monai_swin_unetr", "monai", {"decoder1": cf}, rule=SEG)(
    lambda: (_monai("SwinUNETR", spatial_dims=2, in_channels=1, out_channels=3, feature_size=12,
                    depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), rand(1, 1, 64, 64)))
case("monai_unetr", "monai", {"decoder2": cf}, rule=SEG)(
    lambda: (_monai("UNETR", spatial_dims=2, in_channels=1, out_channels=3, img_size=(32, 32),
                    feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4), rand(1, 1, 32, 32)))
case("monai_segresnet", "monai", {"act_mod": cf}, rule=SEG + " (conv_final.1 is the shared act_mod)")(
    lambda: (_monai("SegResNet", spatial_dims=2, init_filters=8, in_channels=1, out_channels=3,
                    blocks_down=(1, 2, 2), blocks_up=(1, 1)), rand(1, 1, 32, 32)))
case("monai_vit_3d", "monai", {"blocks.1.norm1": tokens(1, 4, 4, 4)}, kwargs={"output_key": 0},
     rule=NORM1)(
    lambda: (_monai("ViT", in_channels=1, img_size=(32, 32, 32), patch_size=(8, 8, 8), hidden_size=48,
                    mlp_dim=96, num_layers=2, num_heads=4, classification=True, num_classes=5,
                    spatial_dims=3), rand(1, 1, 32, 32, 32)))
case("monai_efficientnet_3d", "monai", {"_swish": cf}, rule=CNN + " (the head's swish, its last call)")(
    lambda: (_monai("EfficientNetBN", model_name="efficientnet-b0", spatial_dims=3, in_channels=1,
                    num_classes=5, pretrained=False), rand(1, 1, 64, 64, 64)))
case("monai_densenet121_3d", "monai", {"class_layers.relu": cf}, target=4, rule=CNN + " (the ReLU after norm5)")(
    lambda: (_monai("DenseNet121", spatial_dims=3, in_channels=1, out_channels=5, init_features=8,
                    growth_rate=8, block_config=(2, 2, 2, 2)), rand(1, 1, 64, 64, 64)))
case("monai_resnet10_3d", "monai", {"layer4": cf}, rule=CNN)(
    lambda: (_monai("resnet10", spatial_dims=3, n_input_channels=1, num_classes=5), rand(1, 1, 32, 32, 32)))


# ==================================================================== 1-D and sequence models
class Transpose(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


class RNNNet(nn.Module):
    """(N, C, T) -> an RNN (batch first or time first) -> the last step's class scores."""

    def __init__(self, cell, batch_first, hidden=16):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(3, hidden, batch_first=batch_first)
        self.fc = nn.Linear(hidden, 5)

    def forward(self, x):
        if self.batch_first:
            o, _ = self.rnn(x.transpose(1, 2))
            return self.fc(o[:, -1])
        o, _ = self.rnn(x.permute(2, 0, 1))
        return self.fc(o[-1])


RNN = "the RNN's output sequence (the last time axis)"
case("seq_lstm_batch_first", "1-D", {"rnn": lambda t: t.transpose(1, 2)}, fast=True, rule=RNN)(
    seeded(lambda: (RNNNet(nn.LSTM, True).eval(), rand(2, 3, 40))))
case("seq_lstm_time_first", "1-D", {"rnn": time_first}, rule=RNN)(
    seeded(lambda: (RNNNet(nn.LSTM, False).eval(), rand(2, 3, 40))))
case("seq_gru_batch_first", "1-D", {"rnn": lambda t: t.transpose(1, 2)}, rule=RNN)(
    seeded(lambda: (RNNNet(nn.GRU, True).eval(), rand(2, 3, 40))))
case("seq_gru_time_first", "1-D", {"rnn": time_first}, rule=RNN)(
    seeded(lambda: (RNNNet(nn.GRU, False).eval(), rand(2, 3, 40))))


class PatchTST(nn.Module):
    """1-D patching (Conv1d, kernel = stride = 8) + a class token + a Transformer encoder."""

    def __init__(self, c=3, d=16, patch=8):
        super().__init__()
        self.patch = nn.Conv1d(c, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 32, batch_first=True,
                                                                    norm_first=True), 2,
                                         enable_nested_tensor=False)
        self.fc = nn.Linear(d, 5)

    def forward(self, x):
        t = self.patch(x).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.fc(self.enc(t)[:, 0])


case("seq_patchtst_class_token", "1-D", {"enc.layers.1.norm1": tokens(1, 64 // 8)}, fast=True,
     rule=NORM1 + " (1-D: 64 steps / patches of 8, one class token)")(
    seeded(lambda: (PatchTST().eval(), rand(2, 3, 64))))


class TransformerSeries(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                         enable_nested_tensor=False)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.enc(self.inp(x.transpose(1, 2))).mean(1))


case("seq_transformer_encoder", "1-D", {"enc": tokens(0, 24), "enc.layers.1": tokens(0, 24)},
     kwargs={"input_format": "BCT"},
     rule="mean over time: the encoder's output, time-major")(
    seeded(lambda: (TransformerSeries().eval(), rand(2, 3, 24))))


class ConformerBlock(nn.Module):
    """Gulati et al. 2020: half FFN, self-attention, convolution module, half FFN, LayerNorm."""

    def __init__(self, d=16, heads=2, kernel=7):
        super().__init__()
        self.ff1 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.attn_norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.conv_norm = nn.LayerNorm(d)
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.ff2 = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x):  # (N, T, d)
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.conv_norm(x).transpose(1, 2)
        h = self.pw2(nn.functional.silu(self.bn(self.dw(nn.functional.glu(self.pw1(h), dim=1)))))
        x = x + h.transpose(1, 2)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)


class Conformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 16)
        self.blocks = nn.Sequential(ConformerBlock(), ConformerBlock())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.inp(x.transpose(1, 2))).mean(1))


case("seq_conformer", "1-D", {"blocks": tokens(0, 32), "blocks.1": tokens(0, 32),
                              "blocks.1.norm_out": tokens(0, 32)},
     rule="mean over time: the last block's output, time-major")(
    seeded(lambda: (Conformer().eval(), rand(2, 3, 32))))


class Inception1d(nn.Module):
    def __init__(self, c, f=8):
        super().__init__()
        self.bottleneck = nn.Conv1d(c, f, 1, bias=False)
        self.convs = nn.ModuleList(nn.Conv1d(f, f, k, padding=k // 2, bias=False) for k in (9, 19, 39))
        self.pool = nn.Sequential(nn.MaxPool1d(3, 1, 1), nn.Conv1d(c, f, 1, bias=False))
        self.bn = nn.BatchNorm1d(4 * f)

    def forward(self, x):
        b = self.bottleneck(x)
        return torch.relu(self.bn(torch.cat([conv(b) for conv in self.convs] + [self.pool(x)], 1)))


class InceptionTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Inception1d(3), Inception1d(32), Inception1d(32))
        self.shortcut = nn.Sequential(nn.Conv1d(3, 32, 1), nn.BatchNorm1d(32))
        self.act = nn.ReLU()
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        h = self.act(self.blocks(x) + self.shortcut(x))
        return self.fc(h.mean(-1))


case("seq_inception_time", "1-D", {"act": cf}, target=3,
     rule="MATLAB's rule: the last module output with a time axis (the ReLU after the residual sum)")(
    seeded(lambda: (InceptionTime().eval(), rand(2, 3, 50))))


class TemporalBlock(nn.Module):
    """A dilated causal-padded Conv1d + ReLU with a residual connection (Bai et al. 2018)."""

    def __init__(self, c_in, c_out, dilation):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation)
        self.down = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv(x) + self.down(x))


class TCN(nn.Module):
    """Three dilated Conv1d blocks, ``(N, 6, 64)`` in, the last step into a Linear."""

    def __init__(self):
        super().__init__()
        self.tcn = nn.Sequential(TemporalBlock(6, 32, 1), TemporalBlock(32, 32, 2), TemporalBlock(32, 32, 4))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.tcn(x)[:, :, -1])


case("seq_tcn", "1-D", {"tcn": cf, "tcn.2": cf}, fast=True,
     rule="MATLAB's rule: the last block, (N, 32, 64) channels first")(
    seeded(lambda: (TCN().eval(), rand(2, 6, 64))))


class CNN1d(nn.Module):
    """The MATLAB sequence example's shape: conv, batch norm, ReLU, global pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                                      nn.Conv1d(8, 16, 5, padding=2, stride=2), nn.BatchNorm1d(16),
                                      nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean(-1))


case("seq_cnn1d", "1-D", {"features": cf, "features.5": cf}, rule=CNN)(
    seeded(lambda: (CNN1d().eval(), rand(2, 3, 30))))


# ==================================================================== structured and hard cases
class Captioner(nn.Module):
    """An image encoder, then a GRU decoder over 4 steps -> ``(N, T, vocabulary)``."""

    def __init__(self, steps=4, vocab=7):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.init = nn.Linear(16, 16)
        self.tokens = nn.Parameter(torch.randn(1, steps, 16))
        self.decoder = nn.GRU(16, 16, batch_first=True)
        self.out = nn.Linear(16, vocab)

    def forward(self, x):
        h0 = torch.tanh(self.init(self.encoder(x).mean((2, 3))))[None]
        o, _ = self.decoder(self.tokens.expand(len(x), -1, -1), h0)
        return self.out(o)


case("custom_captioner", "structured", {"encoder": cf, "encoder.3": cf},
     fn=lambda y: y[:, :, 2].sum(1),
     rule="a (N, T, V) sequence output not on the input's grid: the encoder's last map, never the "
          "decoder's steps")(
    seeded(lambda: (Captioner().eval(), rand(2, 3, 16, 16))))


class Perceiver(nn.Module):
    """A 1x1 convolution, then 8 learned latents cross-attend to the pixels: the latents are no
    grid of the input, although 8 = 2 x 4 would fit a 16 x 32 input's shape."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 1)
        self.latents = nn.Parameter(torch.randn(1, 8, 16))
        self.cross = nn.MultiheadAttention(16, 2, batch_first=True)
        self.latent_mlp = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        p = self.proj(x).flatten(2).transpose(1, 2)
        z = self.cross(self.latents.expand(len(x), -1, -1), p, p, need_weights=False)[0]
        return self.fc(self.latent_mlp(z).mean(1))


case("custom_perceiver_latents", "structured", {"proj": cf}, refuse="latent_mlp",
     rule="learned latents are not a grid of the input: the automatic choice is the last map tied "
          "to the input (the 1x1 convolution); the latents as a layer are refused")(
    seeded(lambda: (Perceiver().eval(), rand(2, 3, 16, 32))))


# ==================================================================== inputs without a channel-first grid
# (issue 25, the input half): tabular batches (N, F), feature-tokenizer transformers, raw
# waveforms (N, L), token-id models (N, L) and a vector second input. Each entry says how the
# network is built and which rows of x are samples; the oracles (tests/test_zoo.py,
# test_input_zoo) differentiate each sample alone, never through gradattr's input code.
@dataclass
class InputCase:
    id: str
    family: str
    build: Callable[[], tuple[nn.Module, object]]  # -> (net, x): x a tensor or a tuple of inputs
    target: int = 1
    fn: Callable | None = None  # a reduction_fn (y -> (N,)); None: the integer target
    explain: int = 0  # with a tuple x: the attributed input
    # Grad-CAM layers for inputs with a time axis: {name: reading (N, C, T) of its output}; the
    # first is checked explicitly, any of them is a right automatic choice
    layers: dict[str, Callable] = field(default_factory=dict)
    ids: bool = False  # x holds token ids (integers): attributed at the embedding
    embedding: str | None = None  # the embedding layer of a token-id model
    fast: bool = False
    rule: str = ""


INPUT_CASES: list[InputCase] = []


def input_case(id, family, **kw):
    def deco(build):
        INPUT_CASES.append(InputCase(id, family, build, **kw))
        return build
    return deco


def mlp_net(features, hidden, out, norm=None, dropout=0.0, act=nn.ReLU):
    layers, d = [], features
    for h in hidden:
        layers += [nn.Linear(d, h)] + ([norm(h)] if norm else []) + [act()] + (
            [nn.Dropout(dropout)] if dropout else [])
        d = h
    net = nn.Sequential(*layers, nn.Linear(d, out)).eval()
    for m in net.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


input_case("tab_mlp_1_hidden", "tabular", fast=True, rule="(N, F) into an MLP: N samples of F features")(
    seeded(lambda: (mlp_net(8, [16], 3), rand(6, 8))))
input_case("tab_mlp_3_hidden", "tabular")(seeded(lambda: (mlp_net(10, [32, 16, 8], 4), rand(5, 10))))
input_case("tab_mlp_5_hidden_tanh", "tabular")(
    seeded(lambda: (mlp_net(7, [16] * 5, 3, act=nn.Tanh), rand(4, 7))))
input_case("tab_mlp_batchnorm", "tabular", rule="BatchNorm1d on (N, F): features are channels")(
    seeded(lambda: (mlp_net(9, [24, 12], 3, norm=nn.BatchNorm1d), rand(5, 9))))
input_case("tab_mlp_batchnorm_first", "tabular")(
    seeded(lambda: (nn.Sequential(nn.BatchNorm1d(6), mlp_net(6, [12], 3)).eval(), rand(5, 6))))
input_case("tab_mlp_dropout", "tabular", rule="dropout is off in eval mode")(
    seeded(lambda: (mlp_net(8, [32, 32], 3, dropout=0.3), rand(6, 8))))
input_case("tab_mlp_layernorm_gelu", "tabular")(
    seeded(lambda: (mlp_net(8, [16, 16], 3, norm=nn.LayerNorm, act=nn.GELU), rand(6, 8))))
input_case("tab_regressor_reduction_fn", "tabular", fn=lambda y: y[:, 0], fast=True,
           rule="a regressor (N, 1) explained with reduction_fn=lambda y: y[:, 0]")(
    seeded(lambda: (mlp_net(8, [16, 8], 1), rand(7, 8))))
input_case("tab_regressor_two_outputs", "tabular", fn=lambda y: y[:, 1] - y[:, 0])(
    seeded(lambda: (mlp_net(5, [16], 2, norm=nn.BatchNorm1d), rand(6, 5))))


class SqueezeOut(nn.Module):
    """A regressor returning (N,) (no output axis)."""

    def __init__(self):
        super().__init__()
        self.body = mlp_net(6, [16], 1)

    def forward(self, x):
        return self.body(x)[:, 0]


input_case("tab_regressor_vector_output", "tabular", fn=lambda y: y)(
    seeded(lambda: (SqueezeOut().eval(), rand(5, 6))))


class ResMLP(nn.Module):
    """Gorishniy et al. 2021's ResNet for tabular data: LayerNorm -> Linear -> ReLU -> Linear + skip."""

    def __init__(self, f=8, d=16, blocks=2, out=3):
        super().__init__()
        self.inp = nn.Linear(f, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.ReLU(),
                                                  nn.Linear(2 * d, d)) for _ in range(blocks))
        self.head = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, out))

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


input_case("tab_resnet_mlp", "tabular")(seeded(lambda: (ResMLP().eval(), rand(6, 8))))


class FTTransformer(nn.Module):
    """Gorishniy et al. 2021's FT-Transformer: each numeric feature j embedded as x_j w_j + b_j,
    a [CLS] token prepended, nn.TransformerEncoder, the head on [CLS] (or the mean)."""

    def __init__(self, f=6, d=16, out=3, cls=True, layers=2):
        super().__init__()
        self.w = nn.Parameter(torch.randn(f, d) * 0.5)
        self.b = nn.Parameter(torch.randn(f, d) * 0.1)
        self.cls = nn.Parameter(torch.randn(1, 1, d)) if cls else None
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True,
                                                                    norm_first=True), layers,
                                         enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.ReLU(), nn.Linear(d, out))

    def forward(self, x):
        t = x[..., None] * self.w + self.b
        if self.cls is not None:
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
            return self.head(self.enc(t)[:, 0])
        return self.head(self.enc(t).mean(1))


input_case("tab_ft_transformer_cls", "tabular",
           rule="feature tokenizer + [CLS] + nn.TransformerEncoder: (N, F) is N samples")(
    seeded(lambda: (FTTransformer().eval(), rand(5, 6))))
input_case("tab_ft_transformer_mean", "tabular")(
    seeded(lambda: (FTTransformer(f=7, cls=False, layers=1).eval(), rand(4, 7))))


class VQAVector(nn.Module):
    """An image and a question vector (N, Q): the question gates the pooled image features."""

    def __init__(self, q=6):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.q = nn.Sequential(nn.Linear(q, 8), nn.Tanh())
        self.head = nn.Linear(8, 4)

    def forward(self, img, q):
        return self.head(self.conv(img).mean((2, 3)) * self.q(q))


class FiLM(nn.Module):
    """Perez et al. 2018: a conditioning vector scales and shifts the feature maps' channels."""

    def __init__(self, q=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.film = nn.Linear(q, 16)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, img, cond):
        gamma, beta = self.film(cond).chunk(2, 1)
        h = torch.relu(self.conv1(img)) * gamma[:, :, None, None] + beta[:, :, None, None]
        return self.head(torch.relu(self.conv2(h)).mean((2, 3)))


input_case("vqa_vector_question", "several inputs", explain=1,
           rule="x=(image, question (N, 6)), explain=1: the question vector attributed")(
    seeded(lambda: (VQAVector().eval(), (rand(3, 3, 6, 6), rand(3, 6, seed=2)))))
input_case("film_vector_condition", "several inputs", explain=1, target=2)(
    seeded(lambda: (FiLM().eval(), (rand(3, 3, 8, 8), rand(3, 5, seed=2)))))


# -- raw waveforms (N, L): the network adds the channel axis itself -------------------------------
class ConvFeatureEncoder(nn.Module):
    """wav2vec 2.0 / HuBERT's feature encoder, scaled down: x[:, None, :], 1-D convolutions
    (kernel 10 stride 5, then kernel 3 stride 2), GroupNorm on the first (wav2vec 2.0 base)
    or LayerNorm over channels (HuBERT large), GELU; mean over frames, a linear head."""

    def __init__(self, norm="group", dims=(32, 32, 32), out=3, transformer=False):
        super().__init__()
        layers, c = [], 1
        for i, d in enumerate(dims):
            k, s = (10, 5) if i == 0 else (3, 2)
            layers.append(nn.Conv1d(c, d, k, stride=s, bias=False))
            if norm == "group" and i == 0:
                layers.append(nn.GroupNorm(d, d))
            layers.append(nn.GELU())
            c = d
        self.fe = nn.Sequential(*layers)
        self.proj = nn.Linear(c, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1,
                                         enable_nested_tensor=False) if transformer else None
        self.head = nn.Linear(16, out)

    def forward(self, x):
        h = self.fe(x[:, None, :]).transpose(1, 2)  # (N, frames, C)
        h = self.proj(h)
        if self.enc is not None:
            h = self.enc(h)
        return self.head(h.mean(1))


def frames(length, dims=3):
    t = (length - 10) // 5 + 1
    for _ in range(dims - 1):
        t = (t - 3) // 2 + 1
    return t


def encoder_layers(length, last="fe.6"):
    """The encoder's last map, or its frames projected per frame (both the last maps over time)."""
    return {"fe": cf, last: cf, "proj": tokens(0, frames(length))}


# 800 samples: 39 frames, more than the 32 channels (no reading of channels as tokens fits)
input_case("wave_wav2vec2_groupnorm", "raw waveform", layers=encoder_layers(800), fast=True,
           rule="(N, L) raw audio: N waveforms of L samples; the map is over the encoder's frames")(
    seeded(lambda: (ConvFeatureEncoder().eval(), rand(3, 800))))
input_case("wave_hubert_no_norm", "raw waveform", layers=encoder_layers(800, "fe.5"))(
    seeded(lambda: (ConvFeatureEncoder(norm=None).eval(), rand(2, 800))))
input_case("wave_hubert_transformer", "raw waveform",
           layers={"enc": tokens(0, frames(960)), "enc.layers.0": tokens(0, frames(960))},
           rule="the frames after the transformer are time tokens on the encoder's grid")(
    seeded(lambda: (ConvFeatureEncoder(transformer=True).eval(), rand(2, 960))))
input_case("wave_single_waveform", "raw waveform", layers=encoder_layers(800),
           rule="one waveform (1, L): still one sample of L, not one channel")(
    seeded(lambda: (ConvFeatureEncoder().eval(), rand(1, 800))))


# -- token ids (N, L) ---------------------------------------------------------------------------
class TokenGRU(nn.Module):
    def __init__(self, vocab=50, d=16, out=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.head = nn.Linear(d, out)

    def forward(self, ids):
        h, _ = self.gru(self.emb(ids))
        return self.head(h[:, -1])


class TokenConv(nn.Module):
    """Kim 2014's text CNN, one kernel size: embedding, Conv1d over the tokens, max over time."""

    def __init__(self, vocab=50, d=16, out=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.conv = nn.Sequential(nn.Conv1d(d, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, out)

    def forward(self, ids):
        return self.head(self.conv(self.emb(ids).transpose(1, 2)).amax(-1))


class DiagonalSSM(nn.Module):
    """A diagonal linear state-space layer (S4D-style), its recurrence h_t = a h_{t-1} + B u_t run
    as a causal convolution with the kernel a^k, then a gated output and a residual."""

    def __init__(self, d=16):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.inp = nn.Linear(d, 2 * d)
        self.log_a = nn.Parameter(-torch.rand(d) - 0.1)
        self.out = nn.Linear(d, d)

    def forward(self, h):
        u, z = self.inp(self.norm(h)).chunk(2, -1)
        steps = torch.arange(h.shape[1], device=h.device, dtype=h.dtype)
        kernel = torch.exp(self.log_a[None, :] * steps[:, None])  # (L, D)
        lag = steps[:, None] - steps[None, :]  # t - s
        causal = (lag >= 0).to(h.dtype)
        w = kernel[lag.clamp(min=0).long()] * causal[..., None]  # (L, L, D)
        y = torch.einsum("tsd,nsd->ntd", w, u)
        return h + self.out(y * torch.sigmoid(z))


class TokenSSM(nn.Module):
    """Embedding, state-space blocks, a head on the mean (classifier) or the last position (an LM)."""

    def __init__(self, vocab=40, d=16, out=3, blocks=2, lm=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(*[DiagonalSSM(d) for _ in range(blocks)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab if lm else out)
        self.lm = lm

    def forward(self, ids):
        h = self.norm(self.blocks(self.emb(ids)))
        return self.head(h[:, -1] if self.lm else h.mean(1))


def ids(n, length, vocab=40, seed=1):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


BATCH_FIRST_RNN = lambda t: t.transpose(1, 2)  # noqa: E731 - (N, L, H) -> (N, H, L)
input_case("ids_gru_classifier", "token ids", ids=True, embedding="emb",
           layers={"gru": BATCH_FIRST_RNN, "emb": tokens(0, 9)},
           rule="(N, L) token ids: N sequences of L tokens; Grad-CAM per token")(
    seeded(lambda: (TokenGRU().eval(), ids(3, 9, 50))))
input_case("ids_text_cnn", "token ids", ids=True, embedding="emb", layers={"conv": cf, "conv.1": cf})(
    seeded(lambda: (TokenConv().eval(), ids(3, 11, 50))))
input_case("ids_ssm_classifier", "token ids", ids=True, embedding="emb",
           layers={"blocks": tokens(0, 10), "blocks.1": tokens(0, 10), "norm": tokens(0, 10)}, fast=True,
           rule="a state-space classifier over token ids: Grad-CAM per token")(
    seeded(lambda: (TokenSSM().eval(), ids(2, 10))))
input_case("ids_ssm_language_model", "token ids", ids=True, embedding="emb", target=7,
           layers={"blocks.1.inp": tokens(0, 9), "blocks.1.norm": tokens(0, 9)},
           rule="a state-space LM's next-token logits (N, V): per-token maps where the score still "
                "depends on several tokens (after it, only the last position counts); issue 25's "
                "'tokens:9' advice")(
    seeded(lambda: (TokenSSM(lm=True).eval(), ids(2, 9))))
input_case("ids_ssm_one_sequence", "token ids", ids=True, embedding="emb", target=0,
           layers={"blocks": tokens(0, 12), "blocks.0": tokens(0, 12), "norm": tokens(0, 12)},
           rule="one sequence (1, L) of ids: one sample of L tokens")(
    seeded(lambda: (TokenSSM(blocks=1).eval(), ids(1, 12))))
