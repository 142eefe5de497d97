"""The README and the site list what the package has (every registered method in the methods table,
every argument in the usage page), and every python block of both runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import gradattr

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
#: the reference tables left the README for the site's pages
METHODS = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
USAGE = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()


def test_every_registered_method_is_in_the_readme_table_and_nothing_else():
    table = METHODS[METHODS.index("| function | method | use it when |"):]
    table = table[:table.index("\n\n")]
    listed = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert listed == gradattr.list_methods()


def test_every_argument_of_grad_cam_is_in_the_readme_signature_and_table():
    """A new shared option must be documented where users read the signature."""
    import inspect

    params = [p for p in inspect.signature(gradattr.grad_cam).parameters if p not in ("net", "x")]
    block = USAGE[USAGE.index("gradattr.grad_cam(net, x, target=None"):]
    block = block[:block.index("```")]
    assert re.findall(r"(\w+)=", block) == params
    table = USAGE[USAGE.index("| argument | meaning |"):]
    table = table[:table.index("\n\n")]
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert sorted(rows) == sorted(params)  # each argument once, in an order that reads well


# ------------------------------------------------------------------ every README code block runs
def _python_blocks():
    """``(first line, code, runnable)`` of every ```python block; a block right after a
    ``<!-- no-run: why -->`` line is documentation only (a signature, files, long training)."""
    out = []
    for m in re.finditer(r"```python\n(.*?)```", README, flags=re.S):
        before = README[:m.start()].rstrip().splitlines()
        skip = bool(before) and before[-1].strip().startswith("<!-- no-run")
        out.append((m.group(1).splitlines()[0], m.group(1), not skip))
    return out


BLOCKS = _python_blocks()
#: The README's placeholders for the user's own objects, bound here to small stand-ins.
PLACEHOLDERS = ("net", "x", "y", "names", "lstm_net", "encoder_net", "series", "my_reshape_transform",
                "dataset", "DataLoader", "torch", "gradattr", "torchvision", "loader", "writer", "model",
                "ids", "mask", "vqa", "image", "question", "answer", "pad_id")


def _placeholders() -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1000)).eval()
    x = torch.rand(1, 3, 224, 224)
    names = [f"class {i}" for i in range(1000)]
    names[281] = "tabby"

    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, s):
            return self.fc(self.rnn(s.transpose(1, 2))[0][:, -1])

    class EncoderNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 8)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
                                                                        dropout=0.0), 1,
                                             enable_nested_tensor=False)
            self.fc = nn.Linear(8, 2)

        def forward(self, s):
            return self.fc(self.enc(self.proj(s.transpose(1, 2))).mean(1))

    class TextNet(nn.Module):  # a text model: token ids -> embeddings -> a class, with a mask
        def __init__(self):
            super().__init__()
            self.embeddings, self.fc = nn.Embedding(30, 8), nn.Linear(8, 2)

        def forward(self, ids, attention_mask=None):
            e = self.embeddings(ids)
            return self.fc(e.mean(1) if attention_mask is None else (e * attention_mask[..., None]).mean(1))

    class VQA(nn.Module):  # an image and a question -> an answer
        def __init__(self):
            super().__init__()
            self.vision = nn.Sequential()
            self.vision.add_module("layer4", nn.Conv2d(3, 4, 3, padding=1))
            self.vision.add_module("relu", nn.ReLU())
            self.text = nn.Module()
            self.text.embedding = nn.Embedding(30, 4)
            self.fc = nn.Linear(8, 3)

        def forward(self, image, question):
            v = self.vision(image).mean((2, 3))
            return self.fc(torch.cat([v, self.text.embedding(question).mean(1)], 1))

    class Writer:  # TensorBoard's SummaryWriter, as far as the docs use it
        def add_image(self, tag, img, dataformats="CHW"):
            assert img.ndim == 3 and dataformats == "HWC"

    loader = DataLoader(TensorDataset(x.repeat(4, 1, 1, 1), torch.tensor([1, 2, 3, 4])), batch_size=2)
    return {"loader": loader, "writer": Writer(), "model": TextNet().eval(),
            "ids": torch.randint(1, 30, (1, 6)), "mask": torch.ones(1, 6), "vqa": VQA().eval(),
            "image": torch.rand(1, 3, 16, 16), "question": torch.randint(1, 30, (1, 5)), "answer": 1,
            "pad_id": 0,
            "net": net, "x": x, "y": torch.tensor([3]), "names": names, "lstm_net": LSTMNet().eval(),
            "encoder_net": EncoderNet().eval(), "series": torch.randn(2, 3, 40),
            "my_reshape_transform": lambda t: t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2),
            "dataset": TensorDataset(x.repeat(4, 1, 1, 1), torch.tensor([1, 2, 3, 4])),
            "DataLoader": DataLoader, "torch": torch,
            # what earlier blocks imported (the README reads top to bottom)
            "gradattr": gradattr, "torchvision": pytest.importorskip("torchvision")}


def test_readme_blocks_are_found_and_few_are_skipped():
    assert len(BLOCKS) >= 2
    assert sum(not run for _, _, run in BLOCKS) <= 1, [first for first, _, run in BLOCKS if not run]


@pytest.mark.parametrize("code", [
    pytest.param(code, id=first[:40], marks=() if first.startswith("import gradattr") else pytest.mark.slow)
    for first, code, run in BLOCKS if run])
def test_readme_block_runs_as_written(code, tmp_path, monkeypatch):
    """Each block runs with the README's placeholders (``net``, ``x``, ...) bound to small
    stand-ins, in an empty folder (blocks that write ``maps/`` write there)."""
    import warnings

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: empty maps are said, not an error here
        exec(compile(code, "README.md", "exec"), _placeholders())


# ------------------------------------------------------------ every code block of the docs site runs
DOCS = sorted((Path(__file__).resolve().parent.parent / "docs").glob("*.md"))


def _page_blocks(text: str) -> list[str]:
    """The runnable ```python blocks of a page, in order. Skipped: a block after a ``<!-- no-run: why
    -->`` line, and the gallery's ``--8<--`` includes of examples/ (tests/test_examples.py runs those)."""
    out = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[:m.start()].rstrip().splitlines()
        if (before and before[-1].strip().startswith("<!-- no-run")) or m.group(1).lstrip().startswith("--8<--"):
            continue
        out.append(m.group(1))
    return out


def test_docs_pages_skip_few_blocks():
    skipped = sum(p.read_text().count("<!-- no-run") for p in DOCS)
    assert skipped <= 3 and sum(len(_page_blocks(p.read_text())) for p in DOCS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in DOCS if _page_blocks(p.read_text())], ids=lambda p: p.name)
def test_docs_page_blocks_run_in_order(page, tmp_path, monkeypatch):
    """Every block of a site page runs, top to bottom in one namespace as a reader runs them,
    with the same stand-ins for the reader's own objects as the README's blocks."""
    import warnings

    monkeypatch.chdir(tmp_path)
    namespace = _placeholders()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for code in _page_blocks(page.read_text()):
            exec(compile(code, str(page), "exec"), namespace)
