"""FP8 through the optional ismail-kernels package (`ismail-core[fp8]`).

An FP8 checkpoint is an ordinary checkpoint directory whose model.safetensors stores the
quantized Linear layers as float8_e4m3fn weights plus `<layer>.weight_scale_inv` block scales,
DeepSeek-V3's naming. `load_model` reads one through `load_fp8_weights`; `ismail export
--format fp8` writes one (`ismail_core.fp8_export`). FP8 training converts the model with
`fp8_config()` too, so both keep the same layers in high precision.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ismail_core.errors import IsmailError

if TYPE_CHECKING:
    from ismail_kernels import FP8Config

SCALE_SUFFIX = ".weight_scale_inv"
# Linear layers of ismail's Transformer that FP8 leaves in high precision (ismail-kernels keeps
# embeddings, norms and tied weights by itself): the LM head, whose logits FP8 rounding would
# disturb, and MLA's wkv_b, whose matrix the absorbed decode path reads directly. The MoE
# router (`gate`) holds a plain weight, not a Linear, so it is never converted.
FP8_SKIP_NAMES = ("head", "wkv_b")


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


def fp8_config(block_size: int | None = None) -> FP8Config:
    """ismail-kernels' FP8Config for ismail's Transformer: FP8_SKIP_NAMES stay in high
    precision; `block_size` defaults to ismail-kernels' (128)."""
    kernels = require_kernels("FP8")
    if block_size is None:
        return kernels.FP8Config(skip_names=FP8_SKIP_NAMES)
    return kernels.FP8Config(block_size=block_size, skip_names=FP8_SKIP_NAMES)


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
