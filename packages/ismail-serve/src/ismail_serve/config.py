"""`ServeConfig`: every setting of `ismail-serve`, with its default and help text, in one place.

The command line is generated from it (`add_serve_flags`): a field becomes `--field-name`
(or the `flag` its metadata names), its default the flag's default, its metadata's `help`,
`choices` and `metavar` the flag's. A bool defaulting to False is a switch (`--protect-metrics`),
one defaulting to True has a `--no-` form (`--no-enable-prefix-caching`). The engine and the
classifier worker take their defaults from here too.

This module imports nothing heavy (no torch, no FastAPI), so `ismail-serve --help` is quick.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ismail_serve.limits import DEFAULT_MAX_REQUEST_BYTES

# The environment variable read for the API key when --api-key is not given.
API_KEY_ENV = "ISMAIL_API_KEY"


def option(help: str | None, default: Any = MISSING, **flag: Any) -> Any:
    """A ServeConfig field: its default, its help text and how its flag is spelled (`flag`,
    `choices`, `metavar`, `positional`)."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class ServeConfig:
    """Everything `ismail-serve` is configured with (see `ismail-serve --help`)."""

    checkpoint: str = option(
        "checkpoint directory (or a run directory: uses its latest)", positional=True
    )
    host: str = option("address to listen on", "127.0.0.1")
    port: int = option("port to listen on", 8000)
    model_name: str | None = option(
        "model name clients must send (default: the checkpoint directory's name)",
        None,
        flag="--served-model-name",
    )
    api_key: str | None = option(
        f"require 'Authorization: Bearer KEY' on /v1 routes (if not given: ${API_KEY_ENV})", None
    )
    protect_metrics: bool = option(
        "with an API key, require it on /metrics, /openapi.json, /docs and /redoc too "
        "(by default, as in vLLM, the key covers the API routes only; /health is always open)",
        False,
    )
    max_request_bytes: int = option(
        "largest request body accepted; larger ones get 413 before they are read",
        DEFAULT_MAX_REQUEST_BYTES,
        metavar="BYTES",
    )
    device: str = option(
        "auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps", "auto"
    )
    dtype: str = option(
        "weights and KV-cache dtype (auto: bfloat16 where the device runs it natively, "
        "else float16 on a GPU, else float32)",
        "auto",
        choices=["auto", "float32", "bfloat16", "float16"],
    )
    quantize: str | None = option(
        "quantize Linear weights to block-scaled FP8 through ismail-kernels (Triton on "
        "FP8 GPUs, a PyTorch reference elsewhere)",
        None,
        choices=["fp8"],
    )
    max_batch: int = option(
        "sequences run at once, as the KV cache allows (a classifier: texts per forward pass)",
        16,
    )
    max_model_len: int | None = option(
        "tokens per sequence, prompt + output (a classifier: tokens read of each text; "
        "default: the model's max_seq_len)",
        None,
    )
    kv_cache_memory_mib: float | None = option(
        "KV-cache size (default: room for --max-batch sequences of --max-model-len)",
        None,
        flag="--kv-cache-memory",
        metavar="MIB",
    )
    block_size: int = option(
        "tokens per KV-cache block (the unit of allocation and of prefix reuse)", 16
    )
    enable_prefix_caching: bool = option(
        "reuse the cached blocks of a prompt prefix seen before (on by default)", True
    )
    max_waiting: int = option(
        "sequences (a classifier: texts) that may wait; beyond that requests get 429", 256
    )
    prefill_chunk: int = option("prompt tokens prefilled per engine step (chunked prefill)", 512)
    # None (no limit) is what the flag's 0 becomes (see cli.main)
    request_timeout: float | None = option(
        "seconds a request may run before it is ended (0: no limit)", 600.0
    )
    drain_timeout: float = option(
        "seconds to let running requests finish after SIGTERM/SIGINT", 30.0
    )
    compare_tokenizer: str | None = option(
        "a tokenizer (e.g. a plain BPE tokenizer.json) the tokenizer playground shows "
        "side by side with the model's",
        None,
        metavar="PATH",
    )
    log_level: str = option(None, "info", choices=["debug", "info", "warning", "error"])

    @property
    def served_name(self) -> str:
        """The model name clients send: --served-model-name, else the checkpoint's name."""
        return self.model_name or Path(self.checkpoint).resolve().name


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One argument of `parser` for every ServeConfig field, in field order."""
    hints = typing.get_type_hints(ServeConfig)
    for f in fields(ServeConfig):
        meta = dict(f.metadata)
        if meta.pop("positional", False):
            parser.add_argument(f.name, help=meta["help"])
            continue
        name = meta.pop("flag", "--" + f.name.replace("_", "-"))
        parser.add_argument(name, dest=f.name, default=f.default, **meta, **_kind(f, hints))


def _kind(f: Field[Any], hints: dict[str, Any]) -> dict[str, Any]:
    """How argparse reads a field's value: a switch for a bool, else its (non-None) type;
    str needs no conversion."""
    kind = hints[f.name]
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction if f.default else "store_true"}
    if isinstance(kind, types.UnionType):  # `int | None`: the flag takes an int
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return {} if kind is str else {"type": kind}
