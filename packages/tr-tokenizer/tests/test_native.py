"""The compiled segmenter (tr_tokenizer._native) gives exactly the ids of the Python encoder.

The Python encoder (ChunkEncoder.encode_chunk_python) is the reference; the compiled one must
agree on every chunk it accepts, and hand every other chunk back (None).
"""

from __future__ import annotations

import os
from functools import cache

import pytest
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


# every kind of char PATTERN tells apart: Turkish and other letters, digits of several scripts,
# other numerics, marks, "_", apostrophes, punctuation and symbols, spaces of several kinds
SPLIT_CHARS = (
    WORD_CHARS + "éßΩж中ـ٣²½\u0301_'’.,!?«»-/😀0123456789" + " \t\n\r\x0b\x0c\x1c\xa0\u2003\u3000"
)


def fresh_segmenter():
    """A compiled segmenter of the shipped vocabulary with an empty cache of its own."""
    from tr_tokenizer import _native

    return _native.Segmenter(native_tokenizer()._encoder.native_tables())


WORDS = "bir iki üç dört beş altı yedi sekiz dokuz on bir iki üç Ankara'da ANKARA'DA"


def test_cache_cleared_at_the_limit_gives_the_same_ids() -> None:
    seg = fresh_segmenter()
    fallback = native_tokenizer()._encoder.encode_chunk_python
    want = pure_tokenizer().encode(WORDS)
    for _ in range(2):  # the second pass meets a cache that holds the last chunks
        assert seg.encode_text(WORDS, fallback, 3) == want.ids
        assert 1 <= seg.cached <= 3
        assert seg.offsets(WORDS, fallback, 3, 0) == want.offsets
        assert 1 <= seg.cached <= 3
    assert seg.encode_text(WORDS, fallback, 1000) == want.ids
    assert seg.cached == len(set(PATTERN.findall(WORDS)))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=SPLIT_CHARS, max_size=80), st.integers(min_value=0, max_value=500))
def test_offsets_from_the_compiled_cache(text: str, start: int) -> None:
    # offsets before any encode (misses) and after it (hits) are the Python encoder's
    seg = fresh_segmenter()
    fallback = native_tokenizer()._encoder.encode_chunk_python
    want = [(a + start, b + start) for a, b in pure_tokenizer().encode(text).offsets]
    assert seg.offsets(text, fallback, 1000, start) == want
    seg.encode_text(text, fallback, 1000)
    assert seg.offsets(text, fallback, 1000, start) == want


def test_offsets_around_special_tokens() -> None:
    text = "<|user|>Kitaplarımızdan birini<|end|> okudunuz mu? <|assistant|>Evet."
    got = native_tokenizer().encode(text, allow_special=True)
    want = pure_tokenizer().encode(text, allow_special=True)
    assert got.ids == want.ids and got.offsets == want.offsets


def test_chunks_left_to_python_are_cached() -> None:
    seg = fresh_segmenter()
    encoder = native_tokenizer()._encoder
    calls: list[str] = []

    def fallback(chunk: str):
        calls.append(chunk)
        return encoder.encode_chunk_python(chunk)

    long_word = " " + "x" * 60  # longer than MAX_CHARS, as is a word of other letters
    text = f" café{long_word} café çay{long_word} Ωμέγα"
    want = pure_tokenizer().encode(text)
    assert seg.encode_text(text, fallback, 1000) == want.ids
    assert calls == [" café", long_word, " Ωμέγα"]
    assert seg.encode_text(text, fallback, 1000) == want.ids
    assert seg.offsets(text, fallback, 1000, 0) == want.offsets
    assert len(calls) == 3  # every later lookup was a hit


@pytest.mark.parametrize(
    "result",
    [
        [1, 2],
        ((1,), (1, 1)),  # fewer ids than lengths
        ((1,), (2,)),  # the lengths do not add up to the chunk's
        ((-1,), (1,)),  # no such id
        ((1.0,), (1,)),
        ((10**30,), (1,)),
    ],
)
def test_fallback_must_return_ids_and_lengths(result) -> None:
    with pytest.raises(TypeError, match="fallback must return"):
        fresh_segmenter().encode_text("😀", lambda chunk: result, 10)


def test_fallback_errors_propagate() -> None:
    def fallback(chunk: str):
        raise KeyError(chunk)

    seg = fresh_segmenter()
    with pytest.raises(KeyError, match="😀"):
        seg.encode_text("a 😀", fallback, 10)
    with pytest.raises(KeyError, match="😀"):
        seg.offsets("a 😀", fallback, 10, 0)
    assert seg.cached == 1  # "a", before the error


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
