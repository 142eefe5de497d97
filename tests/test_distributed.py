"""explain_dataset on 2 CPU processes (gloo, loopback): every sample once, same maps, resume."""
from __future__ import annotations

import fcntl
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_dataset import tiny_net
from torch.utils.data import DataLoader, TensorDataset

import gradattr
from gradattr.dataset import explain_dataset

N, BATCH = 37, 4  # 10 batches, the last of one sample: ranks get 5 batches each, 20 and 17 samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(root: Path):
    saved = torch.load(root / "data.pt", weights_only=True)
    net = tiny_net()
    net.load_state_dict(saved["net"])
    return net, TensorDataset(saved["x"], saved["y"])


def _worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    root = Path(root)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net, ds = _data(root)
        seen = {}
        try:  # the test holds rank 1's lock of this folder: both ranks refuse, neither waits for the other
            explain_dataset(net, DataLoader(ds, batch_size=BATCH), out_dir=root / "busy")
            seen["busy"] = "ran"
        except gradattr.GradattrError as err:
            seen["busy"] = str(err)
        for name in ("map", "resume"):  # a map-style DataLoader: each rank loads only its batches
            got = []
            report = explain_dataset(net, DataLoader(ds, batch_size=BATCH), target="label",
                                     out_dir=root / name, on_batch=lambda b, got=got: got.append(b.indices.tolist()))
            seen[name] = {"indices": got, "batches": report.batches, "skipped": report.skipped}
        # any iterable (here a generator, read by both ranks) and a DDP-wrapped model
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        gen = (ds.tensors[0][i:i + BATCH] for i in range(0, N, BATCH))
        report = explain_dataset(ddp, gen, target=1, out_dir=root / "iter")
        seen["iter"] = {"batches": report.batches, "samples": report.samples}
        (root / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_thread():
    """The workers run on one thread each; so does the reference (thread count changes float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # minutes of CPU in total with its neighbours; CI's second step runs it
def test_two_processes_equal_one_process_every_sample_once_and_resume(tmp_path, one_thread):
    torch.manual_seed(0)
    net = tiny_net()
    x, y = torch.randn(N, 2, 8, 8), torch.randint(0, 4, (N,))
    torch.save({"net": net.state_dict(), "x": x, "y": y}, tmp_path / "data.pt")
    ds = TensorDataset(x, y)

    # the single-process reference, and a run into "resume" killed after 3 of its 10 batches
    explain_dataset(net, DataLoader(ds, batch_size=BATCH), target="label", out_dir=tmp_path / "one")
    one = gradattr.load_maps(tmp_path / "one")

    def crash(b):
        if b.index == 2:
            raise KeyboardInterrupt("pre-empted")

    with pytest.raises(KeyboardInterrupt):
        explain_dataset(net, DataLoader(ds, batch_size=BATCH), target="label", out_dir=tmp_path / "resume",
                        on_batch=crash)
    with pytest.raises(gradattr.GradattrError, match=r"out_dir: .*unfinished run: re-run explain_dataset"):
        gradattr.load_maps(tmp_path / "resume")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resume").glob("maps_*.npy")}
    assert sorted(before) == ["maps_00000.npy", "maps_00001.npy", "maps_00002.npy"]

    (tmp_path / "busy").mkdir()
    with open(tmp_path / "busy" / ".gradattr-lock-rank001", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid of the test\n")
        held.flush()
        mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["busy"].startswith("out_dir: expected a folder that no other run is writing to, got "
                                       f"'{tmp_path / 'busy'}', locked by pid of the test (rank 1)")
    assert ranks[0]["busy"] == ("out_dir: rank(s) [1] refused the folder (their error says why); this rank "
                                "stopped with them")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".gradattr-lock-rank000",
                                                                    ".gradattr-lock-rank001"]

    # every sample explained exactly once, by the rank DistributedSampler-like batch split gives it
    done = [i for r in ranks for batch in r["map"]["indices"] for i in batch]
    assert sorted(done) == list(range(N))
    assert [b[0] for b in ranks[0]["map"]["indices"]] == [0, 8, 16, 24, 32]
    assert [b[0] for b in ranks[1]["map"]["indices"]] == [4, 12, 20, 28, 36]
    for name in ("map", "resume"):
        index = json.loads((tmp_path / name / "index.json").read_text())
        assert index["samples"] == N and [s["shard"] for s in index["shards"]] == list(range(10))
        got, order = gradattr.load_maps(tmp_path / name, return_indices=True)
        assert order.tolist() == list(range(N))
        np.testing.assert_array_equal(got, one)  # bit for bit: the same batches as one process
    # each rank wrote only its own shards and manifest
    for r in (0, 1):
        lines = (tmp_path / "map" / f"manifest-rank00{r}.jsonl").read_text().splitlines()
        assert [json.loads(line)["shard"] for line in lines] == list(range(r, 10, 2))

    # resume: the 3 finished shards were neither recomputed nor rewritten
    assert [r["resume"]["skipped"] for r in ranks] == [2, 1]  # shards 0, 2 (rank 0) and 1 (rank 1)
    assert [r["resume"]["batches"] for r in ranks] == [3, 4]
    assert {p: (tmp_path / "resume" / p).stat().st_mtime_ns for p in before} == before

    # the iterable split by batch index, through a DDP-wrapped model
    assert [r["iter"]["samples"] for r in ranks] == [20, 17]
    want = gradattr.grad_cam(net, x, 1).numpy()
    np.testing.assert_allclose(gradattr.load_maps(tmp_path / "iter"), want, rtol=1e-5, atol=1e-6)


def test_shuffling_loader_refused_when_split(monkeypatch):
    """A shuffling sampler would give each rank its own permutation: refused before any work."""
    from gradattr.dataset import run

    monkeypatch.setattr(run, "join_process_group", lambda: (0, 2, False))
    ds = TensorDataset(torch.randn(5, 2, 8, 8))
    with pytest.raises(gradattr.GradattrError, match=r"batches: expected a DataLoader with shuffle=False .*"
                                                     r"got a RandomSampler"):
        explain_dataset(tiny_net(), DataLoader(ds, batch_size=2, shuffle=True))
