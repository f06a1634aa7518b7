"""`ismail data`: turn a text source into tokenized, memory-mapped train/validation shards."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ismail_core.atomic import atomic_dir, atomic_write_json
from ismail_core.corpus.cleaning import clean_text, text_hash
from ismail_core.corpus.errors import DataError
from ismail_core.corpus.shards import (
    FORMAT,
    token_dtype,
    tokenizer_info,
    write_split,
)
from ismail_core.corpus.sources import load_source
from ismail_core.corpus.split import split_flags
from ismail_core.layout import META_FILE, TOKENIZER_DIR
from ismail_core.tokenizer import Tokenizer, TrTokenizer, load_tokenizer

# What --train-tokenizer can train (DataSpec.tokenizer_type).
TOKENIZER_TYPES = ("tr", "bpe")


@dataclass
class DataSpec:
    """What `ismail data` builds.

    source: "builtin", a local file or folder, or "hf:NAME[:CONFIG]".
    out: the data directory to write (replaced atomically when complete).
    tokenizer: "tr" (shipped tr-tokenizer), a saved tokenizer directory or a tokenizer.json.
    train_tokenizer: train a new tokenizer of `vocab_size` on the training split first.
    tokenizer_type: what train_tokenizer trains: "tr" (tr-tokenizer, Turkish morphology) or
        "bpe" (byte-level BPE, for any language); "bpe" without train_tokenizer is an error.
    min_chars: documents shorter than this after cleaning are dropped.
    val_fraction: share of documents (by content hash) in the validation split.
    num_proc: tokenization processes (None: all cores for corpora of 256+ documents).
    """

    source: str = "builtin"
    out: str = "data/builtin"
    tokenizer: str = "tr"
    train_tokenizer: bool = False
    tokenizer_type: str = "tr"
    vocab_size: int = 32768
    text_field: str = "text"
    hf_split: str = "train"
    min_chars: int = 32
    val_fraction: float = 0.05
    num_proc: int | None = None
    shard_tokens: int = 1 << 27
    cache_dir: str | None = None


def _clean_batch(batch: dict[str, list]) -> dict[str, list]:
    texts = [clean_text(t or "") for t in batch["text"]]
    return {"text": texts, "hash": [text_hash(t) for t in texts], "chars": [len(t) for t in texts]}


def _tokenize_batch(batch: dict[str, list], tokenizer: Tokenizer) -> dict:
    """Token ids of each document, ended by the end-of-sequence id (which so starts the next
    one), and begun by the document start id where a tokenizer has another (an imported
    model's bos)."""
    ids = [enc.ids for enc in tokenizer.encode_batch(batch["text"])]
    eos, start = tokenizer.eos_id, tokenizer.document_start_id
    if start is not None and start != eos:
        ids = [[start, *doc] for doc in ids]
    if eos is not None:
        ids = [doc + [eos] for doc in ids]
    return {
        "ids": ids,
        "n_tokens": [len(doc) for doc in ids],
        "n_bytes": [len(t.encode("utf-8")) for t in batch["text"]],
    }


def _workers(spec: DataSpec, n_docs: int) -> int | None:
    if spec.num_proc is not None:
        return spec.num_proc if spec.num_proc > 1 else None
    # Process start-up costs more than it saves on small corpora.
    return min(os.cpu_count() or 1, 8) if n_docs >= 256 else None


def _clean_and_dedup(ds: datasets.Dataset, spec: DataSpec) -> tuple[datasets.Dataset, dict]:
    raw = len(ds)
    ds = ds.map(_clean_batch, batched=True, num_proc=_workers(spec, raw), desc="cleaning")
    seen: set[str] = set()
    keep, short, dupes = [], 0, 0
    for i, (digest, n) in enumerate(zip(ds["hash"], ds["chars"])):
        if n < spec.min_chars:
            short += 1
        elif digest in seen:
            dupes += 1
        else:
            seen.add(digest)
            keep.append(i)
    if not keep:
        raise DataError(
            f"{spec.source!r} has no usable documents: {raw} read, {short} shorter than "
            f"{spec.min_chars} characters after cleaning, {dupes} duplicates "
            "(point to a non-empty corpus or lower --min-chars)"
        )
    return ds.select(keep).remove_columns("chars"), {
        "read": raw,
        "too_short": short,
        "duplicates": dupes,
    }


def _check_tokenizer_type(spec: DataSpec) -> None:
    """Raise DataError for a tokenizer type or vocabulary size that cannot be trained."""
    if spec.tokenizer_type not in TOKENIZER_TYPES:
        raise DataError(
            f"unknown tokenizer type {spec.tokenizer_type!r}: use one of {TOKENIZER_TYPES}"
        )
    if not spec.train_tokenizer:
        if spec.tokenizer_type == "bpe":
            raise DataError(
                "--tokenizer-type bpe says what --train-tokenizer trains: add --train-tokenizer "
                "(or give an existing tokenizer.json with --tokenizer)"
            )
        return
    if spec.tokenizer_type == "bpe":
        from ismail_core.corpus.bpe import check_vocab_size

        check_vocab_size(spec.vocab_size)
        return
    from tr_tokenizer.trainer import MIN_VOCAB_SIZE

    if spec.vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"--vocab-size {spec.vocab_size} is too small for a tr-tokenizer (its special, byte "
            f"and whitespace tokens take most of it); use at least {MIN_VOCAB_SIZE}"
        )


