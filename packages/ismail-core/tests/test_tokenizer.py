"""The tokenizer contract (TokenizerProtocol) and its two implementations: tr-tokenizer, and a
Hugging Face tokenizer.json behind the same surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.layout import TOKENIZER_MARKER_FILE
from ismail_core.tokenizer import (
    EncodingProtocol,
    HFTokenizer,
    StreamDecoderProtocol,
    TokenizerError,
    TokenizerProtocol,
    TrTokenizer,
    load_tokenizer,
    save_tokenizer,
)

TURKISH = st.text(
    alphabet=st.sampled_from(list("abcçdefgğhıijklmnoöprsştuüvyzABCÇİIÖŞÜ .,!?'\n0123€😀")),
    max_size=60,
)


CONTRACT_TEXT = "Ne mutlu Türküm diyene! 😀 çğ"


@pytest.fixture(params=["tr", "hf"])
def any_tokenizer(request: pytest.FixtureRequest) -> TokenizerProtocol:
    """Each implementation of the contract: the shipped tr-tokenizer and a byte-level BPE."""
    if request.param == "tr":
        return load_tokenizer("tr")
    return load_tokenizer(request.getfixturevalue("hf_tokenizer_file"))


def test_both_implementations_satisfy_the_protocol(hf_tokenizer_file: Path) -> None:
    tr, hf = load_tokenizer("tr"), load_tokenizer(hf_tokenizer_file)
    assert isinstance(tr, TrTokenizer) and isinstance(hf, HFTokenizer)
    for tok in (tr, hf):
        assert isinstance(tok, TokenizerProtocol)
        assert isinstance(tok.encode("kitap"), EncodingProtocol)
        assert isinstance(tok.decode_stream(), StreamDecoderProtocol)


def test_encoding_ids_tokens_and_offsets_agree(any_tokenizer: TokenizerProtocol) -> None:
    tok, text = any_tokenizer, CONTRACT_TEXT
    enc = tok.encode(text)
    assert len(enc.ids) == len(enc.tokens) == len(enc.offsets) > 0
    assert [tok.token_to_id(t) for t in enc.tokens] == enc.ids
    assert [tok.id_to_token(i) for i in enc.ids] == enc.tokens
    # The spans run through the text in order and leave no character out.
    covered = 0
    for start, end in enc.offsets:
        assert 0 <= start <= covered and start <= end <= len(text)
        covered = max(covered, end)
    assert covered == len(text)
    assert tok.decode(enc.ids) == text
    assert [e.ids for e in tok.encode_batch([text, "kitap"])] == [enc.ids, tok.encode("kitap").ids]


def test_stream_seeded_with_context_emits_only_the_continuation(
    any_tokenizer: TokenizerProtocol,
) -> None:
    tok = any_tokenizer
    context, continuation = tok.encode("Ne mutlu Türküm").ids, tok.encode(" diyene!").ids
    stream = tok.decode_stream(context=context)
    assert "".join(stream.step(i) for i in continuation) + stream.flush() == " diyene!"


def test_special_ids_template_and_save(any_tokenizer: TokenizerProtocol, tmp_path: Path) -> None:
    tok = any_tokenizer
    assert tok.eos_id is not None and tok.eos_id in tok.special_tokens.values()
    assert tok.document_start_id == tok.eos_id
    assert all(tok.token_to_id(name) == idx for name, idx in tok.special_tokens.items())
    assert tok.decode([tok.eos_id], skip_special_tokens=True) == ""
    tok.chat_template = "{{ messages }}"
    again = load_tokenizer(save_tokenizer(tok, tmp_path / "tok"))
    assert (again.kind, again.fingerprint, again.vocab_size) == (
        tok.kind,
        tok.fingerprint,
        tok.vocab_size,
    )
    assert again.chat_template == "{{ messages }}"
    assert again.encode(CONTRACT_TEXT).ids == tok.encode(CONTRACT_TEXT).ids


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
    assert json.loads((out / TOKENIZER_MARKER_FILE).read_text()) == {"kind": "hf"}
    again = load_tokenizer(out)
    assert again.fingerprint == tok.fingerprint
    assert again.encode("Ne mutlu Türküm diyene").ids == tok.encode("Ne mutlu Türküm diyene").ids
    # A plain Hugging Face folder (no marker) loads too.
    (out / TOKENIZER_MARKER_FILE).unlink()
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
