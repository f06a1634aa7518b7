"""Training configuration: dataclass sections, config files and dotted flag overrides.

The resolved configuration is: defaults <- config file (JSON or YAML) <- flags such as
`--optim.lr 1e-3` or `--model.dim 384`. Model fields come from `ModelConfig.preset(preset)`
with `model` overrides on top. Unknown keys anywhere give an error naming the closest key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ismail_core.config import ModelConfig
from ismail_core.errors import IsmailError


class ConfigError(IsmailError, ValueError):
    """A bad training configuration (unknown key, wrong type, impossible value)."""


def doc_field(text: str, **kw: Any) -> Any:
    """A dataclass field whose help text `ismail train --help` shows."""
    return field(metadata={"help": text}, **kw)


@dataclass
class RunSection:
    out_dir: str = doc_field(
        "run directory (checkpoints, metrics, config); empty = runs/PRESET", default=""
    )
    seed: int = doc_field("seed for initialisation, data order and dropout", default=1234)
    resume: str = doc_field(
        "'auto' continues from OUT_DIR's latest checkpoint if there is one, 'never' refuses "
        "to reuse a run directory that has checkpoints, or a checkpoint path",
        default="auto",
    )


@dataclass
class DataSection:
    path: str = doc_field("tokenized data directory (from `ismail data`)", default="data/builtin")
    source: str = doc_field(
        "text source used to create DATA.PATH when it does not exist yet", default="builtin"
    )
    tokenizer: str = doc_field("tokenizer used to create DATA.PATH when needed", default="tr")


@dataclass
class TrainSection:
    steps: int = doc_field("optimizer steps", default=200)
    batch_size: int = doc_field("sequences per micro-batch (per process)", default=8)
    grad_accum: int = doc_field("micro-batches per optimizer step", default=1)
    batch_tokens: int = doc_field(
        "tokens per optimizer step over all processes; sets grad_accum to the nearest "
        "multiple of batch_size x seq_len x processes (0 = use grad_accum)",
        default=0,
    )
    seq_len: int = doc_field("tokens per sequence (0 = the model's max_seq_len)", default=0)
    device: str = doc_field(
        "'auto' (cuda:<local rank> if available, else mps (Apple's GPU) if available, else "
        "cpu), 'cpu', 'cuda', 'cuda:1', 'mps'",
        default="auto",
    )
    precision: str = doc_field(
        "auto (bf16 where the device runs it natively, else fp16 on a GPU, else fp32), fp32, "
        "bf16, fp16 (with a grad scaler) or fp8 (ismail-kernels)",
        default="auto",
    )
    compile: bool = doc_field("wrap the model in torch.compile", default=False)
    activation_checkpointing: bool = doc_field(
        "recompute block activations in backward", default=False
    )
    expert_rotation: int = doc_field(
        "train only this many routed experts at a time, rotating (0 = all experts)", default=0
    )
    rotation_interval: int = doc_field("optimizer steps between expert rotations", default=50)
    threads: int = doc_field("CPU threads for torch (0 = torch's default)", default=0)


@dataclass
class OptimSection:
    # Muon by default: on the main job it reached AdamW's final validation bits per byte in
    # 0.61x the steps, and on ismail-512 it was ahead at every evaluation (bench/RESULTS.md).
    name: str = doc_field(
        "muon (Muon for the blocks' matrices, AdamW for the rest; not with FSDP); adamw; "
        "galore_adamw (needs ismail-core[galore]); adamw8bit (bitsandbytes, CUDA only)",
        default="muon",
    )
    lr: float = doc_field("peak learning rate (AdamW's; all of it but optim.muon_lr)", default=3e-3)
    min_lr: float = doc_field("learning-rate floor reached at the end of the cosine", default=3e-4)
    warmup_steps: int = doc_field("linear warm-up steps", default=20)
    schedule: str = doc_field("cosine or constant (after warm-up)", default="cosine")
    weight_decay: float = doc_field("AdamW weight decay (matrices only)", default=0.1)
    beta1: float = doc_field("AdamW beta1", default=0.9)
    beta2: float = doc_field("AdamW beta2", default=0.95)
    eps: float = doc_field("AdamW epsilon", default=1e-8)
    grad_clip: float = doc_field("clip the global gradient norm (0 = off)", default=1.0)
    muon_lr: float = doc_field(
        "Muon's peak learning rate (RMS-matched to AdamW's update size; the schedule scales "
        "it with optim.lr)",
        default=3e-3,
    )
    muon_momentum: float = doc_field("Muon's Nesterov momentum", default=0.95)
    galore_rank: int = doc_field(
        "GaLore's projection rank (dim / 4 in the paper; 64 is that for tiny and puts "
        "ismail-512's optimizer state near a third of AdamW's)",
        default=64,
    )
    galore_update_interval: int = doc_field(
        "optimizer steps between GaLore's projection updates (an SVD per matrix)", default=200
    )
    galore_scale: float = doc_field("GaLore's update scale", default=0.25)


@dataclass
class EvalSection:
    interval: int = doc_field("evaluate every N steps (0 = only at the end)", default=40)
    max_tokens: int = doc_field("validation tokens per evaluation (0 = the whole split)", default=0)
    batch_size: int = doc_field("sequences per evaluation batch", default=8)


@dataclass
class CheckpointSection:
    interval: int = doc_field("save every N steps (0 = only at the end)", default=100)
    keep_last: int = doc_field("keep this many recent checkpoints (plus the best)", default=2)


@dataclass
class LogSection:
    interval: int = doc_field("write a metrics line every N steps", default=5)
    progress: bool = doc_field("show a progress bar", default=True)
    tensorboard: bool = doc_field("also log to TensorBoard (OUT_DIR/tensorboard)", default=False)
    wandb: bool = doc_field("also log to Weights & Biases", default=False)
    wandb_project: str = doc_field("W&B project", default="ismail")
    wandb_mode: str = doc_field("W&B mode: online or offline", default="offline")
    sample_tokens: int = doc_field("tokens of the sample printed at the end (0 = none)", default=48)


@dataclass
class DistSection:
    strategy: str = doc_field("ddp or fsdp (FSDP2) when launched with torchrun", default="ddp")
    backend: str = doc_field("'auto' (nccl on CUDA, gloo on CPU), nccl or gloo", default="auto")


@dataclass
class TrainConfig:
    """Everything `ismail train` needs; saved as OUT_DIR/train_config.json."""

    preset: str = doc_field(
        "model preset (tiny, ismail-512, ismail-1024, gpt2-124m)", default="tiny"
    )
    model: dict[str, Any] = doc_field("ModelConfig overrides", default_factory=dict)
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    dist: DistSection = field(default_factory=DistSection)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The ModelConfig: preset, then `model` overrides; vocab_size from the tokenizer
        unless set explicitly."""
        overrides = dict(self.model)
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        try:
            return ModelConfig.preset(self.preset, **overrides)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ConfigError for impossible values."""
        check_sections(self)
        # Check the preset and model overrides now, before any data is prepared.
        self.model_config()

    def finish(self) -> None:
        """Fill defaults that depend on other fields (the run directory names the preset)."""
        if not self.run.out_dir:
            self.run.out_dir = f"runs/{self.preset}"


def check_sections(cfg: Any) -> None:
    """Raise ConfigError for impossible values in the sections training and fine-tuning share
    (train, optim, checkpoint, log, dist)."""
    t, o = cfg.train, cfg.optim
    checks = [
        (t.steps > 0, "train.steps must be positive"),
        (t.batch_size > 0, "train.batch_size must be positive"),
        (t.grad_accum > 0, "train.grad_accum must be positive"),
        (t.batch_tokens >= 0, "train.batch_tokens must be >= 0"),
        (t.seq_len >= 0, "train.seq_len must be >= 0"),
        (t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}"),
        (o.name in OPTIMIZERS, f"optim.name must be one of {OPTIMIZERS}"),
        (o.schedule in ("cosine", "constant"), "optim.schedule must be cosine or constant"),
        (o.lr > 0 and 0 <= o.min_lr <= o.lr, "need optim.lr > 0 and 0 <= optim.min_lr <= lr"),
        (o.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (o.muon_lr > 0 and 0 <= o.muon_momentum < 1, "need optim.muon_lr > 0, momentum in [0, 1)"),
        (o.galore_rank > 0, "optim.galore_rank must be positive"),
        (o.galore_update_interval > 0, "optim.galore_update_interval must be positive"),
        (cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1"),
        (cfg.dist.strategy in ("ddp", "fsdp"), "dist.strategy must be ddp or fsdp"),
        (cfg.log.interval > 0, "log.interval must be positive"),
        (t.expert_rotation >= 0, "train.expert_rotation must be >= 0"),
        (t.rotation_interval > 0, "train.rotation_interval must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp8")
OPTIMIZERS = ("adamw", "muon", "galore_adamw", "adamw8bit")


def option_fields(config_cls: type = TrainConfig) -> dict[str, tuple[type, str, Any]]:
    """Every dotted option of a config class: key -> (type, help, default). TrainConfig's
    include `preset` and `model.<ModelConfig field>`."""
    options: dict[str, tuple[type, str, Any]] = {}
    defaults = config_cls()
    for f in fields(config_cls):
        if f.name == "preset":
            options["preset"] = (str, f.metadata["help"], f.default)
        section = getattr(defaults, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        hints = typing.get_type_hints(type(section))
        for sf in fields(section):
            options[f"{f.name}.{sf.name}"] = (
                hints[sf.name],
                sf.metadata.get("help", ""),
                getattr(section, sf.name),
            )
    if any(f.name == "model" for f in fields(config_cls)):
        hints = typing.get_type_hints(ModelConfig)
        for f in fields(ModelConfig):
            options[f"model.{f.name}"] = (hints[f.name], f"ModelConfig.{f.name}", None)
    return options


def closest_key(key: str, known: list[str], prefix: str = "") -> str:
    """' (did you mean X?)' for the closest known key (shown as prefix + key), or ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def coerce(value: Any, kind: Any, key: str) -> Any:
    """Convert a flag or file value to the field's type (bool, int, float, str, optionals)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = args[0]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value else int(value)
        if kind is float:
            number = float(value)
            # inf passes validate()'s range checks (nan fails them only by accident) and
            # would reach metrics.jsonl as Infinity, which is not JSON.
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return number
        if kind is str:
            return str(value)
    except ConfigError:  # already says what is wrong (it is a ValueError too)
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None
    return value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}; `model` keeps one level (its field names)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML training config into a flat {dotted key: value} dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            tree = yaml.safe_load(text) or {}
        else:
            tree = json.loads(text)
    except Exception as exc:  # not UTF-8, or yaml/json errors (different types): a broken file
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(tree).__name__}")
    return flatten(tree)


def build_config(*layers: dict[str, Any], config_cls: type = TrainConfig) -> Any:
    """Apply flat {dotted key: value} layers, in order, on top of `config_cls`'s defaults."""
    options = option_fields(config_cls)
    cfg = config_cls()
    for layer in layers:
        for key, value in layer.items():
            if key not in options:
                raise ConfigError(f"unknown config key {key!r}{closest_key(key, list(options))}")
            kind = options[key][0]
            value = coerce(value, kind, key)
            if key == "preset":
                cfg.preset = value
            elif key.startswith("model."):
                cfg.model[key.split(".", 1)[1]] = value
            else:
                section, name = key.split(".", 1)
                setattr(getattr(cfg, section), name, value)
    cfg.finish()
    cfg.validate()
    return cfg
