"""Files read as they are and with a bound: image bit depths, a zip bomb in a ``.pt2``, an operator
the archive calls that this Python does not have, an empty ``.npy`` in an input folder."""
from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gradattr import cli, loading
from gradattr.loading import pt2_archive


def _args(**kw):
    base = dict(size=None, mean=None, std=None, gray=False, crop="center", limit=float("inf"))
    base.update(kw)
    return SimpleNamespace(**base)


# -- 5: bit depths -----------------------------------------------------------------------------
def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = (np.arange(40 * 30).reshape(30, 40) * 54).astype(np.uint16)  # 0 .. 64746
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    x = loading.read_image(tmp_path / "g16.png", _args(gray=True)).x
    np.testing.assert_allclose(x[0], a / 65535.0, atol=1e-6)
    assert x.shape == (1, 30, 40) and float(x.max()) < 0.99  # c6b319c: 98.8 % of pixels became 1.0
    rgb = loading.read_image(tmp_path / "g16.png", _args()).x  # read as RGB: the grey channel three times
    np.testing.assert_allclose(rgb, np.repeat(a[None] / 65535.0, 3, 0), atol=1e-6)
    small = loading.read_image(tmp_path / "g16.png", _args(gray=True, size="15,20", crop="none")).x
    ref = np.asarray(Image.fromarray(a).resize((20, 15), Image.Resampling.BILINEAR), np.float64) / 65535.0
    np.testing.assert_allclose(small[0], ref, atol=1e-6)


def test_32_bit_integer_and_float_tiff_and_8_bit(tmp_path):
    i32 = np.array([[0, 2 ** 30, -(2 ** 30)], [2 ** 31 - 1, 5, 7]], dtype=np.int32)
    Image.fromarray(i32).save(tmp_path / "i32.tif")
    x = loading.read_image(tmp_path / "i32.tif", _args(gray=True)).x
    np.testing.assert_allclose(x[0], i32 / (2 ** 31 - 1), rtol=1e-6)  # signed: by its largest value
    f32 = np.array([[0.0, 0.25, 1.5], [-0.5, 1.0, 0.125]], dtype=np.float32)
    Image.fromarray(f32).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(loading.read_image(tmp_path / "f.tif", _args(gray=True)).x[0], f32)
    u8 = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(u8).save(tmp_path / "u8.png")
    np.testing.assert_allclose(loading.read_image(tmp_path / "u8.png", _args(gray=True)).x[0], u8 / 255.0)


def test_report_thumbnail_of_a_16_bit_input_is_not_white(tmp_path):
    import gradattr
    from gradattr.report import Inputs

    a = (np.arange(16 * 16).reshape(16, 16) * 64).astype(np.uint16)  # 0 .. 16320: a quarter of the range
    (tmp_path / "in").mkdir()
    Image.fromarray(a).save(tmp_path / "in" / "g.png")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(2, 2)).eval()
    gradattr.explain_dataset(net, [torch.rand(1, 3, 16, 16)], out_dir=tmp_path / "run")
    (tmp_path / "run" / "inputs.json").write_text(json.dumps({"folder": str(tmp_path / "in"),
                                                              "files": [{"name": "g.png"}]}))
    x = Inputs(None, tmp_path / "run", 1).picture(0, (16, 16))
    np.testing.assert_allclose(x, np.repeat(a[None] / 65535.0, 3, 0), atol=1e-6)


# -- 4: zip bomb -------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pt2")
    torch.export.save(torch.export.export(_net(), (torch.zeros(1, 3, 8, 8),)), d / "good.pt2")
    return d / "good.pt2"


