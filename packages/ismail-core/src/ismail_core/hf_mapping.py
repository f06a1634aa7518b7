"""How a Hugging Face architecture table is read, in both directions.

An architecture (hf_tables.py) is two tables. Its weight table has one `WeightRow` per kind of
parameter: the ismail names, the transformers names, and the `Transform` between their
tensors (identity, transposition, a split or fusion of stacked tensors, a permutation of rope
rows), which has a forward (export) and an inverse (import). Its config table has one entry per
config.json key or ModelConfig field (`Field`, `Const`, `Fixed`, `Custom`). Export and import
both read the same rows through the functions here, so they cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import torch

from .config import ModelConfig
from .errors import IsmailError


class HFFormatError(IsmailError, ValueError):
    """A model that has no Hugging Face equivalent, or a folder this module cannot read."""


# ---------------------------------------------------------------------------- transforms
class Transform(Protocol):
    """An invertible map from a row's ismail tensors (in the row's order) to its HF tensors."""

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        """The HF tensors of the ismail `tensors` (export)."""
        ...

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        """The ismail tensors of the HF `tensors` (import)."""
        ...


@dataclass(frozen=True)
class Identity:
    """The same tensors under other names."""

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return tensors

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return tensors


@dataclass(frozen=True)
class Transpose:
    """A linear stored in_features x out_features (GPT-2's Conv1D); a 1-D bias stays as it is."""

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return [t.t() for t in tensors]

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return [t.t() for t in tensors]


@dataclass(frozen=True)
class Split:
    """One ismail tensor as `parts` equal slices of its rows (w13's [gate; up] as two)."""

    parts: int

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        (tensor,) = tensors
        return list(tensor.chunk(self.parts))

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return [torch.cat(tensors)]


@dataclass(frozen=True)
class Fuse:
    """`parts` ismail tensors as one, their rows stacked (GPT-2's c_attn is [q; k; v])."""

    parts: int

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return [torch.cat(tensors)]

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        (tensor,) = tensors
        return list(tensor.chunk(self.parts))


@dataclass(frozen=True)
class RopeHalves:
    """The rows of a q or k projection: ismail keeps each head's rope pairs interleaved
    (2i, 2i+1), Llama splits them in halves (i, i + head_dim/2)."""

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return [t[_interleaved_to_half(t.shape[0], cfg.attn_head_dim)] for t in tensors]

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        rows = [torch.argsort(_interleaved_to_half(t.shape[0], cfg.attn_head_dim)) for t in tensors]
        return [t[r] for t, r in zip(tensors, rows, strict=True)]


def _interleaved_to_half(n_rows: int, head_dim: int) -> torch.Tensor:
    """Row order turning per-head interleaved rope pairs (2i, 2i+1) into halves (i, i+d/2)."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(n_rows // head_dim)[:, None] * head_dim + per_head).reshape(-1)


@dataclass(frozen=True)
class Then:
    """`first`, then `second` (undone in the opposite order)."""

    first: Transform
    second: Transform

    def forward(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return self.second.forward(self.first.forward(tensors, cfg), cfg)

    def inverse(self, tensors: list[torch.Tensor], cfg: ModelConfig) -> list[torch.Tensor]:
        return self.first.inverse(self.second.inverse(tensors, cfg), cfg)


IDENTITY: Final = Identity()


# ---------------------------------------------------------------------------- weight rows
# What a placeholder in a row's names stands for.
_PLACEHOLDERS = {"i": r"\d+", "e": r"\d+", "p": "weight|bias"}


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    """`pattern` as a regular expression whose named groups are its placeholders."""
    parts = re.split(r"\{(\w)\}", pattern)  # literal, placeholder, literal, ...
    return re.compile(
        "".join(
            f"(?P<{part}>{_PLACEHOLDERS[part]})" if k % 2 else re.escape(part)
            for k, part in enumerate(parts)
        )
    )


@dataclass(frozen=True)
class WeightRow:
    """Parameters named `ismail` in an ismail model and `hf` in transformers, with `transform`
    from the former's tensors to the latter's. Names are patterns: {i} is a layer, {e} an
    expert and {p} weight or bias, the same on both sides."""

    ismail: tuple[str, ...]
    hf: tuple[str, ...]
    transform: Transform = IDENTITY

    def match(self, name: str) -> dict[str, str] | None:
        """The placeholders' values when `name` is one of this row's ismail names, else None."""
        for pattern in self.ismail:
            found = _regex(pattern).fullmatch(name)
            if found:
                return found.groupdict()
        return None

    def names(self, values: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """The row's ismail and HF names with the placeholders' `values` filled in."""
        return [p.format(**values) for p in self.ismail], [p.format(**values) for p in self.hf]


def row(
    ismail: str | tuple[str, ...], hf: str | tuple[str, ...], transform: Transform = IDENTITY
) -> WeightRow:
    """A WeightRow; a single name needs no tuple."""
    return WeightRow(
        (ismail,) if isinstance(ismail, str) else ismail,
        (hf,) if isinstance(hf, str) else hf,
        transform,
    )


def find_row(rows: Sequence[WeightRow], name: str) -> tuple[WeightRow, dict[str, str]]:
    """The row of the ismail parameter `name` and its placeholders' values."""
    for candidate in rows:
        values = candidate.match(name)
        if values is not None:
            return candidate, values
    raise HFFormatError(f"no Hugging Face name for parameter {name!r}")


def to_hf_tensors(
    rows: Sequence[WeightRow], state: Mapping[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """The HF tensors, by name, of the ismail `state` (every name of a row must be there)."""
    out: dict[str, torch.Tensor] = {}
    for name in state:
        found, values = find_row(rows, name)
        ismail, hf = found.names(values)
        if hf[0] in out:
            continue  # a row of several ismail names, done at its first
        tensors = found.transform.forward([state[n] for n in ismail], cfg)
        out.update(zip(hf, tensors, strict=True))
    return out


def from_hf_tensors(
    rows: Sequence[WeightRow],
    names: Iterable[str],
    fetch: Callable[[str, str], torch.Tensor],
    cfg: ModelConfig,
) -> dict[str, torch.Tensor]:
    """The ismail tensors of the parameters `names`, from HF tensors: `fetch(hf_name, name)`
    gives the tensor `hf_name` that the parameter `name` is made from."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name in out:
            continue
        found, values = find_row(rows, name)
        ismail, hf = found.names(values)
        tensors = found.transform.inverse([fetch(h, name) for h in hf], cfg)
        out.update(zip(ismail, tensors, strict=True))
    return out


# ---------------------------------------------------------------------------- config entries
class ConfigEntry(Protocol):
    """One piece of an architecture's config.json <-> ModelConfig mapping."""

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """config.json keys for `cfg` (export)."""
        ...

    def from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields for the config.json `hf` (import)."""
        ...


REQUIRED: Final[Any] = object()  # a Field's default when import needs the key


@dataclass(frozen=True)
class Field:
    """The ModelConfig field `ismail` stored as the config.json key `hf`.

    Import takes `default` where the key is absent (REQUIRED: it must be there) and, with
    `or_default`, where it is null or 0 as well. A model without routed experts exports
    `dense` instead of the field when that is set (DeepseekV3's MoE keys of a dense model).
    `write=False` or `read=False` leaves the entry out of export or import.
    """

    ismail: str
    hf: str
    default: Any = REQUIRED
    or_default: bool = False
    dense: int | None = None
    write: bool = True
    read: bool = True

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        if not self.write:
            return {}
        if self.dense is not None and not cfg.n_routed_experts:
            return {self.hf: self.dense}
        return {self.hf: getattr(cfg, self.ismail)}

    def from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        if not self.read:
            return {}
        if self.default is REQUIRED:
            return {self.ismail: hf[self.hf]}
        if self.or_default:
            return {self.ismail: hf.get(self.hf) or self.default}
        return {self.ismail: hf.get(self.hf, self.default)}


@dataclass(frozen=True)
class Const:
    """A config.json key every export writes as `value` (import does not read it)."""

    hf: str
    value: Any

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {self.hf: self.value}

    def from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Fixed:
    """A ModelConfig field the architecture implies (`value` on import, nothing on export)."""

    ismail: str
    value: Any

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {}

    def from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return {self.ismail: self.value}


@dataclass(frozen=True)
class Custom:
    """An entry no field-to-key rule states: a pair of functions, one per direction."""

    export: Callable[[ModelConfig], dict[str, Any]]
    read: Callable[[dict[str, Any]], dict[str, Any]]

    def to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return self.export(cfg)

    def from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        return self.read(hf)


def _accept(hf: dict[str, Any]) -> None:
    """A check that refuses no config."""


def _unchanged(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight names that need no normalising."""
    return weights


@dataclass(frozen=True)
class HFArchitecture:
    """A transformers model type: its config and weight tables, read in both directions.

    `check` refuses a config.json that import cannot read exactly; `normalise` renames the
    variants of weight names that transformers writes (older layouts) to the table's.
    """

    model_type: str
    model_class: str  # the transformers class config.json's "architectures" names
    config: tuple[ConfigEntry, ...]
    weights: tuple[WeightRow, ...]
    check: Callable[[dict[str, Any]], None] = _accept
    normalise: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = _unchanged

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """The config.json of a model of `cfg` (without dtype and special-token ids)."""
        config: dict[str, Any] = {
            "architectures": [self.model_class],
            "model_type": self.model_type,
        }
        for entry in self.config:
            config.update(entry.to_hf(cfg))
        return config

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """The ModelConfig fields (for ModelConfig.from_dict) of the config.json `hf`."""
        self.check(hf)
        fields: dict[str, Any] = {}
        for entry in self.config:
            fields.update(entry.from_hf(hf))
        return fields
