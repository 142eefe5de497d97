"""Pictures you can keep: figures pyplot knows about, and overlays as arrays.

``overlay`` followed by ``plt.savefig`` must write the overlay (not a blank
page); ``overlay_array`` must give the pixels pytorch-grad-cam's
``show_cam_on_image`` and torch-cam's ``overlay_mask`` give where the three
compute the same blend; the 1-D and 3-D array forms must show the map where it
is high. Expected colours are computed by hand from the colormap's table.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

mpl = pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402  (the user's program uses pyplot)
from PIL import Image  # noqa: E402

from gradattr import GradattrError, plot  # noqa: E402
from test_plot import png, rgb_at  # noqa: E402  (the same pixel readers)

JET = mpl.colormaps["jet"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")




def bump(h: int = 32, w: int = 32, at=(8, 22)) -> np.ndarray:
    """A map that is 1 in a 9 x 9 square around ``at`` (row, col), 0 elsewhere."""
    m = np.zeros((h, w))
    m[at[0] - 4:at[0] + 5, at[1] - 4:at[1] + 5] = 1.0
    return m


# -- figures behave like pyplot figures ----------------------------------------------------------
def test_overlay_then_plt_savefig_writes_the_overlay(tmp_path):
    img = np.zeros((32, 32))
    img[16:] = 1.0  # bottom half white
    fig = plot.overlay(img, bump(), alpha=0.5)
    assert plt.gcf() is fig and fig.number in plt.get_fignums()
    plt.savefig(tmp_path / "p.png", dpi=fig.dpi)
    pixels = png(tmp_path / "p.png")
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not a blank page
    ax = fig.axes[0]
    # where the map is 1 on black: half of jet's dark red; where 0 on white: white and jet's blue halved
    np.testing.assert_allclose(rgb_at(pixels, ax, 22, 8), 0.5 * np.array(JET(1.0)[:3]), atol=2.5 / 255)
    np.testing.assert_allclose(rgb_at(pixels, ax, 5, 25), 0.5 + 0.5 * np.array(JET(0.0)[:3]), atol=2.5 / 255)


def test_every_figure_function_registers_with_pyplot(tmp_path):
    before = set(plt.get_fignums())
    figs = [plot.overlay(np.eye(8), np.eye(8)), plot.grid(np.eye(8), {"a": np.eye(8)}),
            plot.sequence(np.ones((2, 9)), np.arange(9.0)), plot.volume(np.ones((4, 5, 6)), np.ones((4, 5, 6))),
            plot.gradient(np.ones((3, 8, 8)))]
    assert set(plt.get_fignums()) - before == {f.number for f in figs}
    assert plt.gcf() is figs[-1]


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env={**__import__("os").environ, "MPLBACKEND": "Agg"}, timeout=120)


@pytest.mark.slow  # a fresh Python process that imports torch
def test_the_readme_matlab_line_works_as_written_in_a_script(tmp_path):
    # MATLAB: imshow(X); hold on; imagesc(scoreMap, AlphaData=0.5); colormap jet  -> the README's line,
    # then what a script does next: plt.show() (a no-op on Agg) and plt.savefig().
    r = _run("""
        import numpy as np, torch, matplotlib.pyplot as plt, gradattr
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        x = torch.rand(3, 16, 16)
        score_map = gradattr.grad_cam(net, x, 1)
        gradattr.plot.overlay(x, score_map, alpha=0.5, cmap="jet")
        plt.show()
        plt.savefig("readme.png")
        a = plt.imread("readme.png")
        print(len(np.unique(a.reshape(-1, a.shape[-1]), axis=0)))
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 20


@pytest.mark.slow  # a fresh Python process that imports torch
def test_a_program_without_pyplot_never_imports_it(tmp_path):
    r = _run("""
        import sys, numpy as np
        from gradattr import plot
        fig = plot.overlay(np.eye(8), np.eye(8), path="a.png")
        plot.volume_array(np.ones((3, 4, 5)), np.ones((3, 4, 5)))
        plot.sequence_array(np.ones((1, 6)), np.arange(6.0))
        print("matplotlib.pyplot" in sys.modules, type(fig.canvas).__name__)
        """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "FigureCanvasAgg"]


# -- overlay_array -----------------------------------------------------------------------------
def test_overlay_array_is_the_hand_computed_blend_and_the_figures_colours(tmp_path):
    img = np.zeros((32, 32))
    img[16:] = 1.0
    a = plot.overlay_array(img, bump(), alpha=0.5)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    dark_red = np.round(255 * 0.5 * np.array(JET(1.0)[:3]))
    np.testing.assert_array_equal(a[8, 22], dark_red)  # the map's maximum on black
    np.testing.assert_array_equal(a[25, 5], np.round(255 * (0.5 + 0.5 * np.array(JET(0.0)[:3]))))
    # the figure draws the same colours at the same places
    fig = plot.overlay(img, bump(), alpha=0.5, path=tmp_path / "f.png", colorbar=False)
    pixels = png(tmp_path / "f.png")
    for row, col in [(8, 22), (25, 5), (25, 22), (3, 3)]:
        np.testing.assert_allclose(rgb_at(pixels, fig.axes[0], col, row, r=1), a[row, col] / 255, atol=3 / 255)