def _spaces_deflated(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of spaces, built from one compressed MiB (fast), and its CRC-32."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b" " * 2 ** 20
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return block * mib + co.flush(zlib.Z_FINISH), crc


def _zip(members: dict[str, bytes], raw: tuple[str, tuple[bytes, int], int]) -> bytes:
    """A zip of ``members`` (stored) and one deflated member ``(name, (deflate stream, crc), declared size)``."""
    out, central = io.BytesIO(), []
    entries = [(n, b, 0, len(b), zlib.crc32(b)) for n, b in members.items()]
    entries.append((raw[0], raw[1][0], 8, raw[2], raw[1][1]))
    for name, data, method, size, crc in entries:
        offset = out.tell()
        n = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(n), 0))
        out.write(n + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data),
                                   size, len(n), 0, 0, 0, 0, 0, offset) + n)
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start,
                          start, 0))
    return out.getvalue()


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _peak(f) -> tuple[int, object]:
    tracemalloc.start()
    try:
        try:
            result = f()
        except Exception as err:  # noqa: BLE001 - the caller looks at it
            result = err
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_zip_bomb_in_a_pt2_is_refused_before_allocation(good, tmp_path):
    m = _members(good)
    root = next(iter(m)).split("/")[0]
    bomb = _zip(m, (f"{root}/extra/notes.txt", _spaces_deflated(256), 256 * 2 ** 20))
    assert len(bomb) < 2 ** 20  # a small file...
    (tmp_path / "bomb.pt2").write_bytes(bomb)
    peak, err = _peak(lambda: loading.load_model(str(tmp_path / "bomb.pt2")))
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"  # ...that would have expanded to 256 MiB
    assert isinstance(err, loading.CliError), err
    text = str(err)
    assert "\n" not in text and text.startswith(f"--model: {tmp_path / 'bomb.pt2'} holds members of 256.")
    assert f"{root}/extra/notes.txt, 256.0 MiB from" in text and "zip bomb" in text
    assert "the file's size plus 64.0 MiB" in text


def test_a_member_longer_than_it_declares_is_read_only_to_its_declared_size(good, tmp_path):
    m = _members(good)
    root = next(iter(m)).split("/")[0]
    liar = _zip(m, (f"{root}/extra/notes.txt", _spaces_deflated(96), 1024))  # says 1 KiB, holds 96 MiB
    (tmp_path / "liar.pt2").write_bytes(liar)
    peak, err = _peak(lambda: loading.load_model(str(tmp_path / "liar.pt2")))
    assert isinstance(err, loading.CliError) and "\n" not in str(err), err
    assert peak < 16 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"


def test_a_genuine_archive_is_within_the_cap(good):
    with zipfile.ZipFile(good) as z:
        pt2_archive.check_sizes(z.infolist(), good.stat().st_size)  # stored members: no more than the file
        assert sum(i.file_size for i in z.infolist()) <= good.stat().st_size
    assert isinstance(loading.load_model(str(good)).net, nn.Module)


# -- 12: an operator this Python does not have ---------------------------------------------------
def test_unregistered_custom_operator_is_named(good, tmp_path, capfd):
    m = _members(good)
    root = next(iter(m)).split("/")[0]
    program = json.loads(m[f"{root}/models/model.json"])
    nodes = program["graph_module"]["graph"]["nodes"]
    conv = next(n for n in nodes if "conv2d" in n["target"])
    conv["target"] = "torch.ops.mylib.frobnicate.default"
    m[f"{root}/models/model.json"] = json.dumps(program).encode()
    with zipfile.ZipFile(tmp_path / "custom.pt2", "w", zipfile.ZIP_STORED) as z:
        for n, b in m.items():
            z.writestr(n, b)
    assert cli.main(["layers", "--model", str(tmp_path / "custom.pt2"), "--input-shape", "1,3,8,8"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert "calls the operator torch.ops.mylib.frobnicate.default, which is not registered in this Python; " \
           "its library must be imported before the model loads" in err
    assert "warnings above" not in err


# -- 13: an empty .npy in an input folder ----------------------------------------------------------
def test_empty_npy_in_an_input_folder_names_the_file(tmp_path, monkeypatch, capfd):
    (tmp_path / "rnet.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
        "nn.Flatten(), nn.Linear(4, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "a.npy", np.zeros((3, 8, 8), np.float32))
    (tmp_path / "arrays" / "b.npy").write_bytes(b"")
    status = cli.main(["explain-dataset", "arrays", "--model", "rnet:build", "--random-weights",
                       "--out-dir", "maps"])
    err = capfd.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert "FOLDER: cannot read arrays/b.npy as a .npy array: the file is empty (0 bytes)" in err
