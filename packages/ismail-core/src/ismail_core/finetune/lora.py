"""LoRA through `peft`: adapters injected into ismail's model, saved in PEFT's format.

`peft.inject_adapter_in_model` works on any torch module, so ismail's Transformer gets peft's
own LoRA layers (no hand-written low-rank code). An adapter directory holds what
`PeftModel.save_pretrained` writes (`adapter_config.json`, `adapter_model.safetensors` with
ismail's module names) plus `ismail_adapter.json`, which names the target layers, the base
checkpoint and a fingerprint of its weights, so an adapter is never applied to another base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ismail_core.atomic import atomic_write_json
from ismail_core.errors import IsmailError
from ismail_core.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_INFO_FILE,
    ADAPTER_WEIGHTS,
    WEIGHTS_FILE,
)
from ismail_core.model import Transformer

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class LoraError(IsmailError, ValueError):
    """A LoRA setting or adapter that cannot be used; the message says what to change."""


@dataclass
class LoraSettings:
    """Rank, scale, dropout and target layer names (last names of linear layers inside the
    blocks, such as "wkv_b" or "w13"). No targets means every linear layer of the blocks:
    attention and feed-forward (dense, routed and shared experts), as "LoRA without regret"
    recommends. The MoE router is no linear layer and stays frozen: LoRA on it would change
    which experts tokens reach."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()

    def peft_config(self) -> Any:
        """The peft LoraConfig: `targets` matched as the last name of modules in `layers.N`."""
        peft = _peft()
        names = "|".join(re.escape(t) for t in self.targets)
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=rf"layers\.\d+\.(.*\.)?({names})",
        )


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise LoraError(
            "LoRA needs peft: install ismail-core[lora] (`uv pip install 'ismail-core[lora]'`)"
        ) from exc
    return peft


def add_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Inject fresh LoRA layers into `model` and freeze everything else; returns the names of
    the adapted modules. Empty targets are resolved (in `settings`) to all linear layers.
    Raises LoraError for a target that matches no module."""
    known = _linear_names(model)
    unknown = [t for t in settings.targets if t not in known]
    if unknown:
        raise LoraError(
            f"LoRA targets {unknown} match no linear layer of this model; its layers are "
            f"{', '.join(sorted(known))} (set --lora.targets to some of them, or leave it "
            "empty for all)"
        )
    settings.targets = settings.targets or tuple(sorted(known))
    _peft().inject_adapter_in_model(settings.peft_config(), model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})


def _linear_names(model: nn.Module) -> set[str]:
    """Last names of the linear layers inside the blocks ("wq_a", "w13", ...)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("layers.")
    }


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights under PEFT's saved names ("layers.0.attn.wq.lora_A.weight")."""
    return _peft().get_peft_model_state_dict(model)


def save_adapter(model: nn.Module, settings: LoraSettings, directory: Path, base: Path) -> None:
    """Write the adapter of `model` into `directory` (which must exist) in PEFT's format."""
    from safetensors.torch import save_file

    config = settings.peft_config()
    config.base_model_name_or_path = str(base.resolve())
    config.save_pretrained(str(directory))
    state = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    info = {
        "base": str(base.resolve()),
        "base_fingerprint": weights_fingerprint(base),
        "targets": list(settings.targets),
    }
    atomic_write_json(directory / ADAPTER_INFO_FILE, info)


