"""Memory-mapped token shards and their metadata.

A data directory holds
    meta.json               format, dtype, tokenizer (kind, fingerprint, vocab size), splits
    tokenizer/              the tokenizer that produced the ids
    train-00000.bin ...     raw little-endian uint16 (vocab <= 65536) or uint32 token ids
    val-00000.bin ...

Documents are concatenated with the tokenizer's end-of-sequence id after each one, so a split
is one long token stream; a split may span several shard files (`shard_tokens` each).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ismail_core.corpus.errors import DataError
from ismail_core.layout import META_FILE

FORMAT = "ismail-shards/1"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_split(
    directory: Path,
    split: str,
    id_batches: Iterable[list[list[int]]],
    total_tokens: int,
    dtype: np.dtype,
    shard_tokens: int,
) -> list[dict[str, Any]]:
    """Write a split's token stream into shard files; returns their metadata entries.

    `id_batches` yields lists of per-document id lists whose lengths add up to `total_tokens`
    (known in advance, so each shard is allocated once at its final size).
    """
    shards: list[dict[str, Any]] = []
    sizes = [min(shard_tokens, total_tokens - s) for s in range(0, total_tokens, shard_tokens)]
    current: np.memmap | None = None
    pos = 0  # position inside the current shard

    def open_next() -> np.memmap:
        name = f"{split}-{len(shards):05d}.bin"
        size = sizes[len(shards)]
        shards.append({"file": name, "tokens": size})
        return np.memmap(directory / name, dtype=dtype, mode="w+", shape=(size,))

    for batch in id_batches:
        if not batch:
            continue
        flat = np.fromiter((i for doc in batch for i in doc), dtype=dtype)
        while flat.size:
            if current is None or pos == current.shape[0]:
                if current is not None:
                    current.flush()
                current, pos = open_next(), 0
            n = min(flat.size, current.shape[0] - pos)
            current[pos : pos + n] = flat[:n]
            pos, flat = pos + n, flat[n:]
    if current is not None:
        current.flush()
    written = sum(s["tokens"] for s in shards[:-1]) + pos if shards else 0
    if written != total_tokens:
        raise RuntimeError(f"{split}: wrote {written} tokens, expected {total_tokens}")
    return shards


def load_metadata(directory: str | Path) -> dict[str, Any]:
    """Read and check a data directory's meta.json."""
    directory = Path(directory)
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise DataError(
            f"{directory} is not a tokenized data directory (no {META_FILE}); "
            "create one with `ismail data SOURCE --out DIR`"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_file} is corrupt ({exc}); recreate it with `ismail data`") from exc
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_file}: unknown format {meta.get('format')!r}, expected {FORMAT}")
    return meta


@dataclass
class ShardedSplit:
    """Read access to one split of a data directory as a single token stream."""

    directory: Path
    name: str
    shards: list[np.memmap]
    offsets: np.ndarray  # start of each shard in the stream, plus the total at the end
    bytes: int  # UTF-8 bytes of the text behind the tokens (for bits per byte)
    documents: int

    @classmethod
    def open(cls, directory: str | Path, name: str, vocab_size: int | None = None) -> ShardedSplit:
        """Memory-map split `name` ("train" or "val") of a data directory.

        With `vocab_size` (the model's), every shard is checked for ids beyond it.
        """
        directory = Path(directory)
        meta = load_metadata(directory)
        if name not in meta["splits"]:
            raise DataError(f"{directory} has no {name!r} split (it has {list(meta['splits'])})")
        info = meta["splits"][name]
        dtype = np.dtype(meta["dtype"])
        shards = []
        for entry in info["shards"]:
            file = directory / entry["file"]
            expected = entry["tokens"] * dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise DataError(
                    f"{file} is missing or truncated (expected {expected} bytes); "
                    "recreate the data directory with `ismail data`"
                )
            shards.append(np.memmap(file, dtype=dtype, mode="r"))
            if vocab_size is not None:
                _check_ids(file, shards[-1], vocab_size)
        offsets = np.cumsum([0] + [s.shape[0] for s in shards])
        return cls(directory, name, shards, offsets, info["bytes"], info["documents"])

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.num_tokens, 1)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream, across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"window {start}+{length} outside {self.num_tokens} tokens")
        pieces = []
        while length > 0:
            k = int(np.searchsorted(self.offsets, start, side="right")) - 1
            local = start - int(self.offsets[k])
            n = min(length, self.shards[k].shape[0] - local)
            pieces.append(self.shards[k][local : local + n])
            start, length = start + n, length - n
        return np.concatenate(pieces) if len(pieces) > 1 else np.asarray(pieces[0])

    def random_windows(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """`batch` windows of `length` tokens at uniformly random starts: LongTensor (B, length)."""
        if self.num_tokens < length:
            raise DataError(
                f"the {self.name} split has {self.num_tokens} tokens, fewer than one sequence "
                f"of {length}; add data or lower the sequence length (--train.seq_len)"
            )
        starts = torch.randint(0, self.num_tokens - length + 1, (batch,), generator=generator)
        rows = [self.read(int(s), length).astype(np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))

    def sequential_windows(self, length: int, max_tokens: int | None = None) -> list[int]:
        """Starts of consecutive non-overlapping windows covering the split (for evaluation)."""
        usable = self.num_tokens if max_tokens is None else min(self.num_tokens, max_tokens)
        return list(range(0, usable - length + 1, length - 1))


def _check_ids(file: Path, shard: np.ndarray, vocab_size: int) -> None:
    """Raise DataError when a shard holds an id the model has no embedding row for.

    One pass over the shard (a max, far cheaper than the forward passes that read it next),
    so a corrupt or foreign shard is named here instead of crashing inside the embedding.
    """
    top = int(shard.max()) if shard.size else -1
    if top >= vocab_size:
        raise DataError(
            f"{file} holds token id {top}, beyond the model's vocabulary of {vocab_size}: it is "
            "corrupt or was made with another tokenizer; recreate the data directory with "
            "`ismail data SOURCE --tokenizer CKPT/tokenizer`"
        )


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What shards and checkpoints record about their tokenizer, to detect mismatches."""
    return {
        "kind": tokenizer.kind,
        "fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
    }
