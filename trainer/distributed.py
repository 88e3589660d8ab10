"""Data-parallel training under Hugging Face accelerate, the way users launch sd-scripts.

`accelerate launch --multi_gpu -m curate train ...` (or torchrun) starts one process per
device; each sets WORLD_SIZE/RANK. accelerate's PartialState joins them (NCCL on GPUs, gloo on
CPUs). Every rank builds the same network from the same seed and plans the same epoch; rank r
takes every W-th batch of it, so one optimiser step sees W batches. Gradients are averaged
across ranks by hand after backward (as sd-scripts' `all_reduce_network` does), because the
adapter is patched into the UNet rather than called as a module, which DDP's wrapper expects.
Identical gradients and identical optimiser state keep the ranks' weights identical; only rank 0
writes files. A single process never imports accelerate.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the process's device when launched by accelerate

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for param in params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad /= self.world

    def mean(self, value: float, device: torch.device) -> float:
        """The value averaged over ranks (each rank logs the same loss)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (a Ctrl-C seen by one process stops all)."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def gather(self, value: str) -> list[str]:
        """Every rank's value, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return [str(v) for v in out]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group in step with the others (a rank that exits while another
        still tears gloo down can abort it)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def launched_world_size() -> int:
    """How many processes a launcher (accelerate, torchrun, mpirun) started, 1 when none."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def init_distributed() -> Dist:
    """Join the launched processes; a plain run is rank 0 of 1."""
    if launched_world_size() <= 1:
        return Dist()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Dist(state.process_index, state.num_processes, state.device)


def rank_batches(batches: list[T], dist: Dist) -> list[T]:
    """This rank's share of an epoch: batches r, r+W, ...; the last round wraps around to the
    start so every rank takes as many steps (accelerate's even_batches does the same)."""
    count = -(-len(batches) // dist.world)
    return [batches[(i * dist.world + dist.rank) % len(batches)] for i in range(count)]
