"""FP8 checkpoints through the optional ismail-kernels package (`ismail-core[fp8]`).

An FP8 checkpoint is an ordinary checkpoint directory whose model.safetensors stores the
quantized Linear layers as float8_e4m3fn weights plus `<layer>.weight_scale_inv` block scales,
DeepSeek-V3's naming. `ismail export --format fp8 CKPT OUT` writes one; `load_model` reads it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from ismail_core.errors import IsmailError

SCALE_SUFFIX = ".weight_scale_inv"


class FP8UnavailableError(IsmailError, RuntimeError):
    """FP8 was asked for but ismail-kernels is not installed."""


def require_kernels(purpose: str) -> ModuleType:
    """Import ismail_kernels, or say how to install it for `purpose`."""
    try:
        import ismail_kernels
    except ImportError as exc:
        raise FP8UnavailableError(
            f"{purpose} needs ismail-kernels: install it with `pip install 'ismail-core[fp8]'`"
        ) from exc
    return ismail_kernels


def is_fp8_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True when the state dict holds block-scaled FP8 Linear weights.

    Same test as ismail_kernels.is_fp8_state_dict, kept here so that loading an ordinary
    checkpoint does not need the optional ismail-kernels package.
    """
    return any(key.endswith(SCALE_SUFFIX) for key in state)


def load_fp8_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Turn the Linear layers that have FP8 weights in `state` into FP8Linear and load `state`."""
    kernels = require_kernels("this checkpoint stores FP8 weights and loading it")
    return kernels.load_fp8_state_dict(model, state, strict=True)


def quantize_checkpoint(src: str | Path, out: str | Path) -> Path:
    """Write a copy of checkpoint `src` at `out` with FP8 Linear weights (atomically).

    Embeddings, norms, routers and the LM head keep their precision (ismail-kernels' defaults).
    The copy holds no trainer state: it is for inference.
    """
    from ismail_core.checkpoint import CheckpointError, load_model, save_checkpoint

    kernels = require_kernels("ismail export --format fp8")
    model, tokenizer = load_model(src)
    if is_fp8_state_dict(model.state_dict()):
        raise CheckpointError(f"{src} already holds FP8 weights; export its source instead")
    kernels.quantize_model(model)
    return save_checkpoint(out, model, tokenizer)
