"""torch.distributed for torchrun: process group from the environment, model wrapping, small collectives.

Launch with `torchrun --nproc_per_node=N -m linformer_pt.cli.train ...` (add --nnodes/--rdzv-* for several
nodes), or on Slurm with `hydra/launcher=slurm`. NCCL is used on GPUs, gloo on CPUs. Rank 0 alone writes logs
and checkpoints. Restarts, timeouts and the shared-folder check live in training/elastic.py.
"""
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Sequence

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_from_env() -> DistributedInfo:
    """Rank and world size as torchrun sets them, or as submitit does on Slurm; a single process otherwise."""
    if "RANK" not in os.environ and "SUBMITIT_EXECUTOR" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        import submitit  # present whenever the submitit launcher started this process

        submitit.helpers.TorchDistributedEnvironment().export()  # sets RANK, WORLD_SIZE, MASTER_ADDR, ...
    return DistributedInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> DistributedInfo:
    """Join the process group torchrun describes (if any); CUDA devices are chosen by local rank.

    A collective that waits longer than `timeout_minutes` for another process raises instead of hanging.
    """
    info = world_from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        from linformer_pt.training.elastic import init_process_group  # elastic.py uses this module's collectives

        init_process_group(backend, info.rank, info.world_size, timedelta(minutes=timeout_minutes))
    return info


def local_device(device: torch.device, info: DistributedInfo) -> torch.device:
    """One GPU per process: cuda -> cuda:<local_rank> under torchrun."""
    if device.type == "cuda" and device.index is None and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def wrap_model(model: nn.Module, info: DistributedInfo, backend: str = "ddp") -> nn.Module:
    """DDP or FSDP2 around `model` when there are several processes; the model itself otherwise."""
    if not info.enabled:
        return model
    device = model_device(model)
    if backend == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6 kept FSDP2 under a private name
            from torch.distributed._composable.fsdp import fully_shard

        from linformer_pt.modules.encoder import EncoderLayer

        mesh = init_device_mesh(device.type, (info.world_size,))
        # One unit per encoder layer (gathered just before it runs, freed after), the rest (embeddings, tied LM
        # head, a layerwise-shared projection) in the root unit.
        for module in model.modules():
            if isinstance(module, EncoderLayer):
                fully_shard(module, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    # Every parameter gets a gradient in every step (shared projections are registered once), so DDP's default
    # find_unused_parameters=False is right and saves a graph traversal per step.
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    """Sum a few numbers over all processes (identity in a single process)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(value: Any) -> List[Any]:
    """Every process's `value`, in rank order ([value] in a single process)."""
    if not dist.is_initialized():
        return [value]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
