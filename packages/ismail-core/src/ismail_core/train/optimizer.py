"""AdamW with weight-decay groups, or bitsandbytes' 8-bit AdamW."""

from __future__ import annotations

import torch

from ismail_core.train.config import OptimSection


class OptimizerError(RuntimeError):
    """The requested optimizer cannot run here (missing package, no CUDA)."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear and embedding weights); never decay biases, norms or gate biases.

    Only parameters trainable now are included: a frozen base under LoRA gets no optimizer
    state. Expert rotation freezes experts only after the optimizer is built, so it sees
    them all; AdamW skips parameters whose grad is None and keeps no state for them.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, cfg: OptimSection, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name`, over `model`'s parameters."""
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if cfg.name == "adamw":
        # The fused kernel exists for CUDA only; foreach is the fast path on CPU.
        fused = device.type == "cuda"
        return torch.optim.AdamW(groups, fused=fused, **kwargs)
    if cfg.name == "adamw8bit":
        if device.type != "cuda":
            raise OptimizerError(
                "optim.name=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit optimizer states "
                f"live on the GPU); use --optim.name adamw on {device.type}"
            )
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise OptimizerError(
                "optim.name=adamw8bit needs bitsandbytes: install ismail-core[bnb] "
                "(`uv pip install 'ismail-core[bnb]'`) or use --optim.name adamw"
            ) from exc
        return bnb.optim.AdamW8bit(groups, **kwargs)
    raise OptimizerError(f"unknown optimizer {cfg.name!r}; use adamw or adamw8bit")
