"""Mixed precision: autocast context, gradient scaler, FP8 conversion through ismail-kernels."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ismail_core.fp8 import fp8_config
from ismail_core.runtime import PrecisionError, resolve_precision


@dataclass
class Precision:
    """How forward passes run: `autocast()` context and an optional grad scaler (fp16)."""

    name: str
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler for fp16

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in under `autocast()` (fp8 layers aside)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}.get(
            self.name, torch.float32
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.compute_dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def build_precision(name: str, device: torch.device) -> Precision:
    """Precision for `name` (auto, fp32, bf16, fp16, fp8) on `device`, as the device policy
    (`ismail_core.runtime.resolve_precision`) resolves and checks it; fp16 gets a scaler."""
    name = resolve_precision(name, device)
    if name == "fp16":
        return Precision(name, device, torch.amp.GradScaler(device.type))
    # fp8 off a GPU runs ismail-kernels' PyTorch reference path: exact FP8 numerics, emulated
    # (slow), which is what CI can test.
    return Precision(name, device)


def fp8_converter() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """ismail-kernels' function that swaps a model's linear layers for FP8 training ones
    (FP8 forward, straight-through backward; the state dict keeps high-precision weights).
    The layers `fp8_config` names, and those whose input size is not a multiple of its block
    size (128), stay in bf16."""
    try:
        import ismail_kernels
    except ImportError as exc:
        raise PrecisionError(
            "train.precision=fp8 needs ismail-kernels: install ismail-core[fp8]"
        ) from exc
    return functools.partial(ismail_kernels.convert_to_fp8_training, config=fp8_config())
