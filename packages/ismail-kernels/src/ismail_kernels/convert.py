"""Whole-model conversion: quantize for FP8 inference, convert for FP8 training, load FP8 weights.

Which Linear layers convert is decided by `FP8Config`: layers under a skipped module type (by
default embeddings, norms and nn.MultiheadAttention) or a skipped name (none by default: the
caller names its model's layers, e.g. an LM head, that must keep their precision) stay in high
precision, as do layers whose in_features is not a multiple of the block size and layers whose
weight is shared with another module (tied embeddings).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

import torch
from torch import nn

from .formats import DEFAULT_BLOCK_SIZE
from .linear import FP8Linear, FP8TrainLinear
from .ops import _expected_weight_scale_shape

SCALE_SUFFIX = "weight_scale_inv"
DEFAULT_SKIP_TYPES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.MultiheadAttention,  # reads out_proj.weight itself
)
# Exactly these classes convert: other nn.Linear subclasses may read .weight directly.
_CONVERTIBLE_TYPES = (nn.Linear, FP8TrainLinear)


def _convertible(module: nn.Module) -> TypeGuard[nn.Linear]:
    """True for a module of exactly one of _CONVERTIBLE_TYPES (both are nn.Linear)."""
    return type(module) in _CONVERTIBLE_TYPES


@dataclass
class FP8Config:
    """Which layers become FP8 and how they are quantized.

    block_size: quantization block (1 x bs for activations, bs x bs for weights); a power of two
        >= 16. scale_fmt: None or "ue8m0" (power-of-two activation scales).
    skip_names: fnmatch patterns for module names to keep in high precision, matched against
        the full dotted name and each of its components (the whole subtree of a match is
        kept); none by default. skip_types: module classes whose subtrees are kept.
    """

    block_size: int = DEFAULT_BLOCK_SIZE
    scale_fmt: str | None = None
    skip_names: tuple[str, ...] = ()
    skip_types: tuple[type[nn.Module], ...] = field(default=DEFAULT_SKIP_TYPES)

    def skips_name(self, name: str) -> bool:
        """True if a module's dotted name (or any component of it) matches a skip pattern."""
        parts = (name, *name.split("."))
        return any(fnmatch.fnmatchcase(p, pat) for p in parts for pat in self.skip_names)


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    """ids of Parameters reachable from more than one module (tied weights)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {pid for pid, count in owners.items() if count > 1}


def _convertible_linears(
    model: nn.Module, config: FP8Config
) -> Iterator[tuple[str, nn.Module, str, nn.Linear]]:
    """(name, parent, attribute, layer) for each Linear to convert; warns about shape/tie skips."""
    shared = _shared_parameter_ids(model)
    bad_shape, tied = [], []

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, str, nn.Linear]]:
        for attr, child in module.named_children():
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(child, config.skip_types) or config.skips_name(name):
                continue
            if not _convertible(child):
                yield from walk(child, name)
            elif child.in_features % config.block_size:
                bad_shape.append(name)
            elif id(child.weight) in shared:
                tied.append(name)
            else:
                yield name, module, attr, child

    yield from walk(model, "")
    if bad_shape:
        warnings.warn(
            f"kept {len(bad_shape)} Linear layer(s) in high precision because in_features is not "
            f"a multiple of block_size={config.block_size}: {', '.join(bad_shape)}",
            stacklevel=3,
        )
    if tied:
        warnings.warn(
            f"kept {len(tied)} Linear layer(s) with tied weights in high precision: "
            f"{', '.join(tied)}",
            stacklevel=3,
        )


@torch.no_grad()
def quantize_model(
    model: nn.Module, config: FP8Config | None = None, backend: str = "auto"
) -> nn.Module:
    """Replace the model's Linear layers by FP8Linear (in place) and return the model.

    Weights are quantized on their current device. The resulting state_dict is the FP8 format:
    `<layer>.weight` in float8_e4m3fn and `<layer>.weight_scale_inv` in float32.
    """
    config = config or FP8Config()
    for _, parent, attr, linear in list(_convertible_linears(model, config)):
        layer = FP8Linear.from_linear(linear, config.block_size, config.scale_fmt, backend)
        setattr(parent, attr, layer)
    return model


def convert_to_fp8_training(model: nn.Module, config: FP8Config | None = None) -> nn.Module:
    """Replace the model's Linear layers by FP8TrainLinear (in place) and return the model.

    The new layers share the original Parameter objects, so an optimizer built before or after
    the call trains the same tensors; the state dict is unchanged (plain high-precision weights).
    """
    config = config or FP8Config()
    for _, parent, attr, linear in list(_convertible_linears(model, config)):
        layer = FP8TrainLinear.from_linear(linear, config.block_size, config.scale_fmt)
        setattr(parent, attr, layer)
    return model


def is_fp8_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if the state dict holds block-quantized FP8 weights (any `*.weight_scale_inv`)."""
    return any(key.endswith(SCALE_SUFFIX) for key in state_dict)


