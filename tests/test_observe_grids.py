"""Grids the pass shows, and what is no grid: head splits inside attention, subsampled queries,
crops, tokens gathered back from the batch dim.

Each network is a few lines of plain torch; each map is checked against a naive Grad-CAM with a
hand-written reading of the layer (no gradattr layout code), as in ``test_zoo``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gradattr
from gradattr.errors import GradattrError


def oracle(net, x, layer: str, read, target: int) -> torch.Tensor:
    """Grad-CAM at ``layer`` read by ``read`` ((N, ...) -> (N, C, *grid)), written out."""
    kept = []
    h = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with torch.enable_grad():
            s = net(x)[:, target].sum()
            (g,) = torch.autograd.grad(s, kept[-1])
    finally:
        h.remove()
    a, g = read(kept[-1].detach()), read(g)
    w = g.flatten(2).mean(-1)
    return torch.relu((w[(...,) + (None,) * (a.ndim - 2)] * a).sum(1))


def tokens(extra: int, *grid: int):
    return lambda t: t[:, extra:].reshape(t.shape[0], *grid, t.shape[-1]).movedim(-1, 1)


class HeadAttention(nn.Module):
    """Self-attention written out, its heads merged with a reshape ``(N, L, h, d) -> (N, L, h*d)``;
    with ``pool`` its queries are subsampled 2 x 2 on the ``side x side`` grid (LeViT's way)."""

    def __init__(self, dim: int, heads: int, side: int | None = None, extra: int = 1, pool: bool = False):
        super().__init__()
        self.qkv, self.proj, self.heads, self.side, self.extra, self.pool = (
            nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads, side, extra, pool)

    def forward(self, x):
        n, _, c = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        if self.pool:  # queries on every other cell of the grid
            s = self.side
            q = q[:, self.extra:].reshape(n, s, s, c)[:, ::2, ::2].reshape(n, -1, c)
        split = lambda t: t.reshape(n, t.shape[1], self.heads, c // self.heads).transpose(1, 2)
        a = (split(q) @ split(k).transpose(-1, -2) / (c // self.heads) ** 0.5).softmax(-1)
        out = (a @ split(v)).transpose(1, 2).reshape(n, q.shape[1], c)  # (N, L, h, d) -> (N, L, C)
        return self.proj(out)


class ClassTokenVit(nn.Module):
    """4 x 4 patches, a class token, 16 channels in 2 heads of 8: a head merge ``(N, 17, 2, 8)``
    has the shape of a 2 x 8 grid of 16 cells + 1 extra token."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.attn = HeadAttention(16, 2)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        t = self.norm(t + self.attn(t))
        return self.head(t[:, 1:].mean(1))


def test_a_head_merge_inside_attention_is_no_grid():
    net, x = ClassTokenVit().eval(), torch.rand(2, 3, 16, 16)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="norm", upsampling="none")
    want = oracle(net, x, "norm", tokens(1, 4, 4), 1)
    assert cam.shape == (2, 4, 4) and float(want.max()) > 0
    torch.testing.assert_close(torch.as_tensor(cam), want, rtol=1e-4, atol=1e-5)


class PooledQueries(nn.Module):
    """An 8 x 8 patch grid, then an attention whose queries are subsampled to 4 x 4: its output
    (and everything after it) is 16 tokens on the 4 x 4 grid it made inside."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.down = HeadAttention(16, 2, side=8, extra=0, pool=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.down(t)).mean(1))


def test_subsampled_queries_show_the_grid_the_attention_returns():
    net, x = PooledQueries().eval(), torch.rand(2, 3, 32, 32)
    cam = gradattr.grad_cam(net, x, 0, feature_layer="norm", upsampling="none")
    want = oracle(net, x, "norm", tokens(0, 4, 4), 0)
    assert cam.shape == (2, 4, 4) and float(want.max()) > 0
    torch.testing.assert_close(torch.as_tensor(cam), want, rtol=1e-4, atol=1e-5)
    _, auto, _ = gradattr.grad_cam(net, x, 0, upsampling="none", return_layers=True)
    assert auto == "norm"


class PosConv(nn.Module):
    """A same-padding positional convolution with an even kernel, trimmed by one step."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 4, padding=2)

    def forward(self, t):  # (N, T, C)
        p = self.conv(t.transpose(1, 2))[:, :, :-1]
        return t + p.transpose(1, 2)


class AudioEncoder(nn.Module):
    """Conv1d features (N, 8, 20) -> time-major tokens -> a positional conv whose untrimmed
    output has 21 steps -> a projector Linear to 8 features (as many as the conv's channels)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv1d(1, 8, 5, 5)
        self.pos = PosConv(8)
        self.projector = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        t = self.pos(self.features(x).transpose(1, 2))
        return self.head(torch.tanh(self.projector(t)).mean(1))


def test_a_cropped_grid_is_observed_and_a_linear_output_is_never_read_channels_first():
    net, x = AudioEncoder().eval(), torch.randn(2, 1, 100)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="projector", upsampling="none")
    want = oracle(net, x, "projector", lambda t: t.transpose(1, 2), 1)  # 20 steps, time-major
    assert cam.shape == (2, 20) and float(want.max()) > 0
    torch.testing.assert_close(torch.as_tensor(cam), want, rtol=1e-4, atol=1e-5)
    _, auto, _ = gradattr.grad_cam(net, x, 1, upsampling="none", return_layers=True)
    assert auto == "projector"


class Unrolled(nn.Module):
    """Tokens moved into the batch dim by 2 x 2 units and gathered back (Hiera's unroll): their
    order is no longer row-major on the 8 x 8 patch grid."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        n = x.shape[0]
        g = self.patch(x).permute(0, 2, 3, 1)  # (N, 8, 8, C)
        u = g.reshape(n, 4, 2, 4, 2, 16).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, 16, 16)
        t = u.reshape(n, 64, 16)  # from the batch dim: unit-major, not row-major
        return self.head(self.norm(t).mean(1))


def test_tokens_gathered_back_from_the_batch_dim_are_read_in_their_order_not_row_major():
    """The unit-major order is followed through the reshapes and permutes (token provenance):
    the map equals the network's own inverse's; a leading-token reading is refused."""
    net, x = Unrolled().eval(), torch.rand(2, 3, 32, 32)
    inv = lambda t: (t.reshape(t.shape[0], 2, 2, 4, 4, 16).permute(0, 3, 1, 4, 2, 5)
                     .reshape(2, 8, 8, 16).movedim(-1, 1))
    want = oracle(net, x, "norm", inv, 1)
    cam = gradattr.grad_cam(net, x, 1, feature_layer="norm", upsampling="none")
    torch.testing.assert_close(torch.as_tensor(cam), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(GradattrError, match="feature_layout='tokens' reads them as observed"):
        gradattr.grad_cam(net, x, 1, feature_layer="norm", feature_layout="tokens:0", upsampling="none")
    # the network's own inverse, given as a callable, reads it the same
    cam = gradattr.grad_cam(net, x, 1, feature_layer="norm", feature_layout=inv, upsampling="none")
    torch.testing.assert_close(torch.as_tensor(cam), want, rtol=1e-4, atol=1e-5)
