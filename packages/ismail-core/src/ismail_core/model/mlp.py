"""Dense feed-forward layers: SwiGLU (DeepSeek/Llama) and GELU (GPT-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x); used for dense layers, routed experts and shared experts.

    Args: dim: model width; inter_dim: hidden width; bias: linear biases.
    """

    def __init__(self, dim: int, inter_dim: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=bias)  # gate
        self.w2 = nn.Linear(inter_dim, dim, bias=bias)  # down
        self.w3 = nn.Linear(dim, inter_dim, bias=bias)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluMLP(nn.Module):
    """GPT-2 feed-forward: fc -> GELU (tanh approximation, HF "gelu_new") -> proj."""

    def __init__(self, dim: int, inter_dim: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(dim, inter_dim, bias=bias)
        self.proj = nn.Linear(inter_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))
