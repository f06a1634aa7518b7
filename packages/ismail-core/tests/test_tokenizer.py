"""The tokenizer wrapper: Hugging Face tokenizer.json behind tr_tokenizer's surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.tokenizer import (
    MARKER_FILE,
    HFTokenizer,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
)

TURKISH = st.text(
    alphabet=st.sampled_from(list("abcçdefgğhıijklmnoöprsştuüvyzABCÇİIÖŞÜ .,!?'\n0123€😀")),
    max_size=60,
)


def test_hf_tokenizer_surface(hf_tokenizer_file: Path) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf"
    assert tok.vocab_size == 384
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.special_tokens == {"<pad>": 0, "<s>": 1, "</s>": 2}
    enc = tok.encode("Yurtta sulh, cihanda sulh!")
    assert enc.ids and len(enc.ids) == len(enc.tokens) == len(enc.offsets)
    assert tok.decode(enc.ids) == "Yurtta sulh, cihanda sulh!"
    assert [e.ids for e in tok.encode_batch(["a b", "çğ"])] == [
        tok.encode("a b").ids,
        tok.encode("çğ").ids,
    ]
    assert tok.id_to_token(tok.token_to_id("</s>")) == "</s>"
    assert len(tok.fingerprint) == 16


@settings(max_examples=60, deadline=None)
@given(text=TURKISH)
def test_hf_decode_stream_concatenates_to_decode(hf_tokenizer_file: Path, text: str) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    ids = tok.encode(text).ids + [tok.eos_id]
    stream = tok.decode_stream()
    pieces = [stream.step(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids)
    # No piece ever contains a replacement character for a split multi-byte character.
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in tok.decode(ids)


@settings(max_examples=60, deadline=None)
@given(text=TURKISH)
def test_hf_continuation_after_every_cut(hf_tokenizer_file: Path, text: str) -> None:
    """A stream seeded with a prefix emits what the rest adds to the prefix's text (a prefix
    that ends inside a multi-byte character shows U+FFFD, which the rest completes)."""
    tok = load_tokenizer(hf_tokenizer_file)
    ids = tok.encode(text).ids
    for k in range(len(ids) + 1):
        stream = tok.decode_stream(context=ids[:k])
        rest = "".join(stream.step(i) for i in ids[k:]) + stream.flush()
        prefix = tok.decode(ids[:k])
        if "\ufffd" in prefix:
            assert text.endswith(rest)
        else:
            assert prefix + rest == text


def test_save_and_load_round_trip(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    out = save_tokenizer(tok, tmp_path / "tok")
    assert json.loads((out / MARKER_FILE).read_text()) == {"kind": "hf"}
    again = load_tokenizer(out)
    assert again.fingerprint == tok.fingerprint
    assert again.encode("Ne mutlu Türküm diyene").ids == tok.encode("Ne mutlu Türküm diyene").ids
    # A plain Hugging Face folder (no marker) loads too.
    (out / MARKER_FILE).unlink()
    assert load_tokenizer(out).fingerprint == tok.fingerprint


def test_fingerprint_differs_between_tokenizers(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    data = json.loads(hf_tokenizer_file.read_text())
    data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"])
    other = tmp_path / "tokenizer.json"
    other.write_text(json.dumps(data))
    assert load_tokenizer(other).fingerprint != load_tokenizer(hf_tokenizer_file).fingerprint


def test_bad_specs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="neither"):
        load_tokenizer(empty)


def test_documents_start_after_eos_unless_the_start_is_given(
    hf_tokenizer_file: Path, tmp_path: Path
) -> None:
    # ismail separates training documents by eos, so prompts start with it; a model imported
    # from transformers may have been trained to see its bos first ("start"), kept on save.
    tok = load_tokenizer(hf_tokenizer_file)
    assert tok.document_start_id == tok.eos_id == tok.token_to_id("</s>")
    assert load_tokenizer("tr").document_start_id == load_tokenizer("tr").eos_id
    tok.set_special_ids({"start": tok.token_to_id("<s>")})
    save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.document_start_id == tok.token_to_id("<s>") != again.eos_id
    with pytest.raises(TokenizerError, match="outside"):
        tok.set_special_ids({"start": 10**6})