def _train_tokenizer(texts: datasets.Dataset, spec: DataSpec) -> Tokenizer:
    """A new tokenizer of spec.tokenizer_type trained on `texts` (the training split)."""
    batch_size = 256
    batches = (b["text"] for b in texts.iter(batch_size=batch_size))
    if spec.tokenizer_type == "bpe":
        from ismail_core.corpus.bpe import train_bpe

        return train_bpe(batches, spec.vocab_size, length=-(-len(texts) // batch_size))
    import tr_tokenizer

    flat = (t for b in batches for t in b)
    return TrTokenizer(tr_tokenizer.train(flat, vocab_size=spec.vocab_size))


def prepare_data(spec: DataSpec) -> dict[str, Any]:
    """Build the data directory `spec.out`; returns its metadata (also written to meta.json)."""
    # A bad tokenizer spec should fail before minutes of reading and cleaning.
    _check_tokenizer_type(spec)
    tokenizer: Tokenizer | None = None if spec.train_tokenizer else load_tokenizer(spec.tokenizer)
    ds = load_source(
        spec.source, text_field=spec.text_field, split=spec.hf_split, cache_dir=spec.cache_dir
    )
    if len(ds) == 0:
        raise DataError(f"{spec.source!r} is empty: it holds no documents")
    ds, dropped = _clean_and_dedup(ds, spec)
    flags = split_flags(list(ds["hash"]), spec.val_fraction)
    splits = {
        "train": ds.select([i for i, v in enumerate(flags) if not v]),
        "val": ds.select([i for i, v in enumerate(flags) if v]),
    }
    if tokenizer is None:
        tokenizer = _train_tokenizer(splits["train"], spec)
    dtype = token_dtype(tokenizer.vocab_size)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "dtype": dtype.name,
        "tokenizer": tokenizer_info(tokenizer),
        "spec": asdict(spec),
        "dropped": dropped,
        "splits": {},
    }
    out = Path(spec.out)
    with atomic_dir(out) as tmp:
        tokenizer.save(tmp / TOKENIZER_DIR)
        for name, part in splits.items():
            if len(part) == 0:
                continue
            tokens = part.map(
                _tokenize_batch,
                batched=True,
                batch_size=64,
                num_proc=_workers(spec, len(part)),
                fn_kwargs={"tokenizer": tokenizer},
                remove_columns=part.column_names,
                desc=f"tokenizing {name}",
            )
            total = int(np.sum(tokens["n_tokens"], dtype=np.int64))
            batches = (b["ids"] for b in tokens.iter(batch_size=1024))
            shards = write_split(tmp, name, batches, total, dtype, spec.shard_tokens)
            meta["splits"][name] = {
                "documents": len(part),
                "tokens": total,
                "bytes": int(np.sum(tokens["n_bytes"], dtype=np.int64)),
                "shards": shards,
            }
        atomic_write_json(tmp / META_FILE, meta)
    return meta
