"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (or constant)."""

from __future__ import annotations

import math

import torch

from ismail_core.train.config import OptimSection


def lr_at(step: int, total_steps: int, cfg: OptimSection) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate: `lr` times the group's `lr_scale` (its
    peak over optim.lr; 1 unless the optimizer set one, as Muon's group does).

    The schedule is a pure function of the step, so resuming needs only the step number: no
    scheduler object has to be saved or kept in sync.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
