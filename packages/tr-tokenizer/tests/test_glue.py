"""Glue markers (vocabularies v3 and later): a word with no space before it keeps its spaced root.

A text's first word, a word after a bracket or a quote, has no leading space, while roots carry
one (" kitap"). <|glue|>, <|glue_cap|> and <|glue_upper|> drop the next piece's space, so such a
word is spelled with the same root id as everywhere else; the capitalized and all-caps ones
replace <|cap|> and <|upper|>, so a sentence start costs no extra token.
"""

from __future__ import annotations

import pytest
import tr_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.casing import tr_capitalize, tr_upper
from tr_tokenizer.vocab import GLUE, GLUE_CAP, GLUE_UPPER

from .conftest import native_tokenizer, pure_tokenizer

# words whose spaced root is in the shipped vocabulary, written as after a space
WORDS = ["kitabı", "evlerimizden", "okula", "tüylerimde", "notaları", "arasında", "gözlerini"]


def test_the_shipped_vocabulary_has_the_glue_markers(tok) -> None:
    assert all(tok.kind(tok.token_to_id(t)) == "case" for t in (GLUE, GLUE_CAP, GLUE_UPPER))


@pytest.mark.parametrize("word", WORDS)
def test_a_sentence_start_uses_the_root_of_the_word_after_a_space(tok, word: str) -> None:
    spaced = tok.encode(" " + word).ids
    for text, marker in ((tr_capitalize(word), GLUE_CAP), (tr_upper(word), GLUE_UPPER)):
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert ids == [tok.token_to_id(marker), *spaced], tok.encode(text).tokens


@pytest.mark.parametrize("word", WORDS)
def test_a_word_after_a_bracket_keeps_its_root(tok, word: str) -> None:
    """Lowercase after a bracket: the glued parse unless an unspaced one costs less."""
    text = f"({word})"
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    root = tok.encode(" " + word).tokens[0].strip()
    spans = [(a, b) for a, b in enc.offsets if a != b]
    assert not any(1 < x < 1 + len(root) for a, b in spans for x in (a, b)), enc.tokens


def test_offsets_of_a_glued_word(tok) -> None:
    enc = tok.encode("Kitaplarımızdan okudum")
    assert enc.tokens[:3] == [GLUE_CAP, " kitap", "+lArImIzDAn"]
    assert enc.offsets[:3] == [(0, 0), (0, 5), (5, 15)]  # the root's space is not in the text


def test_glue_markers_decode(tok) -> None:
    g, gc, gu = (tok.token_to_id(t) for t in (GLUE, GLUE_CAP, GLUE_UPPER))
    kitap, plural = tok.token_to_id(" kitap"), tok.token_to_id("+lAr")
    assert tok.decode([gc, kitap, plural]) == "Kitaplar"
    assert tok.decode([gu, kitap, plural]) == "KİTAPLAR"
    assert tok.decode([g, kitap]) == "kitap"
    # a root whose last letter voices before a vowel keeps doing so when glued
    accusative = tok.token_to_id("+(y)I")
    for root in [i for i in tok.vocab.voicing if tok.id_to_token(i).startswith(" ")][:20]:
        spaced = tok.decode([root, accusative])
        assert tok.decode([gc, root, accusative]) == tr_capitalize(spaced[1:])
    # the glue applies to the next piece only, and only to a leading space
    assert tok.decode([g, kitap, kitap]) == "kitap kitap"
    assert tok.decode([g, tok.token_to_id("a"), kitap]) == "a kitap"
    assert tok.decode([g, tok.token_to_id("<0x41>"), kitap]) == "A kitap"
    assert tok.decode([g, tok.token_to_id("<|cap|>"), kitap]) == " Kitap"


def test_glue_in_streaming_decode(tok) -> None:
    ids = tok.encode("Kitabı okudum. (Evlerimizden) ANKARA'DA").ids
    stream = tok.decode_stream()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_vocabularies_without_glue_keep_their_ids() -> None:
    """v1 and v2 have no glue markers: their words with no space before them are encoded as
    before (the unspaced root or the fallback segmentation)."""
    for version in ("v1", "v2"):
        tok = tr_tokenizer.load(version=version)
        assert tok.token_to_id(GLUE) is None
        assert tok.encode("Kitabı").tokens[0] == "<|cap|>"


TEXT = st.text(
    st.sampled_from(list("abcçdefgğhıijklmnoöprsştuüvyzABCÇDEĞIİKLMNOÖSŞTUÜ'’ ()\"\n.")),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_compiled_and_python_glue_agree(text: str) -> None:
    native, pure = native_tokenizer(), pure_tokenizer()
    ids = native.encode_ids(text)
    assert ids == pure.encode_ids(text)
    assert native.decode(ids) == text == pure.decode(ids)
