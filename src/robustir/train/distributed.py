"""Multi-GPU / multi-node training through torchrun + DistributedDataParallel; single-process by default.

`torchrun --nproc_per_node 4 -m robustir.cli train CONFIG.yaml` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
same command trains in one process. Data sharding is done by the sampler (each rank takes an interleaved slice of every
step's sample ids, as DistributedSampler does), so the global batch and the samples do not depend on the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from robustir.errors import RobustirError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, logs and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """The device for `preference` (auto | cpu | cuda); auto takes CUDA when present."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RobustirError("train.device: 'cuda' was requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launch_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun set them; (0, 1, 0) when not launched by torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(preference: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun (NCCL on CUDA, Gloo on CPU), else single process."""
    rank, world, local = launch_ranks()
    device = pick_device(preference, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around `model` when distributed, else `model` itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op single-process)."""
    if info.distributed:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over processes (for logging)."""
    if not info.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / info.world_size


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
