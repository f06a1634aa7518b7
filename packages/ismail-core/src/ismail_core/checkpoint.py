"""Checkpoint directories: the contract between training, generation, export and serving.

A checkpoint directory holds
    config.json          the ModelConfig
    model.safetensors    the weights (a plain state_dict; tied tensors stored once; the
                         fingerprint of the tokenizer they were saved with in the metadata)
    tokenizer/           the tokenizer that produced the training data (and, after
                         `ismail finetune`, its chat template)
    trainer_state.pt     optimizer, schedule, step, RNG and data position (resume only)

A LoRA fine-tuning checkpoint holds `adapter/` (PEFT's format, naming its base checkpoint)
instead of model.safetensors, or beside merged weights; loaders apply it to the base.
A classifier (`ismail finetune --task classify`) also holds `classifier.json` (its labels);
`load_model` builds a TransformerClassifier for it, and the commands that need a language
model refuse it (`require_language_model`).

It is written into a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint. A run directory keeps its checkpoints under `checkpoints/` with
symlinks `latest` and `best`; every loader here accepts a run directory, a `checkpoints/`
folder or a checkpoint directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ismail_core.atomic import atomic_dir
from ismail_core.corpus.shards import tokenizer_info
from ismail_core.errors import IsmailError
from ismail_core.fp8 import FP8UnavailableError, is_fp8_state_dict, load_fp8_weights
from ismail_core.layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CLASSIFIER_FILE,
    CONFIG_FILE,
    LATEST,
    TOKENIZER_DIR,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
)
from ismail_core.runtime import resolve_device
from ismail_core.tokenizer import Tokenizer, TokenizerError, describe_fingerprint, load_tokenizer

if TYPE_CHECKING:
    from ismail_core.model import Transformer

# safetensors metadata key listing state-dict entries that share storage with another entry
# (tied embedding / LM head): {"alias": "stored name"}.
_ALIASES_KEY = "ismail.aliases"
# safetensors metadata key holding `tokenizer_info` of the tokenizer the weights were saved with,
# so a tokenizer/ replaced later is caught at load time (the header is read without the tensors).
_TOKENIZER_KEY = "ismail.tokenizer"


class CheckpointError(IsmailError, RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file."""


def resolve_checkpoint(path: str | Path) -> Path:
    """Return the checkpoint directory for a checkpoint, `checkpoints/` folder or run directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: pass a checkpoint directory (with {CONFIG_FILE}) or a run "
            "directory written by `ismail train`"
        )
    if (path / CONFIG_FILE).is_file():
        return path
    for pointer in (path / LATEST, path / CHECKPOINTS_DIR / LATEST):
        if pointer.exists():
            return pointer.resolve()
    if path.is_dir() and (path / CHECKPOINTS_DIR).is_dir() or path.name == CHECKPOINTS_DIR:
        raise CheckpointError(f"{path} has no checkpoint yet (no {CHECKPOINTS_DIR}/{LATEST})")
    raise CheckpointError(
        f"{path} is not a checkpoint: it has no {CONFIG_FILE} and no {CHECKPOINTS_DIR}/{LATEST}"
    )


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a state dict into tensors with distinct storage and aliases of the rest.

    safetensors refuses tensors that share memory (a tied embedding and LM head), so each
    storage is written once and the other names are recorded as aliases.
    """
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        offset = int(tensor.storage_offset())
        key = (tensor.untyped_storage().data_ptr(), offset, tuple(tensor.shape))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor.detach().to("cpu").contiguous()
    return unique, aliases


