"""Rotary position embedding with YaRN context extension (DeepSeek-V3 convention).

Rotation acts on interleaved pairs (x0, x1), (x2, x3), ... as DeepSeek-V3's complex RoPE does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN attention temperature: 0.1 * mscale * ln(factor) + 1 (1 when not extending)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(
    dim: int,
    theta: float,
    factor: float = 1.0,
    original_len: int = 4096,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> torch.Tensor:
    """Inverse frequencies (dim // 2,) of RoPE, blended with YaRN interpolation when factor > 1.

    Dimensions rotating more than beta_fast times over original_len keep their frequency, those
    rotating fewer than beta_slow times are divided by factor, with a linear ramp in between.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if factor <= 1.0:
        return inv_freq

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high: float = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 = extrapolate (high frequency), 0 = interpolate
    return inv_freq / factor * (1 - keep) + inv_freq * keep


class RotaryEmbedding(nn.Module):
    """Computes cos/sin tables for arbitrary (per-row) positions.

    Args: cfg: model config (rope_theta and the YaRN fields); dim: rotated size per head.
    """

    inv_freq: torch.Tensor  # a buffer (see __init__)

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        inv_freq = yarn_inv_freq(
            dim,
            cfg.rope_theta,
            cfg.rope_factor,
            cfg.yarn_original_len,
            cfg.beta_fast,
            cfg.beta_slow,
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (T,) or (B, T) integer tensor -> cos, sin of shape (..., T, dim // 2)."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, T, H, D) by cos/sin of shape (T, D/2) or (B, T, D/2)."""
    cos = cos.unsqueeze(-2)  # broadcast over heads
    sin = sin.unsqueeze(-2)
    xf = x.float()
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)
    return out.flatten(-2).to(x.dtype)
