"""gradattr.plot: the PNGs show the map where it is high, and bad input gets a clear error.

Pixels are read back from the written PNG and located with the axes' own data
transform, so the checks do not depend on the layout. The expected colours are
computed by hand: ``(1 - alpha) * grey + alpha * jet(map)``.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

mpl = pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (matplotlib depends on pillow)

from gradattr import GradattrError  # noqa: E402
from gradattr import plot  # noqa: E402

JET = mpl.colormaps["jet"]


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    """Figures are pyplot's once a test has imported pyplot: close them as a script would."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def png(path) -> np.ndarray:
    """The PNG's RGB pixels in [0, 1], rows from the top."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def rgb_at(pixels: np.ndarray, ax, x: float, y: float, r: int = 2) -> np.ndarray:
    """Mean colour of a (2r+1)^2 patch around data point (x, y) of ``ax``."""
    px, py = ax.transData.transform((x, y))
    col, row = int(round(px)), int(round(pixels.shape[0] - py))
    return pixels[row - r:row + r + 1, col - r:col + r + 1].reshape(-1, 3).mean(0)


def naive_rescale(a: np.ndarray) -> np.ndarray:
    lo, hi = min(a.ravel()), max(a.ravel())
    out = np.zeros_like(a, dtype=np.float64)
    for i, v in np.ndenumerate(a):
        out[i] = (v - lo) / (hi - lo) if hi > lo else 0.0
    return out


def halves_map(h: int = 20, w: int = 20) -> np.ndarray:
    """1 on the left half, 0 on the right."""
    m = np.zeros((h, w))
    m[:, : w // 2] = 1.0
    return m


# -- overlay ---------------------------------------------------------------------------------
def test_overlay_colours_are_the_hand_computed_blend(tmp_path):
    # Image: top half 0, bottom half 1 (grey). Map: left half 1, right half 0. Four known colours.
    img = np.zeros((20, 20))
    img[10:] = 1.0
    alpha = 0.5
    fig = plot.overlay(img, halves_map(), alpha=alpha, path=tmp_path / "o.png")
    assert isinstance(fig, mpl.figure.Figure)
    pixels = png(tmp_path / "o.png")
    assert pixels.shape[:2] == fig.canvas.get_width_height()[::-1]
    ax = fig.axes[0]
    for (x, y), grey, m in [((4, 4), 0.0, 1.0), ((15, 4), 0.0, 0.0), ((4, 15), 1.0, 1.0), ((15, 15), 1.0, 0.0)]:
        want = (1 - alpha) * grey + alpha * np.array(JET(m)[:3])
        np.testing.assert_allclose(rgb_at(pixels, ax, x, y), want, atol=2.5 / 255)


def test_overlay_changes_red_where_the_map_is_high(tmp_path):
    # On a dark image, the high half (jet red) changes the red channel; the low half (jet blue) does not.
    img = torch.zeros(3, 24, 24)
    plot.overlay(img, np.zeros((24, 24)), alpha=0.0, path=tmp_path / "plain.png")
    fig = plot.overlay(img, halves_map(24, 24), path=tmp_path / "cam.png")
    plain, cam = png(tmp_path / "plain.png"), png(tmp_path / "cam.png")
    ax = fig.axes[0]
    left = np.abs(rgb_at(cam, ax, 5, 12, 4) - rgb_at(plain, ax, 5, 12, 4))
    right = np.abs(rgb_at(cam, ax, 18, 12, 4) - rgb_at(plain, ax, 18, 12, 4))
    assert left[0] > right[0] + 0.2  # red
    assert right[2] > left[2] + 0.2  # blue


def test_overlay_rescales_the_map_like_matlab_rescale(tmp_path):
    rng = np.random.default_rng(0)
    img, m = rng.random((16, 16, 3)), rng.random((16, 16))
    plot.overlay(img, m, path=tmp_path / "a.png", colorbar=False)
    plot.overlay(img, 7.0 * m - 3.0, path=tmp_path / "b.png", colorbar=False)  # same map after rescale
    np.testing.assert_array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    np.testing.assert_allclose(plot.rescale(7.0 * m - 3.0), naive_rescale(m), atol=1e-12)
    np.testing.assert_array_equal(plot.rescale(np.full((3, 3), 5.0)), naive_rescale(np.full((3, 3), 5.0)))


def test_overlay_layouts_agree_and_inputs_are_untouched(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.random((12, 18, 3)).astype(np.float32)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).clone().requires_grad_(True)
    cam = torch.from_numpy(rng.random((12, 18))).float()[None, None]  # leading singleton dims dropped
    before = chw.detach().clone()
    plot.overlay(hwc, cam[0, 0].numpy(), path=tmp_path / "hwc.png")
    plot.overlay(chw[None], cam, path=tmp_path / "chw.png")  # a batch of one, as grad_cam takes it
    np.testing.assert_array_equal(png(tmp_path / "hwc.png"), png(tmp_path / "chw.png"))
    assert torch.equal(chw.detach(), before) and chw.grad is None and chw.requires_grad


def test_overlay_grey_image_draws_grey(tmp_path):
    img = np.zeros((10, 10))
    img[:, 5:] = 1.0
    fig = plot.overlay(img, np.zeros((10, 10)), alpha=0.0, path=tmp_path / "g.png")
    pixels = png(tmp_path / "g.png")
    np.testing.assert_allclose(rgb_at(pixels, fig.axes[0], 2, 5), [0, 0, 0], atol=1 / 255)
    np.testing.assert_allclose(rgb_at(pixels, fig.axes[0], 7, 5), [1, 1, 1], atol=1 / 255)


def test_overlay_into_given_axes_and_contour(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    mask = np.zeros((10, 10), bool)
    mask[2:6, 2:6] = True
    out = plot.overlay(np.eye(10), halves_map(10, 10), ax=axes[1], title="right", contour=mask)
    assert out is fig and axes[1].get_title() == "right" and len(axes[1].collections) == 1
    assert axes[0].get_title() == "" and not axes[0].images


def test_figures_are_pyplot_figures_only_when_the_program_uses_pyplot(tmp_path):
    # (test_plot_arrays.py checks that a program that never imports pyplot gets none from gradattr)
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plot.overlay(np.eye(8), np.eye(8))
    assert plt.get_fignums() == [*before, fig.number] and plt.gcf() is fig
    plt.close(fig)


# -- sequence --------------------------------------------------------------------------------
def test_sequence_axes_lines_and_shading(tmp_path):
    c, t = 3, 20
    x = 0.1 * np.sin(np.arange(t) / 3.0)[None] * np.arange(1, c + 1)[:, None]
    imp = np.zeros(t)
    imp[10:] = 2.0  # late steps matter
    fig = plot.sequence(torch.tensor(x), torch.tensor(imp), path=tmp_path / "s.png", title="seq")
    assert (tmp_path / "s.png").exists()
    top, bottom = fig.axes[:2]
    assert bottom.get_xlabel() == "Time Step" and top.get_title() == "seq"
    assert top.get_shared_x_axes().joined(top, bottom)
    assert len(top.lines) == c
    for i, line in enumerate(top.lines):
        np.testing.assert_allclose(line.get_ydata(), x[i])
    np.testing.assert_allclose(bottom.lines[0].get_ydata(), imp)
    np.testing.assert_allclose(bottom.lines[0].get_xdata(), np.arange(t))
    assert [tx.get_text() for tx in top.get_legend().get_texts()] == ["Feature 1", "Feature 2", "Feature 3"]
    # The background tint of the top axes is red over the important steps, blue over the others.
    pixels = png(tmp_path / "s.png")
    y_free = top.get_ylim()[1] - 0.01 * np.ptp(top.get_ylim())  # above every line
    late, early = rgb_at(pixels, top, 15, y_free, 1), rgb_at(pixels, top, 4, y_free, 1)
    assert late[0] - late[2] > 0.1 and early[2] - early[0] > 0.1


def test_sequence_one_channel_and_several_maps(tmp_path):
    t = 12
    fig = plot.sequence(np.arange(t, dtype=float), {"a": np.ones(t), "b": np.arange(t)},
                        path=tmp_path / "s.png", shade=False, legend=False)
    top, bottom = fig.axes[:2]
    assert len(top.lines) == 1 and [ln.get_label() for ln in bottom.lines] == ["a", "b"]
    assert not top.images


# -- volume ----------------------------------------------------------------------------------
def test_volume_slices_through_the_maximum(tmp_path):
    d, h, w = 12, 14, 16
    vol = np.zeros((1, d, h, w))
    cam = np.zeros((d, h, w))
    p = (3, 10, 4)
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    cam += np.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / 4.0)
    mask = (np.abs(zz - p[0]) <= 2) & (np.abs(yy - p[1]) <= 2) & (np.abs(xx - p[2]) <= 2)
    fig = plot.volume(torch.tensor(vol), torch.tensor(cam), path=tmp_path / "v.png", contour=mask)
    axes = fig.axes[:3]
    assert [a.get_title() for a in axes] == ["slice D = 3", "slice H = 10", "slice W = 4"]
    pixels = png(tmp_path / "v.png")
    # (x, y) next to the peak (diagonally, off the white cross marking it) and of a far corner in each
    # view: D-slice (W, H), H-slice (W, D), W-slice (H, D).
    for ax, near_xy, far_xy in zip(axes, [(5, 11), (5, 4), (11, 4)], [(15, 0), (15, 11), (0, 11)]):
        hot, cold = rgb_at(pixels, ax, *near_xy, 1), rgb_at(pixels, ax, *far_xy, 1)
        assert hot[0] > hot[2] + 0.15 and cold[2] > cold[0] + 0.15
        assert len(ax.collections) >= 1  # the mask's outline


def test_volume_at_center_and_index():
    cam = np.random.default_rng(0).random((6, 8, 10))
    assert plot.volume(np.ones((6, 8, 10)), cam, at="center").axes[0].get_title() == "slice D = 3"
    titles = [a.get_title() for a in plot.volume(np.ones((6, 8, 10)), cam, at=(1, 2, 3)).axes[:3]]
    assert titles == ["slice D = 1", "slice H = 2", "slice W = 3"]


# -- grid ------------------------------------------------------------------------------------
def test_grid_one_panel_per_map_with_its_name(tmp_path):
    h, w = 20, 20
    quads = {}
    for name, (r, c) in {"top-left": (0, 0), "top-right": (0, 1), "bottom-left": (1, 0)}.items():
        m = np.zeros((h, w))
        m[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10] = 1.0
        quads[name] = m
    img = torch.from_numpy(np.random.default_rng(0).random((1, h, w)))  # grey: the blend's R - B is the map's
    fig = plot.grid(img, quads, path=tmp_path / "g.png", ncols=2, title="methods")
    visible = [a for a in fig.axes if a.get_visible()]
    *visible, bar = visible  # the colorbar's axes come last
    assert [a.get_title() for a in visible] == ["input", "top-left", "top-right", "bottom-left"]
    assert bar.get_ylabel() == "each map rescaled to [0, 1]" and bar.get_ylim() == (0.0, 1.0)
    assert fig.get_suptitle() == "methods"
    pixels = png(tmp_path / "g.png")
    centres = {"top-left": (4.5, 4.5), "top-right": (14.5, 4.5), "bottom-left": (4.5, 14.5)}
    for ax in visible[1:]:
        for quad, xy in centres.items():
            colour = rgb_at(pixels, ax, *xy, 3)
            redness = colour[0] - colour[2]
            assert (redness > 0.1) if quad == ax.get_title() else (redness < -0.1), (ax.get_title(), quad)
    no_input = plot.grid(img, quads, input_title=None, colorbar=False)
    assert [a.get_title() for a in no_input.axes if a.get_visible()] == list(quads)


def test_grid_draws_a_three_channel_gradient_as_rgb_and_one_map_with_its_values(tmp_path):
    h, w = 16, 16
    grad = np.zeros((3, h, w))
    grad[0, :, :8] = 1.0   # red channel positive on the left
    grad[2, :, 8:] = -1.0  # blue channel negative on the right
    heat = np.arange(h * w, dtype=float).reshape(h, w) - 10.0
    fig = plot.grid(np.zeros((h, w)), {"gradient": torch.tensor(grad), "heat": heat}, path=tmp_path / "g.png")
    _, g_ax, heat_ax, bar = fig.axes
    # By hand: over all 768 values the mean is 0 and the variance 256 / 768 = 1/3, so a gradient of
    # +-1 is drawn 0.5 +- 0.1 * sqrt(3) and 0 is mid-grey.
    k = 0.1 * np.sqrt(3)
    pixels = png(tmp_path / "g.png")
    np.testing.assert_allclose(rgb_at(pixels, g_ax, 3, 8, 1), [0.5 + k, 0.5, 0.5], atol=2.5 / 255)
    np.testing.assert_allclose(rgb_at(pixels, g_ax, 12, 8, 1), [0.5, 0.5, 0.5 - k], atol=2.5 / 255)
    # the only heat map: the colorbar reads its own values
    assert bar.get_ylim() == (-10.0, h * w - 11.0) and bar.get_ylabel() == "map value"
    assert not g_ax.collections and len(heat_ax.images) == 2  # photo + map; the gradient alone


# -- colorbars and gradients -----------------------------------------------------------------
def test_overlay_and_volume_colorbars_read_the_map_values(tmp_path):
    m = 7.0 * halves_map() - 3.0  # values -3 and 4
    fig = plot.overlay(np.zeros((20, 20)), m, colorbar_label="Grad-CAM")
    assert len(fig.axes) == 2 and fig.axes[1].get_ylim() == (-3.0, 4.0)
    assert fig.axes[1].get_ylabel() == "Grad-CAM"
    assert len(plot.overlay(np.zeros((20, 20)), m, colorbar=False).axes) == 1
    flat = plot.overlay(np.zeros((20, 20)), np.full((20, 20), 2.0))  # constant: drawn as 0
    assert flat.axes[1].get_ylim()[0] == 2.0
    vol = plot.volume(np.zeros((4, 5, 6)), np.arange(120.0).reshape(4, 5, 6))
    assert len(vol.axes) == 4 and vol.axes[3].get_ylim() == (0.0, 119.0)


def test_sequence_colorbar_of_the_tint(tmp_path):
    fig = plot.sequence(np.zeros((2, 10)), np.linspace(0.5, 2.5, 10))
    assert len(fig.axes) == 3 and fig.axes[2].get_ylim() == (0.5, 2.5)
    assert fig.axes[2].get_ylabel() == "importance (tint)"
    assert len(plot.sequence(np.zeros((2, 10)), np.ones(10), colorbar=False).axes) == 2


def test_sequence_names_no_method_unless_told():
    """The importance axis once said "Grad-CAM importance" for every method's map."""
    fig = plot.sequence(np.zeros((2, 10)), np.linspace(0.5, 2.5, 10))
    assert fig.axes[1].get_ylabel() == "importance" and fig.axes[2].get_ylabel() == "importance (tint)"
    fig = plot.sequence(np.zeros((2, 10)), np.linspace(0.5, 2.5, 10), ylabel="Score-CAM importance")
    assert fig.axes[1].get_ylabel() == "Score-CAM importance"
    assert fig.axes[2].get_ylabel() == "Score-CAM importance (tint)"