def save_weights(
    state: dict[str, torch.Tensor], path: Path, tokenizer: Tokenizer | None = None
) -> None:
    """Write a state dict as safetensors, storing tied tensors once.

    With `tokenizer`, its fingerprint and vocabulary size are recorded for `check_tokenizer`.
    """
    from safetensors.torch import save_file

    unique, aliases = _unique_tensors(state)
    metadata = {_ALIASES_KEY: json.dumps(aliases)}
    if tokenizer is not None:
        metadata[_TOKENIZER_KEY] = json.dumps(tokenizer_info(tokenizer))
    save_file(unique, str(path), metadata=metadata)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict written by `save_weights` (aliases restored)."""
    return _read_weights(path)[0]


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with aliases restored, safetensors metadata) of a weights file."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from exc
    for alias, name in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        state[alias] = state[name]
    return state, metadata


def model_config(model: torch.nn.Module) -> Any:
    """The ModelConfig of a model, looking through DDP / torch.compile wrappers."""
    return unwrap_model(model).cfg


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        compiled = getattr(model, "_orig_mod", None)
        if isinstance(compiled, torch.nn.Module):
            model = compiled
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    trainer_state: dict[str, Any] | None = None,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapter: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    `state_dict` overrides `model.state_dict()` (the trainer passes the full, gathered state
    under FSDP); the model is still needed for its config. `adapter(dir)` writes a LoRA
    adapter into `adapter/`; then the weights are written only when `state_dict` is given
    (merged weights). A model with `checkpoint_files()` ({name: text}, a classifier's label
    mapping) gets those files written too.
    """
    directory = Path(directory)
    if state_dict is None and adapter is None:
        state_dict = unwrap_model(model).state_dict()
    with atomic_dir(directory) as tmp:
        model_config(model).save(tmp / CONFIG_FILE)
        if state_dict is not None:
            save_weights(state_dict, tmp / WEIGHTS_FILE, tokenizer)
        if adapter is not None:
            (tmp / ADAPTER_DIR).mkdir()
            adapter(tmp / ADAPTER_DIR)
        tokenizer.save(tmp / TOKENIZER_DIR)
        for name, text in getattr(unwrap_model(model), "checkpoint_files", dict)().items():
            (tmp / name).write_text(text, encoding="utf-8")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    return directory


def load_config(path: str | Path) -> Any:
    """The ModelConfig stored in a checkpoint (or run) directory."""
    from ismail_core.config import ModelConfig

    directory = resolve_checkpoint(path)
    try:
        return ModelConfig.load(directory / CONFIG_FILE)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        file = directory / CONFIG_FILE
        if is_hf_config(file):
            raise CheckpointError(
                f"{directory} is a Hugging Face transformers folder, not an ismail checkpoint: "
                f"import it first with `ismail import {directory} OUT`"
            ) from exc
        raise CheckpointError(f"{file} is not a valid model config: {exc}") from exc


def is_hf_config(config_file: Path) -> bool:
    """Whether a config.json is a transformers config: it names a model_type (an ismail
    checkpoint's config.json is a ModelConfig, which has none)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def load_checkpoint_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved in a checkpoint (or run) directory."""
    directory = resolve_checkpoint(path)
    try:
        return load_tokenizer(directory / TOKENIZER_DIR)
    except TokenizerError as exc:
        raise CheckpointError(f"{directory / TOKENIZER_DIR}: {exc}") from exc


