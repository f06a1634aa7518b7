"""The compiled segmenter (tr_tokenizer._native) gives exactly the ids of the Python encoder.

The Python encoder (ChunkEncoder.encode_chunk_python) is the reference; the compiled one must
agree on every chunk it accepts, and hand every other chunk back (None).
"""

from __future__ import annotations

import os
from functools import cache

import pytest
import tr_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.casing import tr_capitalize, tr_upper
from tr_tokenizer.encoder import native_available
from tr_tokenizer.pretokenize import PATTERN
from tr_tokenizer.suffixes import INVENTORY, left_context, parse_form, realize

from .conftest import PURE_ENV, native_tokenizer, pure_tokenizer

LOWER = "abcçdefgğhıijklmnoöprsştuüvyzâîûqwx"
UPPER = tr_upper(LOWER)
WORD_CHARS = LOWER + UPPER + "'’"


def test_the_compiled_segmenter_is_built() -> None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        pytest.skip(f"{PURE_ENV} is set")
    assert native_available(), (
        "tr_tokenizer._native is not built, so encoding runs in pure Python (same ids, several "
        "times slower): install a C compiler and the Python headers, then run "
        "`uv sync --reinstall-package tr-tokenizer`"
    )


def assert_same_chunk(chunk: str) -> None:
    enc = native_tokenizer()._encoder
    got = enc.native.encode_chunk(chunk)
    if got is not None:
        assert got == enc.encode_chunk_python(chunk), chunk


def assert_same_encoding(text: str) -> None:
    """The compiled and the pure Python tokenizer give `text` the same ids and offsets, and the
    ids decode back to it."""
    fast, pure = native_tokenizer(), pure_tokenizer()
    got, want = fast.encode(text), pure.encode(text)
    assert got.ids == want.ids
    assert got.offsets == want.offsets
    assert fast.decode(got.ids) == text


@cache
def roots() -> list[str]:
    return sorted(native_tokenizer()._encoder.root_ids)


@cache
def alternating_roots() -> list[str]:
    enc = native_tokenizer()._encoder
    return sorted(t for t, i in enc.root_ids.items() if i in enc.voicing)


def spell(root: str, forms: list[str]) -> str:
    """root + suffixes spelled by the harmony rules (as real inflected words are)."""
    word = root
    for form in forms:
        word += realize(parse_form(form), *left_context(word)) or ""
    return word


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=WORD_CHARS, min_size=1, max_size=44), st.booleans())
def test_same_ids_on_letter_strings(text: str, space: bool) -> None:
    assert_same_chunk(" " + text if space else text)


@settings(max_examples=600, deadline=None)
@given(
    st.integers(min_value=0),
    st.booleans(),
    st.lists(st.sampled_from(INVENTORY), max_size=4),
    st.sampled_from(["lower", "capitalized", "upper", "apostrophe", "apostrophe-upper"]),
)
def test_same_ids_on_inflected_words(index: int, alternating: bool, forms, casing: str) -> None:
    # real roots (half with a voicing last letter: kitap -> kitabı) with harmonic suffixes, in
    # every casing the encoder treats differently, and as proper names with an apostrophe
    pool = alternating_roots() if alternating else roots()
    root = pool[index % len(pool)]
    word = spell(root, forms)
    if casing.startswith("apostrophe") and forms:
        suffixes = word[len(root) :]
        word = root + "'" + suffixes
        word = tr_capitalize(word) if casing == "apostrophe" else tr_upper(word)
    elif casing == "capitalized":
        word = tr_capitalize(word)
    elif casing == "upper":
        word = tr_upper(word)
    assert_same_chunk(word)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_same_ids_and_offsets_on_any_text(text: str) -> None:
    assert_same_encoding(text)


def test_typical_turkish_text_is_encoded_natively() -> None:
    text = (
        "Kitaplarımızdan birini okudunuz mu? Ankara'da yaşayan öğretmenler, 1920'de kurulan "
        "Meclis'in önünde toplandı. İSTANBUL'DAKİ çocukların gözlerindeki ışık, ağacın "
        "dallarında öten kuşlar... Yarın sabah saat 9.30'da görüşmek üzere!\n\tTeşekkürler."
    )
    enc = native_tokenizer()._encoder
    chunks = PATTERN.findall(text)
    left = [c for c in chunks if enc.native.encode_chunk(c) is None]
    assert left == []
    assert native_tokenizer().encode_ids(text) == pure_tokenizer().encode_ids(text)


def test_other_chunks_are_handed_back() -> None:
    enc = native_tokenizer()._encoder
    for chunk in (" café", "😀", "«", " Ωμέγα", "x" * 41, "Ünï"):
        assert enc.native.encode_chunk(chunk) is None, chunk
    text = " café 😀 «Ωμέγα» " + "x" * 41
    assert native_tokenizer().encode_ids(text) == pure_tokenizer().encode_ids(text)


def test_cache_limit_clears_both_caches() -> None:
    tok = tr_tokenizer.load()
    if tok._encoder.native is None:
        pytest.skip("the compiled segmenter is not built")
    chunks = PATTERN.findall("bir iki üç dört beş altı yedi sekiz")
    cache, lens = {}, {}
    ids = tok._encoder.native.encode(chunks, cache, lens, tok._encoder.encode_chunk_python, 3)
    assert ids == pure_tokenizer().encode_ids("bir iki üç dört beş altı yedi sekiz")
    assert 1 <= len(cache) <= 3 and cache.keys() == lens.keys()
    for chunk, chunk_ids in cache.items():
        assert (chunk_ids, lens[chunk]) == tok._encoder.encode_chunk_python(chunk)


def test_fallback_must_return_ids_and_lengths() -> None:
    tok = native_tokenizer()
    with pytest.raises(TypeError, match="fallback must return"):
        tok._encoder.native.encode(["😀"], {}, {}, lambda chunk: [1, 2], 10)


# every kind of char PATTERN tells apart: Turkish and other letters, digits of several scripts,
# other numerics, marks, "_", apostrophes, punctuation and symbols, spaces of several kinds
SPLIT_CHARS = (
    WORD_CHARS + "éßΩж中ـ٣²½\u0301_'’.,!?«»-/😀0123456789" + " \t\n\r\x0b\x0c\x1c\xa0\u2003\u3000"
)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(alphabet=SPLIT_CHARS, max_size=60), st.text(max_size=60)))
def test_split_is_the_pretokenizer(text: str) -> None:
    from tr_tokenizer import _native

    native_tokenizer()  # skips if the module is not built
    assert _native.split(text) == PATTERN.findall(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=SPLIT_CHARS, max_size=200))
def test_same_ids_and_offsets_on_mixed_text(text: str) -> None:
    assert_same_encoding(text)
