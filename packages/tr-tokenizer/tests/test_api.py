"""The public API: ids, specials, errors, save/load, fingerprint, batches, streams, segment."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import pytest
import tr_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer import parallel
from tr_tokenizer import tokenizer as tokenizer_module
from tr_tokenizer.vocab import VocabularyError


def test_default_vocabulary_shape(tok) -> None:
    assert tok.vocab_size == 32768
    for name in ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|end|>"):  # fmt: skip
        assert name in tok.special_tokens
        assert tok.token_to_id(name) == tok.special_tokens[name]
        assert tok.id_to_token(tok.special_tokens[name]) == name
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == tuple(
        tok.special_tokens[n] for n in ("<|pad|>", "<|bos|>", "<|eos|>")
    )
    kinds = {tok.kind(i) for i in range(tok.vocab_size)}
    assert kinds == {"special", "case", "byte", "space", "root", "word", "suffix", "bpe"}
    assert sum(tok.kind(i) == "byte" for i in range(tok.vocab_size)) == 256
    assert tok.token_to_id("no such token") is None


def test_encode_example_is_morphological(tok) -> None:
    enc = tok.encode("Kitaplarımızdan birini okudunuz mu?")
    # a sentence start has no space before it: the spaced root after a glue marker
    assert enc.tokens[:2] == ["<|glue_cap|>", " kitap"]
    assert tok.decode(enc.ids) == "Kitaplarımızdan birini okudunuz mu?"
    pieces = tok.segment(" kitaplarımızdan")
    assert [p.kind for p in pieces][0] == "root"
    assert "".join(p.text for p in pieces) == " kitaplarımızdan"
    assert all(p.kind == "suffix" for p in pieces[1:])


def test_allomorphs_share_an_id_only_where_the_rule_holds(tok) -> None:
    # -lAr after back and front vowels: one id, two spellings (words too rare to be whole)
    perdeler, kuzular = tok.encode(" perdeler").ids, tok.encode(" kuzular").ids
    assert perdeler[-1] == kuzular[-1] and tok.id_to_token(kuzular[-1]).startswith("+")
    # "saatler" breaks vowel harmony: the suffix is written literally, and still round-trips
    saat = tok.encode(" saatler")
    assert not tok.id_to_token(saat.ids[-1]).startswith("+")
    for word in ("başlatılmış", "hayatı", "maçı", "1920'de", "Google'da", "halde"):
        assert tok.decode(tok.encode(word).ids) == word


def test_turkish_case_markers(tok) -> None:
    lower = tok.encode(" ışık").ids
    assert tok.encode(" Işık").ids == [tok.token_to_id("<|cap|>"), *lower]
    assert tok.encode(" IŞIK").ids == [tok.token_to_id("<|upper|>"), *lower]
    assert tok.encode(" İstanbul").ids[1:] == tok.encode(" istanbul").ids


def test_empty_string_has_no_tokens(tok) -> None:
    enc = tok.encode("")
    assert enc.ids == [] and enc.tokens == [] and enc.offsets == []
    assert tok.decode([]) == ""


@pytest.mark.parametrize("bad", [b"bytes", 3, None, ["a"]])
def test_non_str_input_is_a_type_error(tok, bad) -> None:
    with pytest.raises(TypeError, match=type(bad).__name__):
        tok.encode(bad)
    with pytest.raises(TypeError):
        tok.encode_batch([bad])


def test_unknown_id_is_a_value_error_naming_it(tok) -> None:
    with pytest.raises(ValueError, match="99999999"):
        tok.decode([5, 99999999])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="40000"):
        tok.id_to_token(40000)
    with pytest.raises(ValueError, match="40000"):
        tok.decode_stream().step(40000)


def test_special_tokens_in_text(tok) -> None:
    text = "<|user|>Merhaba<|end|>"
    plain = tok.encode(text)
    assert tok.special_tokens["<|user|>"] not in plain.ids
    special = tok.encode(text, allow_special=True)
    assert special.ids[0] == tok.special_tokens["<|user|>"]
    assert special.ids[-1] == tok.special_tokens["<|end|>"]
    assert special.offsets[0] == (0, 8) and special.offsets[-1] == (15, 22)
    assert tok.decode(special.ids) == text
    assert tok.decode(special.ids, skip_special_tokens=True) == "Merhaba"


def test_save_load_round_trip_and_fingerprint(tok, tmp_path) -> None:
    tok.save(tmp_path / "t")
    again = tr_tokenizer.load(tmp_path / "t")
    assert again.fingerprint == tok.fingerprint and len(tok.fingerprint) == 16
    text = "Türkçe metin: Ankara'da 23 Nisan 1920'de toplandılar."
    assert again.encode(text).ids == tok.encode(text).ids
    assert not list((tmp_path / "t").glob(".tokenizer-*"))  # no temp file left behind


def test_vocabulary_has_its_own_file_name_and_old_directories_still_load(tok, tmp_path) -> None:
    # tokenizer.json is the `tokenizers` format's name (transformers reads it as one), so the
    # vocabulary is saved as tr_tokenizer.json; directories saved before the rename still load.
    tok.save(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["tr_tokenizer.json"]
    old = tmp_path / "old"
    old.mkdir()
    (tmp_path / "new" / "tr_tokenizer.json").rename(old / "tokenizer.json")
    assert tr_tokenizer.load(old).fingerprint == tok.fingerprint
    # A Hugging Face tokenizer.json beside is no tr-tokenizer vocabulary: said, not guessed.
    (old / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": []}))
    with pytest.raises(VocabularyError, match="not a tr-tokenizer vocabulary"):
        tr_tokenizer.load(old)


def test_pickle_round_trip(tok) -> None:
    again = pickle.loads(pickle.dumps(tok))
    assert again.fingerprint == tok.fingerprint
    assert again.encode("Ankara'da").ids == tok.encode("Ankara'da").ids


def test_missing_and_corrupt_vocabulary_errors(tmp_path) -> None:
    with pytest.raises(VocabularyError, match="no tokenizer vocabulary at"):
        tr_tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "tr_tokenizer.json").write_text("{not json")
    with pytest.raises(VocabularyError, match="corrupt"):
        tr_tokenizer.load(tmp_path)
    (tmp_path / "tr_tokenizer.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(VocabularyError, match="not a tr-tokenizer vocabulary"):
        tr_tokenizer.load(tmp_path)
    good = json.loads(tr_tokenizer.load().vocab.to_json())
    good["pieces"][300] = ["x", "nonsense-kind", 0.0]
    (tmp_path / "tr_tokenizer.json").write_text(json.dumps(good))
    with pytest.raises(VocabularyError, match="nonsense-kind"):
        tr_tokenizer.load(tmp_path)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aıAIİiçÇğĞ 😀é\n'") + ["\u0301"]), max_size=40))
def test_decode_stream_concatenates_to_decode(tok, text: str) -> None:
    ids = tok.encode(text).ids
    stream = tok.decode_stream()
    parts = [stream.step(i) for i in ids]
    parts.append(stream.flush())
    assert "".join(parts) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in parts)  # never a broken character mid-stream


def test_decode_stream_waits_for_complete_characters(tok) -> None:
    ids = tok.encode("😀").ids  # four byte tokens
    assert len(ids) == 4
    stream = tok.decode_stream()
    assert [stream.step(i) for i in ids] == ["", "", "", "😀"]
    assert stream.flush() == ""


def test_invalid_byte_sequences_decode_with_replacement(tok) -> None:
    byte_ff = tok.token_to_id("<0xFF>")
    assert tok.decode([byte_ff, tok.token_to_id(" ")]) == "\ufffd "


def test_encode_batch_matches_encode_in_processes(tok, monkeypatch) -> None:
    texts = [f"{i}. cümlede kitaplarımızdan {i * 7} tanesini okuduk." for i in range(50)]
    monkeypatch.setattr(tokenizer_module, "_PARALLEL_MIN_CHARS", 0)
    batch = tok.encode_batch(texts, num_workers=2)
    assert [e.ids for e in batch] == [tok.encode(t).ids for t in texts]
    assert batch[3].offsets == tok.encode(texts[3]).offsets


@pytest.mark.parametrize("workers", [2, 3])
def test_encode_batch_pieces_are_shared_between_processes(tok, monkeypatch, workers) -> None:
    # many small pieces, so this process and the workers each take some; order is kept
    texts = [f"{i}. satır: Kitaplarımızdan {i % 13} tanesi, Ankara'da." for i in range(400)]
    monkeypatch.setattr(tokenizer_module, "_PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(parallel, "PIECES_PER_WORKER", 20)
    fresh = tr_tokenizer.load()
    try:
        for _ in range(2):  # the second batch reuses the pool and its shared claims
            assert fresh.encode_batch_ids(texts, num_workers=workers) == [
                tok.encode_ids(t) for t in texts
            ]
    finally:
        fresh.close()


def _batch_in_daemon(texts: list[str]) -> list[list[int]]:
    return tr_tokenizer.load().encode_batch_ids(texts, num_workers=2)


def test_encode_batch_inside_a_pool_worker_runs_serially(tok, monkeypatch) -> None:
    monkeypatch.setattr(tokenizer_module, "_PARALLEL_MIN_CHARS", 0)
    texts = ["Ankara'da yaşıyorum.", "Kitaplarımızdan birini okudunuz mu?"]
    with multiprocessing.get_context("fork").Pool(1) as pool:  # its workers are daemonic
        assert pool.apply(_batch_in_daemon, (texts,)) == [tok.encode_ids(t) for t in texts]


def test_segment_kinds(tok) -> None:
    pieces = tok.segment("Ankara'da 😀")
    assert pieces[0].kind == "case"
    assert {p.kind for p in pieces} >= {"case", "byte"}
    assert "".join(p.text for p in pieces) == "Ankara'da 😀"
