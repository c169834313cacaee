"""Data-parallel building blocks of the plugin trainer (``distributed_workers`` > 0, inside a torch process group).

The process group itself is started by a launcher (:mod:`recbole_ext.distributed`, on Ray Train); here is what each
worker's trainer does inside it: its rank, the per-worker batch and learning rate, the loss wrapped for
``DistributedDataParallel``, its shard of every global batch, and the decisions and results rank 0 makes for all.
Outside a process group every function is the single-process identity.
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def scale(config) -> None:
    """Per-worker batch and learning rate from ``distributed_batch`` / ``lr_scaling`` (in place, before the data)."""
    n = config["distributed_workers"]
    if config["distributed_batch"] == "per_worker":
        config["train_batch_size"] = config["train_batch_size"] * n
    config["learning_rate"] = config["learning_rate"] * {"none": 1, "linear": n, "sqrt": math.sqrt(n)}[
        config["lr_scaling"]]


class LossOf(nn.Module):
    """DDP runs ``forward``: here it is the model's ``calculate_loss``, so the averaging hooks see every step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        return self.model.calculate_loss(interaction)


def wrap(model: nn.Module, config) -> nn.parallel.DistributedDataParallel | None:
    """The model's loss under ``DistributedDataParallel`` when the run is distributed and a process group runs;
    None otherwise (the trainer then trains as one process)."""
    if not (config["distributed_workers"] and dist.is_initialized()):
        return None
    device = torch.device(config["device"])
    return nn.parallel.DistributedDataParallel(
        LossOf(model), device_ids=[device.index or 0] if device.type == "cuda" else None,
        find_unused_parameters=True)  # e.g. TiMiRec's predictor sits out its pretrain stage


class Shard:
    """The wrapped train loader's global batches, each cut to this worker's rows (rank, rank + N, ...). A last batch
    with fewer rows than workers is dropped on every worker alike (each must take the same number of steps)."""

    def __init__(self, loader, rank: int, size: int):
        self.loader, self.rank, self.size = loader, rank, size
        self.rows = 0  # rows this worker trained on in the last pass

    def __iter__(self):
        self.rows = 0
        for batch in self.loader:
            if len(batch) < self.size:
                continue
            part = batch[self.rank::self.size]
            self.rows += len(part)
            yield part

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def mean_loss(loss: float | tuple[float, ...], size: int) -> float | tuple[float, ...]:
    """The epoch loss (one value or a tuple of losses) averaged over the ``size`` workers, as one process logs it."""
    values = torch.tensor(loss if isinstance(loss, tuple) else [loss], dtype=torch.float64)
    dist.all_reduce(values)
    values = (values / size).tolist()
    return tuple(values) if isinstance(loss, tuple) else values[0]


def agreed(flag: bool) -> bool:
    """Rank 0's ``flag`` on every worker (a clock-based decision must not differ between workers)."""
    value = torch.tensor([int(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


def from_rank0(compute: Callable[[], T], rank: int) -> T:
    """``compute()`` on rank 0 alone, its result sent to every worker (e.g. rank 0 evaluates the whole valid set)."""
    payload = [compute() if rank == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def broadcast_model(model: nn.Module) -> None:
    """Rank 0's parameters and buffers to every worker (after rank 0 alone loaded a checkpoint)."""
    if world()[1] > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