def test_gradient_rgb_normalisation_by_hand():
    g = np.array([[-2.0, 0.0, 2.0, 0.0]])  # mean 0, std sqrt(2)
    np.testing.assert_allclose(plot.gradient_rgb(g), 0.5 + 0.1 * g / np.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(plot.gradient_rgb(g, contrast=1.0), [[0.0, 0.5, 1.0, 0.5]], atol=1e-12)  # clipped
    np.testing.assert_array_equal(plot.gradient_rgb(np.full((3, 2, 2), 5.0)), np.full((2, 2, 3), 0.5))
    hwc = np.random.default_rng(0).normal(size=(4, 5, 3))
    chw = torch.from_numpy(hwc).permute(2, 0, 1)[None]  # a batch of one, PyTorch layout
    np.testing.assert_allclose(plot.gradient_rgb(chw), plot.gradient_rgb(hwc), atol=1e-12)
    assert plot.gradient_rgb(hwc).shape == (4, 5, 3)


def test_gradient_picture(tmp_path):
    grad = torch.zeros(3, 10, 10)
    grad[1, 2:5, 2:5] = 3.0  # green square
    fig = plot.gradient(grad, path=tmp_path / "g.png", title="guided backprop")
    assert fig.axes[0].get_title() == "guided backprop" and len(fig.axes) == 1
    pixels = png(tmp_path / "g.png")
    square, rest = rgb_at(pixels, fig.axes[0], 3, 3, 1), rgb_at(pixels, fig.axes[0], 7, 7, 1)
    assert square[1] > rest[1] + 0.2 and abs(square[0] - rest[0]) < 0.05


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: plot.overlay(np.zeros((2, 3, 4, 5)), np.zeros((4, 5))),
     r"image: expected H x W.*shape \(2, 3, 4, 5\)"),
    (lambda: plot.overlay(np.zeros((8, 8, 5)), np.zeros((8, 8))), r"image: expected .*shape \(8, 8, 5\)"),
    (lambda: plot.overlay(np.zeros((8, 8)), np.zeros((4, 4))),
     r"cam: expected a map of the input's size \(8, 8\).*upsampling.*got shape \(4, 4\)"),
    (lambda: plot.overlay(np.zeros((8, 8)), np.full((8, 8), np.nan)), r"cam: expected finite values"),
    (lambda: plot.overlay("cat.png", np.zeros((8, 8))),
     r"image: expected a torch.Tensor or a numpy array, got str"),
    (lambda: plot.overlay(np.array([["a"]]), np.zeros((1, 1))), r"image: expected a real numeric array"),
    (lambda: plot.overlay(np.zeros((8, 8)), np.zeros((8, 8)), alpha=1.5),
     r"alpha: expected a number in \[0, 1\], got 1.5"),
    (lambda: plot.overlay(np.zeros((8, 8)), np.zeros((8, 8)), cmap="jett"),
     r"cmap: expected a matplotlib colormap.*'jett'"),
    (lambda: plot.overlay(np.zeros((8, 8)), np.zeros((8, 8)), contour=np.zeros((4, 4))),
     r"contour: expected a map of the input's size"),
    (lambda: plot.sequence(np.zeros((3, 10)), np.zeros(9)),
     r"importance: expected a map of the input's size \(10,\).*got shape \(9,\)"),
    (lambda: plot.sequence(np.zeros((2, 3, 10)), np.zeros(10)),
     r"x: expected a C x T sequence.*shape \(2, 3, 10\)"),
    (lambda: plot.sequence(np.zeros((3, 10)), {}), r"importance: expected .*non-empty dict"),
    (lambda: plot.sequence(np.zeros((3, 10)), np.zeros(10), channel_names=["a"]),
     r"channel_names: expected 3 names.*got 1"),
    (lambda: plot.volume(np.zeros((8, 8)), np.zeros((8, 8))), r"volume: expected D x H x W.*shape \(8, 8\)"),
    (lambda: plot.volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 5))),
     r"cam: expected a map of the input's size \(4, 4, 4\)"),
    (lambda: plot.volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), at=(0, 0, 4)),
     r"at: expected 'max', 'center' or a \(d, h, w\) index.*\(0, 0, 4\)"),
    (lambda: plot.volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), at="top"), r"at: expected .*'top'"),
    (lambda: plot.grid(np.zeros((8, 8)), {}),
     r"maps: expected a non-empty dict \{name: map\}, got an empty dict"),
    (lambda: plot.grid(np.zeros((8, 8)), [np.zeros((8, 8))]), r"maps: expected a non-empty dict.*got list"),
    (lambda: plot.grid(np.zeros((8, 8)), {"a": np.zeros((8, 9))}),
     r"maps\['a'\]: expected a map of the input's size \(8, 8\)"),
    (lambda: plot.gradient(np.zeros((2, 8, 8))), r"grad: expected C x H x W or H x W x C.*\(2, 8, 8\)"),
    (lambda: plot.gradient(np.zeros((3, 8, 8)), contrast=0), r"contrast: expected a positive number, got 0"),
    (lambda: plot.grid(np.zeros((8, 8)), {"a": np.zeros((3, 8, 9))}),
     r"maps\['a'\]: expected a map of the input's size \(8, 8\)"),
    (lambda: plot.grid(np.zeros((8, 8)), {"a": np.zeros((8, 8))}, ncols=0),
     r"ncols: expected a positive int, got 0"),
    (lambda: plot.grid(np.zeros((8, 8)), {"a": np.zeros((8, 8))}, contours={"b": np.zeros((8, 8))}),
     r"contours: expected a dict whose keys are panel names.*\['b'\]"),
])
def test_bad_input_errors(call, match):
    with pytest.raises(GradattrError, match=match):
        call()


@pytest.mark.slow  # a few seconds: CI's second step
def test_path_in_a_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "o.png"
    with pytest.raises(GradattrError, match=r"path: expected a file path in an existing folder"):
        plot.overlay(np.zeros((8, 8)), np.zeros((8, 8)), path=target)
    assert not target.parent.exists()


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what `import` sees when it is absent
    with pytest.raises(GradattrError, match=r"matplotlib to be installed.*gradattr\[plot\]"):
        plot.overlay(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(GradattrError, match=r"matplotlib to be installed"):
        plot.sequence(np.zeros((2, 8)), np.zeros(8))