def fp8_quantization_config(config: FP8Config | None = None) -> dict:
    """The `quantization_config` entry DeepSeek-V3 / Hugging Face put in config.json."""
    config = config or FP8Config()
    entry = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [config.block_size, config.block_size],
    }
    if config.scale_fmt is not None:
        entry["scale_fmt"] = config.scale_fmt
    return entry


def _block_size_from_shapes(name: str, weight_shape: torch.Size, scale_shape: torch.Size) -> int:
    _, cols = weight_shape
    if len(scale_shape) != 2 or scale_shape[1] == 0 or cols % scale_shape[1]:
        raise ValueError(
            f"{name}.{SCALE_SUFFIX} has shape {tuple(scale_shape)}, which is not a block-scale "
            f"grid for a weight of shape {tuple(weight_shape)}"
        )
    block_size = cols // scale_shape[1]
    if tuple(scale_shape) != _expected_weight_scale_shape(weight_shape, block_size):
        raise ValueError(
            f"{name}: weight {tuple(weight_shape)} and scales {tuple(scale_shape)} disagree on "
            f"the block size ({block_size} from the columns)"
        )
    return block_size


def load_fp8_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    scale_fmt: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load an FP8 state dict into a freshly built (high-precision) model and return it.

    Each `<layer>.weight_scale_inv` key turns the nn.Linear named `<layer>` into an FP8Linear
    whose block size is inferred from the weight and scale shapes; then the whole state dict is
    loaded with `load_state_dict(strict=strict)`. Layers already FP8Linear are loaded as is.
    scale_fmt sets the activation scale format of the rebuilt layers.
    """
    for key in state_dict:
        if not key.endswith("." + SCALE_SUFFIX):
            continue
        name = key.removesuffix("." + SCALE_SUFFIX)
        try:
            layer = model.get_submodule(name)
        except AttributeError as err:
            raise KeyError(f"{key}: the model has no module named {name!r}") from err
        if isinstance(layer, FP8Linear):
            continue
        if not _convertible(layer):
            raise TypeError(f"{key}: {name!r} is a {type(layer).__name__}, not an nn.Linear")
        weight = state_dict.get(f"{name}.weight")
        if weight is None:
            raise KeyError(f"{key} has no matching {name}.weight in the state dict")
        if tuple(weight.shape) != (layer.out_features, layer.in_features):
            raise ValueError(
                f"{name}.weight has shape {tuple(weight.shape)} but the model's layer is "
                f"({layer.out_features}, {layer.in_features})"
            )
        block_size = _block_size_from_shapes(name, weight.shape, state_dict[key].shape)
        parent_name, _, attr = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name),
            attr,
            FP8Linear.shaped_like(layer, block_size, scale_fmt),
        )
    model.load_state_dict(state_dict, strict=strict)
    return model
