"""Data parallelism across processes started by `torchrun`, kept out of the loop's way.

Each rank meta-trains on its share of the meta-batch and the meta-gradients are summed by
hand after backward. `DDP(MAML(model))` is *not* used: its hooks do not see learn2learn's
clones, so gradients silently stay unsynchronised. Without torchrun
(`WORLD_SIZE` unset) every helper here is a no-op for a world of one process.

A worker that freezes (SIGSTOP, a hung filesystem) would hold the others in a collective for
torch's default 30 minutes: `trainer.collective_timeout_s` bounds that, after which each
waiting worker stops with `WorkerLost` (exit 75, docs/faults.md); the last checkpoint resumes.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from metalearn.errors import ConfigError, WorkerLost


@dataclass
class World:
    rank: int = 0
    size: int = 1
    comm_device: torch.device = torch.device("cpu")  # NCCL only moves CUDA tensors
    timeout_s: float = 300.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's [lo, hi) of n items; sizes differ by at most one."""
        if n < self.size:
            raise ConfigError(f"{n} tasks cannot be split over {self.size} processes: raise "
                              f"trainer.meta_batch_size to at least {self.size} or use fewer")
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (returns a tensor on t's device)."""
        if self.size == 1:
            return t
        buf = t.to(self.comm_device)
        with self._collective("all_reduce"):
            dist.all_reduce(buf)
        return buf.to(t.device)

    def sum_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one flat all-reduce.

        The loop scales each rank's loss by 1/(global meta-batch), so the sum is exactly the
        mean over all tasks even when ranks hold different numbers of tasks ("all-reduce, then
        divide by world size" is the same for equal shares)."""
        if self.size == 1:
            return
        params = list(params)
        for p in params:
            if p.grad is None:  # every rank must contribute the same layout
                p.grad = torch.zeros_like(p)
        flat = self.sum(torch.cat([p.grad.reshape(-1) for p in params]))
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank (picklable objects)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        with self._collective("all_gather"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank, in place."""
        if self.size == 1:
            return
        for t in module.state_dict().values():
            buf = t.to(self.comm_device)
            with self._collective("broadcast"):
                dist.broadcast(buf, 0)
            t.copy_(buf)

    def barrier(self) -> None:
        if self.size > 1:
            with self._collective("barrier"):
                dist.barrier()

    @contextmanager
    def _collective(self, name: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:  # gloo: timeout, or the peer's socket closed when it died
            raise WorkerLost(
                f"rank {self.rank}: {name} did not complete within "
                f"trainer.collective_timeout_s={self.timeout_s:g} s or a peer died ({str(e).splitlines()[0][:160]}); another "
                f"worker froze or failed. The last checkpoint is kept: run the same command with "
                f"resume=auto") from e


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available: use device=auto or cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def setup(device_name: str, timeout_s: float = 300.0) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment (if any); pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if size == 1:
        return World(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(),
                 device if backend == "nccl" else torch.device("cpu"), timeout_s), device


def teardown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
