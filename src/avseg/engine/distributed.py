"""One process or many (torchrun): process-group setup, rank helpers and the epoch sampler.

The same code path serves 1 process and ``torchrun --nproc_per_node=N``: every helper degrades to the
single-process answer when no process group is initialised, so callers never branch on world size.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when launched as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str = "cpu", timeout_minutes: float = 30.0) -> bool:
    """Initialise the default process group from torchrun's RANK / WORLD_SIZE / LOCAL_RANK.

    gloo on CPU, nccl on CUDA. Idempotent; a no-op for a plain single process. Returns whether a
    multi-process group is active. The timeout is generous because evaluation runs on rank 0 only while
    the other ranks wait.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if env_world_size() <= 1:
        return False
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={env_world_size()} but {var} is not set: launch with torchrun")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        # Bind this process to its GPU before NCCL creates its communicator.
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("process group: backend=%s rank=%d world_size=%d", backend, rank(), world_size())
    return world_size() > 1


def cleanup() -> None:
    """Destroy the process group (call once at the end of the program, not between stages)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over processes (a new tensor; the input is untouched)."""
    out = tensor.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def all_reduce_max(tensor: Tensor) -> Tensor:
    out = tensor.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; our own data only)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``model`` when several processes run, else return it unchanged."""
    if not is_dist():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


class EpochSampler(Sampler[int]):
    """Seeded, resumable sampler: a permutation of ``seed + epoch`` sharded over ranks.

    The order equals ``DistributedSampler(shuffle=True, drop_last=False)``: the permutation is padded by
    repetition to a multiple of the world size and rank ``r`` takes every ``world_size``-th index from
    ``r``. With a per-process batch of ``global_batch / world_size`` the union of the ranks' i-th batches
    is ``perm[i*global_batch:(i+1)*global_batch]`` for any world size, so one process and N processes
    see the same global batches. ``set_start`` skips the already consumed indices of a resumed epoch
    without loading them.
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("EpochSampler: the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} outside world size {world_size}")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.num_samples = math.ceil(size / world_size)  # per rank, including padding
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's shard (resuming mid-epoch)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"EpochSampler: start {start} outside 0..{self.num_samples}")
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.world_size
        while len(order) < total:  # pad by repetition so every rank gets the same count
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