def test_overlay_array_matches_pytorch_grad_cam_show_cam_on_image():
    cv2 = pytest.importorskip("cv2")
    show_cam_on_image = pytest.importorskip("pytorch_grad_cam.utils.image").show_cam_on_image
    rng = np.random.default_rng(0)
    img = rng.random((24, 20, 3)).astype(np.float32)
    img[0, 0], img[0, 1] = 0.0, 1.0                        # spans [0, 1]: min-max scaling changes nothing
    cam = rng.integers(0, 256, (24, 20)) / 255.0          # values on OpenCV's 8-bit table exactly
    cam[0, 0], cam[0, 1] = 0.0, 1.0
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1] / 255.0
    opencv_jet = mpl.colors.ListedColormap(lut)            # OpenCV's jet, as a matplotlib colormap
    for alpha in (0.3, 0.5, 0.8):
        ref = show_cam_on_image(img, cam.astype(np.float32), use_rgb=True, image_weight=1 - alpha)
        ours = plot.overlay_array(img, cam, alpha=alpha, cmap=opencv_jet).astype(np.float64)
        blend = (1 - alpha) * img + alpha * lut[np.round(cam * 255).astype(int)]
        ours_divided = np.floor(255 * ((ours / 255) / blend.max()) + 1e-6)  # show_cam_on_image divides by the max
        assert np.abs(ours_divided - ref.astype(np.float64)).max() <= 2


def test_overlay_array_matches_torchcam_overlay_mask():
    overlay_mask = pytest.importorskip("torchcam.utils").overlay_mask
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (18, 26, 3)).astype(np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    cam = rng.random((18, 26))
    cam[0, 0], cam[0, 1] = 0.0, 1.0
    alpha = 0.4  # torch-cam's alpha is the image's weight, and it squares the mask: pass sqrt(cam)
    ref = np.asarray(overlay_mask(Image.fromarray(img), Image.fromarray(np.sqrt(cam).astype(np.float32), "F"),
                                  "jet", alpha=1 - alpha)).astype(np.float64)
    ours = plot.overlay_array(img, cam, alpha=alpha).astype(np.float64)
    assert np.abs(ours - ref).max() <= 2


def test_overlay_array_of_tensors_with_a_batch_of_one_and_to_pil(tmp_path):
    x = torch.rand(1, 3, 10, 12, requires_grad=True)
    cam = torch.rand(1, 10, 12)
    a = plot.overlay_array(x, cam)
    np.testing.assert_array_equal(a, plot.overlay_array(x[0].detach().permute(1, 2, 0).numpy(), cam[0].numpy()))
    im = plot.to_pil(a)
    assert im.size == (12, 10) and im.mode == "RGB"
    im.save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), a)


# -- 1-D and 3-D -------------------------------------------------------------------------------
def test_volume_array_shows_three_slices_through_the_maximum():
    d, h, w = 6, 8, 10
    vol = np.zeros((d, h, w))
    cam = np.zeros((d, h, w))
    cam[2, 5, 7] = 1.0
    a = plot.volume_array(vol, cam, alpha=0.5, gap=2)
    assert a.shape == (max(h, d), w + w + h + 4, 3) and a.dtype == np.uint8
    hot = np.round(255 * 0.5 * np.array(JET(1.0)[:3]))
    cold = np.round(255 * 0.5 * np.array(JET(0.0)[:3]))
    np.testing.assert_array_equal(a[5, 7], hot)                   # slice d = 2: (h, w) = (5, 7)
    np.testing.assert_array_equal(a[2, w + 2 + 7], hot)           # slice h = 5: (d, w) = (2, 7)
    np.testing.assert_array_equal(a[2, 2 * w + 4 + 5], hot)       # slice w = 7: (d, h) = (2, 5)
    np.testing.assert_array_equal(a[0, 0], cold)
    assert (a[:, w:w + 2] == 0).all() and (a[d:, w + 2:] == 0).all()  # black gap and padding


@pytest.mark.slow  # a few seconds: CI's second step
def test_sequence_array_draws_the_importance(tmp_path):
    t = 40
    importance = np.zeros(t)
    importance[20:30] = 1.0
    a = plot.sequence_array(np.sin(np.arange(t) / 3.0)[None], importance, title="s")
    before = set(plt.get_fignums())
    assert a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20
    tint = np.array(JET(1.0)[:3])  # the high steps are tinted dark red in the top axes
    reddish = (a[..., 0] > a[..., 2] + 40).sum()
    assert reddish > 100
    np.testing.assert_array_equal(a, plot.figure_array(plot.sequence(np.sin(np.arange(t) / 3.0)[None],
                                                                     importance, title="s")))
    assert tint[0] > tint[2] and set(plt.get_fignums()) - before  # the second one is a pyplot figure


@pytest.mark.parametrize("call, match", [
    (lambda: plot.overlay_array(np.eye(4), np.eye(5)), "cam: expected a map of the input's size"),
    (lambda: plot.overlay_array(np.eye(4), np.eye(4), alpha=2), "alpha: expected a number in"),
    (lambda: plot.volume_array(np.eye(4), np.eye(4)), "volume: expected D x H x W"),
    (lambda: plot.volume_array(np.ones((2, 3, 4)), np.ones((2, 3, 4)), gap=-1), "gap: expected an int"),
    (lambda: plot.sequence_array(np.ones(5), np.ones(5), path="x.png"), "path: expected no path"),
    (lambda: plot.to_pil(np.zeros((4, 4, 3))), "picture: expected an H x W x 3 uint8"),
    (lambda: plot.figure_array(np.zeros(3)), "fig: expected a matplotlib Figure"),
])
def test_array_forms_bad_input(call, match):
    with pytest.raises(GradattrError, match=match):
        call()