def check_tokenizer(
    directory: Path, config: Any, tokenizer: Tokenizer, recorded: dict[str, Any] | None
) -> None:
    """Raise CheckpointError when the checkpoint's tokenizer cannot drive its model.

    A tokenizer with more ids than the model has embedding rows crashes generation on the
    first such id; a smaller one is fine (vocabularies are padded for speed, and the server
    masks the padding). `recorded` is the `tokenizer_info` saved with the weights (None in
    checkpoints written before it was recorded): another fingerprint means the ids mean
    other tokens than the model learned.
    """
    tok_dir = directory / TOKENIZER_DIR
    fix = (
        f"put the tokenizer the model was trained with (the tokenizer/ folder of its data "
        f"directory) into {tok_dir}"
    )
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{tok_dir} has {tokenizer.vocab_size} tokens but the model in {directory} has "
            f"{config.vocab_size} (vocab_size in {CONFIG_FILE}): its ids from "
            f"{config.vocab_size} on have no embedding; {fix}"
        )
    if recorded and recorded.get("fingerprint") != tokenizer.fingerprint:
        raise CheckpointError(
            f"{tok_dir} is tokenizer {describe_fingerprint(tokenizer.fingerprint)} but the "
            f"weights in {directory} were saved with tokenizer "
            f"{describe_fingerprint(str(recorded.get('fingerprint')))}: the ids would mean other "
            f"tokens; {fix}"
        )


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Transformer, Tokenizer]:
    """Load (model, tokenizer) from a checkpoint or run directory, in eval mode.

    `device` defaults to CPU; `dtype` converts floating-point weights (default: as stored).
    Raises CheckpointError for a missing or corrupt file and for a tokenizer that does not
    match the weights (`check_tokenizer`), DeviceError for a device this machine lacks.
    """
    from ismail_core.model import Transformer

    target = resolve_device(device)  # before minutes of reading weights
    directory = resolve_checkpoint(path)
    if is_adapter_only(directory):
        merged = _load_with_adapter(directory)
        return _place(merged, target, dtype), load_checkpoint_tokenizer(directory)
    config = load_config(directory)
    tokenizer = load_checkpoint_tokenizer(directory)
    state, metadata = _read_weights(directory / WEIGHTS_FILE)
    recorded = metadata.get(_TOKENIZER_KEY)
    check_tokenizer(directory, config, tokenizer, json.loads(recorded) if recorded else None)
    if is_classifier(directory):
        from ismail_core.classify.model import TransformerClassifier, read_info

        model: Transformer = TransformerClassifier(config, read_info(directory))
    else:
        model = Transformer(config)
    if is_fp8_state_dict(state):
        try:
            load_fp8_weights(model, state)
        except FP8UnavailableError:
            raise
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE} holds FP8 weights that do not match its config: {exc}"
            ) from exc
        return _place(model, target, dtype), tokenizer
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not match its config: {exc}"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not match {directory / CONFIG_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return _place(model, target, dtype or _stored_dtype(state)), tokenizer


def _load_with_adapter(directory: Path) -> Transformer:
    """The model of a checkpoint that holds only a LoRA adapter: its base model with the
    adapter merged in (and a classifier's saved head)."""
    if is_classifier(directory):
        from ismail_core.classify.model import load_lora_classifier

        return load_lora_classifier(directory, merge=True)
    from ismail_core.finetune.lora import load_with_adapter

    return load_with_adapter(directory, merge=True)


def _stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The dtype of a state dict's floating-point weights (that of the embedding): a model is
    built in float32, and loading bf16 weights into it would otherwise double their size."""
    embed = state.get("embed.weight")
    return embed.dtype if embed is not None and embed.is_floating_point() else None


def is_classifier(path: str | Path) -> bool:
    """Whether a checkpoint (or run) directory holds a text classifier (`classifier.json`);
    False for anything that is no checkpoint."""
    try:
        return (resolve_checkpoint(path) / CLASSIFIER_FILE).is_file()
    except CheckpointError:
        return False


def require_language_model(path: str | Path, command: str) -> None:
    """Raise CheckpointError when `path` is a classifier, which `command` cannot use."""
    if is_classifier(path):
        raise CheckpointError(
            f"{path} is a text classifier, not a language model, so `ismail {command}` cannot "
            f"use it; classify texts with `ismail classify {path} --text TEXT` (or evaluate it "
            f"with `ismail eval {path} --data FILE`)"
        )


def is_adapter_only(directory: Path) -> bool:
    """Whether a checkpoint holds a LoRA adapter and no weights of its own."""
    return (directory / ADAPTER_DIR).is_dir() and not (directory / WEIGHTS_FILE).exists()


def _place(model: Transformer, device: torch.device, dtype: torch.dtype | None) -> Transformer:
    """Move a loaded model to its device and dtype, in eval mode (FP8 weights keep float8)."""
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def load_trainer_state(path: str | Path) -> dict[str, Any] | None:
    """The resume state of a checkpoint, or None when it was saved without one."""
    file = resolve_checkpoint(path) / TRAINER_STATE_FILE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors on a truncated file
        raise CheckpointError(f"{file} is corrupt or truncated ({exc})") from exc
