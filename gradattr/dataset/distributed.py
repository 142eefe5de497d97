"""Several processes: the rank and world size (a process group made from torchrun's environment),
the barrier, every rank agreeing on a failure, and a parallel wrapper's module."""
from __future__ import annotations

import os

import torch

from ..errors import GradattrError


def unwrap_parallel(net):
    """A ``DistributedDataParallel`` (or ``DataParallel``) model -> the module it wraps.

    Explaining the wrapper would run its forward hooks and, in training mode, the
    gradient all-reduce of every backward; the wrapped module needs neither.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return net.module if isinstance(net, (DistributedDataParallel, DataParallel)) else net


def join_process_group() -> tuple[int, int, bool]:
    """``(rank, world_size, made_group)``; a group is made from torchrun's environment if none exists."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def agree(world: int, err: BaseException | None, out_dir: str = "out_dir") -> None:
    """Every rank raises if any rank failed (an all-reduce, so it is also a barrier); one process raises ``err``."""
    if world > 1:
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        failed = torch.zeros(world, dtype=torch.int32, device=device)
        failed[dist.get_rank()] = int(err is not None)
        dist.all_reduce(failed)
        ranks = failed.nonzero().flatten().tolist()
        if err is None and ranks:
            raise GradattrError(f"{out_dir}: rank(s) {ranks} refused the folder (their error says why); "
                                "this rank stopped with them")
    if err is not None:
        raise err


__all__ = ["unwrap_parallel", "join_process_group", "barrier", "agree"]
