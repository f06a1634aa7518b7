"""Process groups and model wrapping for torchrun: DDP, or FSDP2 (`fully_shard`) per block.

Single-process runs go through the same functions, which then do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist

from ismail_core.runtime import DeviceError, resolve_device
from ismail_core.train.config import ConfigError, DistSection


@dataclass
class DistInfo:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else mps (Apple's GPU) when it is,
    else cpu; a ConfigError for a device that is unknown or unusable here."""
    try:
        return resolve_device(name, flag="--train.device", local_rank=local_rank)
    except DeviceError as exc:
        raise ConfigError(f"train.device={name!r}: {exc}") from None


def init_distributed(cfg: DistSection, device_name: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "mps":
        # A Mac has one Apple GPU, and neither NCCL nor gloo moves MPS tensors.
        raise ConfigError(
            f"distributed training (WORLD_SIZE={world}) does not run on mps: run one process "
            "(without torchrun), or use --train.device cpu"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over processes in place (no-op for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap_model(model: torch.nn.Module, info: DistInfo, strategy: str) -> torch.nn.Module:
    """Wrap for data parallelism: DDP, or FSDP2 sharding each block and then the root.

    DDP runs with find_unused_parameters because a routed expert that receives no token in a
    micro-batch gets no gradient, and without broadcast_buffers so that each rank keeps its own
    expert-load counts until the trainer sums them (the gate biases then update identically).
    """
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = model.layers
        assert isinstance(layers, torch.nn.ModuleList), "a Transformer: blocks in .layers"
        for block in layers:
            fully_shard(block)
        fully_shard(model)
        return model
    moe = any(True for _ in getattr(model, "moe_layers", list)())
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=moe,
        broadcast_buffers=False,
    )


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded with FSDP2's fully_shard."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return False
    return isinstance(model, FSDPModule)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The complete, unsharded model state dict on CPU (every rank must call it under FSDP)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        # typed as any state value; a model's full state dict holds tensors
        return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=opts))
    from ismail_core.checkpoint import unwrap_model

    return unwrap_model(model).state_dict()


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state in a form that loads back into the same model layout."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=opts)
    return optimizer.state_dict()


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Inverse of full_optimizer_state."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_optimizer_state_dict(model, optimizer, state, options=opts)
    else:
        optimizer.load_state_dict(state)