def _info(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / ADAPTER_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraError(f"{directory / ADAPTER_INFO_FILE} is missing or corrupt ({exc})") from exc


def read_settings(directory: Path) -> LoraSettings:
    """The LoraSettings an adapter directory was saved with."""
    try:
        raw = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        return LoraSettings(
            rank=int(raw["r"]),
            alpha=float(raw["lora_alpha"]),
            dropout=float(raw.get("lora_dropout", 0.0)),
            targets=tuple(_info(directory)["targets"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoraError(
            f"{directory} does not hold a LoRA adapter saved by ismail ({exc})"
        ) from exc


def base_of(directory: Path) -> Path:
    """The base checkpoint an adapter was trained on (its recorded path)."""
    try:
        return Path(_info(directory)["base"])
    except (KeyError, TypeError) as exc:
        raise LoraError(f"{directory / ADAPTER_INFO_FILE} does not name a base checkpoint") from exc


def check_base(directory: Path, base: Path) -> None:
    """Raise LoraError unless `base` holds the weights the adapter in `directory` was made for."""
    recorded = _info(directory).get("base_fingerprint")
    actual = weights_fingerprint(base)
    if recorded != actual:
        raise LoraError(
            f"the adapter in {directory} was trained on base weights {recorded}, but {base} "
            f"holds weights {actual}: apply it to the base checkpoint it was made for "
            f"({_info(directory).get('base')})"
        )


def load_adapter(model: nn.Module, directory: Path) -> LoraSettings:
    """Inject the adapter saved in `directory` into `model` and load its weights."""
    from safetensors.torch import load_file

    settings = read_settings(directory)
    add_lora(model, settings)
    try:
        state = load_file(str(directory / ADAPTER_WEIGHTS))
    except Exception as exc:  # safetensors' own error types for missing/truncated files
        raise LoraError(f"{directory / ADAPTER_WEIGHTS} is missing or corrupt ({exc})") from exc
    result = _peft().set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise LoraError(
            f"{directory / ADAPTER_WEIGHTS} does not fit this model: unexpected "
            f"{sorted(result.unexpected_keys)[:3]}"
        )
    return settings


def merge_lora(model: ModuleT) -> ModuleT:
    """Fold every LoRA layer into its base linear (W + scale * B A) and remove the adapter
    modules, leaving a plain model with merged weights."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def weights_fingerprint(checkpoint: Path) -> str:
    """A fingerprint of a checkpoint's weights file: its size, safetensors header and 64
    sampled 4 KiB blocks (two trainings of the same shape differ everywhere, and reading a
    multi-gigabyte file whole on every load would be slow)."""
    from ismail_core.checkpoint import resolve_checkpoint

    file = resolve_checkpoint(checkpoint) / WEIGHTS_FILE
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        digest.update(f.read(min(header_len, size)))
        for i in range(64):
            f.seek(size * i // 64)
            digest.update(f.read(4096))
    return digest.hexdigest()[:16]


def load_with_adapter(checkpoint: Path, merge: bool = True) -> Transformer:
    """The model of a LoRA checkpoint: its base checkpoint's model with the adapter applied,
    merged into the weights (or kept as LoRA layers with merge=False, for training)."""
    model = load_base(checkpoint)
    load_adapter(model, checkpoint / ADAPTER_DIR)
    return merge_lora(model) if merge else model


def load_base(checkpoint: Path) -> Transformer:
    """The base model a LoRA checkpoint's adapter was trained on, once checked to be present
    and to be that base (weights fingerprint, config and tokenizer)."""
    from ismail_core.checkpoint import (
        load_checkpoint_tokenizer,
        load_config,
        load_model,
    )

    adapter_dir = checkpoint / ADAPTER_DIR
    base = base_of(adapter_dir)
    if not base.exists():
        raise LoraError(
            f"{checkpoint} is a LoRA adapter for the base checkpoint {base}, which is missing: "
            "restore it there, or fine-tune with --finetune.merge true to write weights that "
            "stand alone"
        )
    check_base(adapter_dir, base)
    model, base_tokenizer = load_model(base)
    tokenizer = load_checkpoint_tokenizer(checkpoint)
    if load_config(checkpoint) != model.cfg or tokenizer.fingerprint != base_tokenizer.fingerprint:
        raise LoraError(
            f"{checkpoint} does not match its base {base} (model config or tokenizer differ); "
            "the checkpoint was edited by hand: fine-tune again"
        )
    return model


# Layers whose weight matrix the model reads directly instead of calling them: MLA's cached
# decoding folds wkv_b into the query and output ("absorbed" attention).
DIRECTLY_READ = (".wkv_b",)


@contextlib.contextmanager
def merged_adapters(model: nn.Module) -> Iterator[None]:
    """Fold LoRA into the weights the model reads directly (DIRECTLY_READ) for the duration of
    the block, so cached decoding sees the adapter; the exact weights are put back after (an
    unmerge would leave rounding errors that break exact resume)."""
    layers = [
        module
        for name, module in model.named_modules()
        if name.endswith(DIRECTLY_READ)
        and hasattr(module, "lora_A")
        and type(module.get_base_layer()) is nn.Linear  # not a 4-bit base
    ]
    saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        for layer, weight in zip(layers, saved):
            layer.merged_adapters.clear()
            layer.get_base_layer().weight.data.copy_(weight)


@contextlib.contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[None]:
    """Run the model as its base for the duration of the block (peft's adapter switch, so no
    second copy of the weights): DPO's reference model under LoRA."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def quantize_base(model: nn.Module, device: torch.device) -> None:
    """QLoRA: replace the blocks' linear layers by bitsandbytes 4-bit NF4 layers (double
    quantization, bf16 compute), which quantize their weights when moved to the GPU.

    MLA's wkv_b stays in full precision: cached decoding reads its weight matrix directly
    (the absorbed attention), which a packed 4-bit tensor cannot serve; it is small.
    """
    if device.type != "cuda":
        raise LoraError(
            f"QLoRA needs a CUDA GPU (bitsandbytes' 4-bit layers), not {device}; use "
            "--finetune.method lora here"
        )
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise LoraError(
            "QLoRA needs bitsandbytes: install ismail-core[bnb] (`uv pip install "
            "'ismail-core[bnb]'`) or use --finetune.method lora"
        ) from exc
    for name, module in list(model.named_modules()):
        if (
            type(module) is not nn.Linear
            or not name.startswith("layers.")
            or name.endswith(".wkv_b")
        ):
            continue
        quantized = bnb.nn.Linear4bit(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            compute_dtype=torch.bfloat16,
            compress_statistics=True,
            quant_type="nf4",
        )
        quantized.weight = bnb.nn.Params4bit(
            module.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if module.bias is not None:
            quantized.bias = module.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, quantized)
