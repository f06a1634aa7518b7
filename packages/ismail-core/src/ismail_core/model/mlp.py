"""Dense feed-forward layers: SwiGLU (DeepSeek/Llama) and GELU (GPT-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x); used for dense layers, routed experts and shared experts.

    The gate (w1) and up (w3) projections are stored stacked as one linear, w13, so both run
    as a single matmul. Args: dim: model width; inter_dim: hidden width; bias: linear biases.
    """

    def __init__(self, dim: int, inter_dim: int, bias: bool = False):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * inter_dim, bias=bias)  # [gate; up]
        self.w2 = nn.Linear(inter_dim, dim, bias=bias)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """GPT-2 feed-forward: fc -> GELU (tanh approximation, HF "gelu_new") -> proj."""

    def __init__(self, dim: int, inter_dim: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(dim, inter_dim, bias=bias)
        self.proj = nn.Linear(inter_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))
