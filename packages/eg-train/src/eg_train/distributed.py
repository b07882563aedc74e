"""torchrun environment, process group setup/teardown, per-rank seeding and small collectives."""

from __future__ import annotations

import atexit
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eg_train.errors import TrainError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool


_INFO: DistInfo | None = None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainError(f"environment variable {name}={raw!r} is not an integer") from None


def env_rank() -> int:
    """This process's global rank as torchrun sets it (RANK; 0 without torchrun)."""
    return _env_int("RANK", 0)


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's env (RANK, LOCAL_RANK, WORLD_SIZE) and init the process group once.

    nccl on CUDA, gloo on CPU. Without torchrun (WORLD_SIZE unset or 1) no group is created.
    Later calls return the first call's result. `device`: auto | cpu | cuda | cuda:N.
    """
    global _INFO
    if _INFO is not None:
        return _INFO
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device={device!r} but CUDA is not available; use cpu or auto")
        dev = torch.device(device if ":" in device else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise TrainError(f"device={device!r} is not auto, cpu, cuda or cuda:N")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        atexit.register(shutdown_distributed)
    _INFO = DistInfo(rank, local_rank, world_size, dev, rank == 0)
    return _INFO


def shutdown_distributed() -> None:
    """Destroy the process group if one exists; safe to call repeatedly."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """`model` in DistributedDataParallel when a process group with several ranks runs, else itself."""
    if not is_distributed():
        return model
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity without a process group)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if is_distributed():
        dist.barrier()
