"""`ismail data` pipeline: sources, cleaning, deterministic split, shards and metadata."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.corpus import DataError, DataSpec, ShardedSplit, load_metadata, prepare_data
from ismail_core.corpus.builtin import builtin_texts
from ismail_core.corpus.cleaning import clean_text, text_hash
from ismail_core.corpus.shards import token_dtype, write_split
from ismail_core.corpus.sources import load_source
from ismail_core.corpus.split import split_flags
from ismail_core.tokenizer import load_tokenizer


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep datasets' Arrow cache out of the home directory.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _write_sources(root: Path, corpus: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("\n\n".join(corpus[:3]) + "\n")
    (root / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(corpus[3:6])) + "\n"
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": corpus[6:]}), root / "c.parquet")
    return root


# Includes combining marks (cedilla, dot above) so decomposed Turkish letters are generated.
TEXT = st.text(
    alphabet=st.sampled_from(list("abcçğıİiöşüÜsI \t\n\r\x00\x07\ufeff\u0327\u0307")),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(text=TEXT)
def test_clean_text_is_idempotent_nfc_and_control_free(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert unicodedata.is_normalized("NFC", cleaned)
    assert not any(c in cleaned for c in "\x00\x07\r\ufeff")
    assert cleaned == cleaned.strip()


def test_clean_text_composes_turkish_letters() -> None:
    assert clean_text("s\u0327u\u0308 ") == "şü"
    assert clean_text("a\r\nb\n\n\n\nc") == "a\nb\n\nc"


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=30, unique=True))
def test_split_depends_only_on_text(texts: list[str]) -> None:
    digests = [text_hash(t) for t in texts]
    flags = dict(zip(texts, split_flags(digests, 0.2)))
    shuffled = list(reversed(texts))
    again = dict(zip(shuffled, split_flags([text_hash(t) for t in shuffled], 0.2)))
    assert flags == again
    assert any(flags.values()) and not all(flags.values())


def test_local_sources_through_datasets_builders(tmp_path: Path, corpus: list[str]) -> None:
    root = _write_sources(tmp_path / "src", corpus)
    # .txt: one paragraph per document (cleaning strips the newline the builder keeps)
    assert [t.strip() for t in load_source(str(root / "a.txt"))["text"]] == corpus[:3]
    assert list(load_source(str(root / "b.jsonl"), text_field="body")["text"]) == corpus[3:6]
    assert list(load_source(str(root / "c.parquet"), text_field="body")["text"]) == corpus[6:]
    with pytest.raises(DataError, match="no text field 'text'.*'body'"):
        load_source(str(root / "b.jsonl"))
    (root / "a.txt").unlink()
    assert sorted(load_source(str(root), text_field="body")["text"]) == sorted(corpus[3:])


def test_hf_dataset_name_source_on_local_folder(tmp_path: Path, corpus: list[str]) -> None:
    folder = tmp_path / "hub-like"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in corpus))
    assert list(load_source(f"hf:{folder}", split="train")["text"]) == corpus
    with pytest.raises(DataError, match="split 'nope'"):
        load_source(f"hf:{folder}", split="nope")


def test_builtin_corpus_is_turkish_speeches() -> None:
    texts = builtin_texts()
    assert len(texts) > 400
    assert sum(map(len, texts)) > 2_000_000
    assert "Türk" in texts[0] or any("Türk" in t for t in texts[:20])


def test_prepare_writes_consistent_shards(
    tmp_path: Path, corpus: list[str], hf_tokenizer_file: Path
) -> None:
    root = _write_sources(tmp_path / "src", corpus + [corpus[0]])  # one exact duplicate
    (root / "a.txt").write_text("\n\n".join(corpus[:3] + [corpus[0], "kısa"]) + "\n")
    out = tmp_path / "data"
    spec = DataSpec(
        source=str(root),
        out=str(out),
        tokenizer=str(hf_tokenizer_file),
        text_field="body",
        min_chars=10,
        val_fraction=0.25,
    )
    meta = prepare_data(spec)
    assert meta == load_metadata(out)
    assert meta["dropped"] == {"read": 11, "too_short": 1, "duplicates": 2}
    tok = load_tokenizer(out / "tokenizer")
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint
    assert meta["dtype"] == "uint16"
    # Every document comes back exactly, followed by eos, in one of the two splits.
    decoded = []
    for name in ("train", "val"):
        split = ShardedSplit.open(out, name)
        ids = split.read(0, split.num_tokens).tolist()
        assert ids[-1] == tok.eos_id
        docs = tok.decode(ids).split("</s>")[:-1]
        assert split.documents == len(docs)
        assert split.bytes == sum(len(d.encode()) for d in docs)
        decoded += docs
    assert sorted(decoded) == sorted(corpus)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_shards_split_and_read_across_boundaries(tmp_path: Path) -> None:
    docs = [list(range(i, i + 7)) for i in range(0, 70, 7)]  # 70 tokens
    shards = write_split(tmp_path, "train", [docs[:4], docs[4:]], 70, np.dtype("uint32"), 16)
    assert [s["tokens"] for s in shards] == [16, 16, 16, 16, 6]
    meta = {
        "format": "ismail-shards/1",
        "dtype": "uint32",
        "splits": {"train": {"shards": shards, "bytes": 140, "documents": 10, "tokens": 70}},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    split = ShardedSplit.open(tmp_path, "train")
    assert split.read(0, 70).tolist() == list(range(70))
    assert split.read(13, 40).tolist() == list(range(13, 53))
    gen = torch.Generator().manual_seed(0)
    windows = split.random_windows(5, 9, gen)
    assert all(row.tolist() == list(range(row[0], row[0] + 9)) for row in windows)
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    (tmp_path / "train-00002.bin").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match="train-00002.bin is missing or truncated"):
        ShardedSplit.open(tmp_path, "train")


def test_bad_sources_give_clear_errors(tmp_path: Path, hf_tokenizer_file: Path) -> None:
    def spec(source: str) -> DataSpec:
        return DataSpec(source=source, out=str(tmp_path / "out"), tokenizer=str(hf_tokenizer_file))

    with pytest.raises(DataError, match="does not exist"):
        prepare_data(spec(str(tmp_path / "missing.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty|no usable documents"):
        prepare_data(spec(str(empty)))
    short = tmp_path / "short.txt"
    short.write_text("a\n\nb\n")
    with pytest.raises(DataError, match="no usable documents.*2 shorter than 32"):
        prepare_data(spec(str(short)))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.md").write_text("x")
    with pytest.raises(DataError, match="holds no .txt"):
        prepare_data(spec(str(folder)))
    with pytest.raises(DataError, match="not a tokenized data directory"):
        load_metadata(folder)
    assert not (tmp_path / "out").exists()
