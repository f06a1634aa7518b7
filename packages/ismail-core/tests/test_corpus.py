"""`ismail data` pipeline: sources (Leipzig corpora too), cleaning, deterministic split, shards
and metadata, byte-level BPE training."""

from __future__ import annotations

import json
import tarfile
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
from ismail_core.corpus.split import is_validation, split_flags
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


# ---------------------------------------------------------------------- Leipzig corpora
LEIPZIG = ["Бала китап укый.", "Әни өйдә эшли, ә әти авылда.", "Kitab oxuyuram."]


def _leipzig_folder(root: Path, name: str = "tat_news_2019_10K") -> Path:
    """An unpacked Leipzig corpus: NAME-sentences.txt (id<TAB>sentence; a CRLF line and one
    without an id, kept whole) and the word list and sources beside it, which are not text."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = f"1\t{LEIPZIG[0]}\n2\t{LEIPZIG[1]}\r\n{LEIPZIG[2]}\n"
    (folder / f"{name}-sentences.txt").write_bytes(lines.encode())
    (folder / f"{name}-words.txt").write_text("1\tбала\t17\n2\tкитап\t9\n")
    (folder / f"{name}-sources.txt").write_text("1\thttps://example.org/tat\t2019-10-01\n")
    return folder


def _tar_gz(archive: Path, folder: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def test_leipzig_sentences_file_archive_and_folder(tmp_path: Path, corpus: list[str]) -> None:
    folder = _leipzig_folder(tmp_path / "unpacked")
    sentences = folder / "tat_news_2019_10K-sentences.txt"
    assert list(load_source(str(sentences))["text"]) == LEIPZIG
    archive = _tar_gz(tmp_path / "tat_news_2019_10K.tar.gz", folder)
    assert list(load_source(str(archive))["text"]) == LEIPZIG
    # A folder: the word list and sources beside the sentences are skipped, other text is read.
    (folder / "notes.txt").write_text(corpus[0] + "\n")
    assert sorted(t.strip() for t in load_source(str(folder))["text"]) == sorted(
        LEIPZIG + corpus[:1]
    )
    archives = tmp_path / "archives"
    archives.mkdir()
    archive.rename(archives / "tat.tgz")
    _tar_gz(archives / "aze.tar.gz", _leipzig_folder(tmp_path / "aze", "aze_wikipedia_2021_10K"))
    assert list(load_source(str(archives))["text"]) == LEIPZIG * 2


def test_leipzig_errors_name_the_file(tmp_path: Path) -> None:
    folder = _leipzig_folder(tmp_path / "unpacked")
    (folder / "tat_news_2019_10K-sentences.txt").unlink()
    words_only = _tar_gz(tmp_path / "words.tar.gz", folder)
    with pytest.raises(DataError, match=r"words.tar.gz: the archive holds no \*sentences.txt"):
        load_source(str(words_only))
    corrupt = tmp_path / "corrupt.tgz"
    corrupt.write_bytes(b"not an archive" * 64)
    with pytest.raises(DataError, match="corrupt.tgz: not a readable .tar.gz archive"):
        load_source(str(corrupt))
    latin1 = tmp_path / "x-sentences.txt"
    latin1.write_bytes("1\tok\n2\tbaşka\n".encode("latin-1", errors="replace") + b"3\t\xe7ay\n")
    with pytest.raises(DataError, match="x-sentences.txt: line 3 is not UTF-8 text"):
        load_source(str(latin1))


# ---------------------------------------------------------------------- byte-level BPE
# Tatar and Kazakh Cyrillic, Azerbaijani Latin: the scripts --tokenizer-type bpe is for.
BPE_CORPUS = [
    "Бала мәктәптә китап укый, ә әнисе өйдә хат яза.",
    "Татар теле — Идел буенда яшәүче халыкның туган теле.",
    "Җир җылы, су салкын, һава саф; бакчада алмалар өлгерде.",
    "Қазақ тілі — түркі тілдерінің бірі; оқушылар кітап оқиды.",
    "Azərbaycan dili türk dillərinin oğuz qrupuna daxildir.",
    "Uşaqlar məktəbdə kitab oxuyur, müəllim şagirdlərə dərs deyir.",
]
BPE_ALPHABET = (
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяәөүҗңһқғұіӘӨҮҖҢҺҚҒҰІ"
    "abcçdeəfgğhxıijkqlmnoöprsştuüvyzƏĞİŞ0123456789 .,;:!?-—«»'\n\t"
    "\u0301\u0308😀€"  # combining acute and diaeresis (NFC composes some), beyond the corpus
)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from ismail_core.corpus.bpe import train_bpe

    return train_bpe([BPE_CORPUS * 20], vocab_size=400)


def test_bpe_has_specials_and_the_vocabulary_size_asked(bpe_tokenizer, tmp_path: Path) -> None:
    from ismail_core.chat import CHAT_MARKERS
    from ismail_core.corpus.bpe import BOS, EOS, PAD

    tok = bpe_tokenizer
    assert tok.kind == "hf" and tok.vocab_size == 400
    assert [tok.id_to_token(i) for i in (tok.pad_id, tok.bos_id, tok.eos_id)] == [PAD, BOS, EOS]
    assert all(tok.token_to_id(m) is not None for m in CHAT_MARKERS)  # chat needs no resize
    for text in BPE_CORPUS:  # merges were learnt: under a token per two bytes
        assert len(tok.encode(text).ids) < len(text.encode()) / 2
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert (again.kind, again.fingerprint) == ("hf", tok.fingerprint)
    assert again.encode(BPE_CORPUS[3]).ids == tok.encode(BPE_CORPUS[3]).ids


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list(BPE_ALPHABET)), max_size=60))
def test_bpe_round_trip_is_lossless_up_to_nfc(bpe_tokenizer, text: str) -> None:
    nfc = unicodedata.normalize("NFC", text)
    ids = bpe_tokenizer.encode(text).ids
    assert bpe_tokenizer.decode(ids) == nfc
    assert bpe_tokenizer.encode(unicodedata.normalize("NFD", text)).ids == ids


def test_bpe_round_trips_its_corpus(bpe_tokenizer) -> None:
    for text in BPE_CORPUS:
        assert bpe_tokenizer.decode(bpe_tokenizer.encode(text).ids) == text


def _docs_in_split(word: str, validation: bool, val_fraction: float) -> list[str]:
    """Documents repeating `word` that the hash split puts in validation (or training)."""
    docs = [f"Документ {i}: {' '.join([word] * 6)}." for i in range(120)]
    return [d for d in docs if is_validation(text_hash(d), val_fraction) == validation]


def test_prepare_trains_bpe_on_the_training_split_only(tmp_path: Path) -> None:
    # ѯ, ѱ, ѳ, ѵ: two-byte letters found nowhere else; a word of them repeated in hundreds of
    # documents is merged into one token when the trainer sees it, and left in bytes otherwise.
    val_word, train_word = "ѯѱѯѱѯѱ", "ѳѵѳѵѳѵ"
    val_docs = _docs_in_split(val_word, True, 0.3)
    docs = val_docs + _docs_in_split(train_word, False, 0.3) + BPE_CORPUS
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    spec = DataSpec(
        source=str(source),
        out=str(tmp_path / "data"),
        train_tokenizer=True,
        tokenizer_type="bpe",
        vocab_size=300,
        min_chars=10,
        val_fraction=0.3,
    )
    meta = prepare_data(spec)
    tok = load_tokenizer(tmp_path / "data" / "tokenizer")
    assert (tmp_path / "data" / "tokenizer" / "tokenizer.json").is_file()
    assert meta["tokenizer"] == {
        "kind": "hf",
        "fingerprint": tok.fingerprint,
        "vocab_size": 300,
        "eos_id": tok.eos_id,
    }
    assert len(tok.encode(val_word).ids) == len(val_word.encode())  # not one merge
    assert len(tok.encode(" " + train_word).ids) == 1  # as it occurs: after a space
    val = ShardedSplit.open(tmp_path / "data", "val")  # where the documents with val_word are
    assert tok.decode(val.read(0, val.num_tokens).tolist()).count(val_word) == 6 * len(val_docs)


def test_tokenizer_training_options_are_checked_before_reading(tmp_path: Path) -> None:
    def spec(**kwargs) -> DataSpec:
        return DataSpec(source=str(tmp_path / "missing"), out=str(tmp_path / "out"), **kwargs)

    with pytest.raises(DataError, match="--vocab-size 200 is too small.*at least 263"):
        prepare_data(spec(train_tokenizer=True, tokenizer_type="bpe", vocab_size=200))
    with pytest.raises(DataError, match="add --train-tokenizer"):
        prepare_data(spec(tokenizer_type="bpe"))
    with pytest.raises(DataError, match="unknown tokenizer type 'wordpiece'"):
        prepare_data(spec(train_tokenizer=True, tokenizer_type="wordpiece"))
    with pytest.raises(DataError, match="--vocab-size 400 is too small for a tr-tokenizer"):
        prepare_data(spec(train_tokenizer=True, vocab_size=400))
