"""The compiled decoder (Segmenter.decode) writes exactly the text of decoder.DecodeState.

Tokenizer._decode_python (the Python state machine) is the reference: the compiled one must
agree on every id sequence, whether encode made it or not, and hand back (None) only what it
leaves to Python.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.decoder import BYTE, CAP, GLUE, SHARED, SPECIAL, UPPER

from .conftest import native_tokenizer, pure_tokenizer

TURKISH = "abcçdefgğhıijklmnoöprsştuüvyzâîû ABCÇDEFGĞHIİJKLMNOÖPRSŞTUÜVYZ'’.,;:!?-\n0123456789"


@cache
def id_groups() -> dict[str, list[int]]:
    """Ids by what the decoder does with them: each group has its own rule."""
    tok = native_tokenizer()
    t = tok._tables
    ids = range(tok.vocab_size)
    groups = {
        "special": [i for i in ids if t.kind[i] == SPECIAL],
        "case": [i for i in ids if t.kind[i] in (CAP, UPPER, GLUE)],
        "byte": [i for i in ids if t.kind[i] == BYTE],
        "shared": [i for i in ids if t.kind[i] == SHARED],
        "voicing": [i for i in ids if t.voiced[i] is not None],
        "spaced word": [i for i in ids if t.spaced_word[i]],
        "letters": [i for i in ids if t.letters_only[i] and t.kind[i] != SHARED],
        # pieces that start with no letter (a case marker before them, a held letter)
        "other": [i for i in ids if t.kind[i] == 0 and not t.text[i][:1].isalpha()],
        "odd letters": [
            i
            for i in ids
            if any(c.isalpha() and c.lower() not in TURKISH.lower() for c in t.text[i])
        ],  # fmt: skip
    }
    assert all(groups.values()), {k: len(v) for k, v in groups.items()}
    return groups


@st.composite
def id_sequences(draw) -> list[int]:
    groups = id_groups()
    n = native_tokenizer().vocab_size
    one = st.one_of(
        st.integers(min_value=0, max_value=n - 1),
        *(st.sampled_from(g) for g in groups.values()),
    )
    return draw(st.lists(one, max_size=40))


def assert_same_text(ids: list[int]) -> None:
    native, pure = native_tokenizer(), pure_tokenizer()
    for skip in (False, True):
        got = native._encoder.native.decode(list(ids), skip)
        want = pure._decode_python(ids, skip)
        assert got is None or got == want, (ids, skip)
        assert native.decode(ids, skip) == want == pure.decode(ids, skip), (ids, skip)


@settings(max_examples=800, deadline=None)
@given(id_sequences())
def test_same_text_on_random_ids(ids: list[int]) -> None:
    assert_same_text(ids)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 255), st.integers(0x80, 0xFF)), max_size=24), st.data())
def test_same_text_on_byte_runs(data: list[int], draw) -> None:
    # runs of byte tokens that form valid, invalid, incomplete and overlong UTF-8 (and lone
    # surrogates: ED A0 80), between text pieces, shared suffixes and case markers
    tok = native_tokenizer()
    byte0 = tok._encoder.byte0
    ids = [byte0 + b for b in data]
    groups = id_groups()
    for _ in range(draw.draw(st.integers(0, 4))):
        pos = draw.draw(st.integers(0, len(ids)))
        group = draw.draw(st.sampled_from(["shared", "case", "voicing", "letters", "special"]))
        ids.insert(pos, draw.draw(st.sampled_from(groups[group])))
    assert_same_text(ids)


@pytest.mark.parametrize(
    "data",
    [b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80", b"\xe0\x80\xaf", b"\xc0\xaf",
     b"\xf4\x90\x80\x80", b"\xc3", b"\xc3\xa9\xff", b"\xe2\x82", b"\xe2\x82\xac\x80"],
)  # fmt: skip
def test_same_text_on_invalid_utf8(data: bytes) -> None:
    byte0 = native_tokenizer()._encoder.byte0
    ids = [byte0 + b for b in data]
    assert_same_text(ids)
    assert_same_text(ids + [native_tokenizer().token_to_id(" kitap")])


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_same_text_on_encodings_of_any_text(text: str) -> None:
    ids = native_tokenizer().encode_ids(text)
    assert native_tokenizer()._encoder.native.decode(ids) in (text, None)
    assert native_tokenizer().decode(ids) == text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=TURKISH, max_size=300))
def test_same_text_on_encodings_of_turkish_text(text: str) -> None:
    ids = native_tokenizer().encode_ids(text)
    assert native_tokenizer()._encoder.native.decode(ids) == text


def test_real_text_is_decoded_natively() -> None:
    text = (
        "Kitaplarımızdan birini okudunuz mu? Ankara'da yaşayan öğretmenler, 1920'de kurulan "
        "Meclis'in önünde toplandı. İSTANBUL'DAKİ çocukların gözlerindeki ışık, ağacın "
        "dallarında öten kuşlar... Ağacı, KİTABI ve Straße'yi gördük: café, naïve 😀 «ok».\n"
    )
    tok = native_tokenizer()
    ids = tok.encode_ids(text * 3)
    assert tok._encoder.native.decode(ids) == text * 3 == tok._decode_python(ids)


def test_ids_are_checked_as_in_python() -> None:
    tok = native_tokenizer()
    n = tok.vocab_size
    for bad in ([5, n], [-1], [2**70], [True, n + 3]):
        with pytest.raises(
            ValueError, match=f"unknown token id .*: this vocabulary has ids 0..{n - 1}"
        ):
            tok.decode(bad)
    ids = tok.encode_ids(" Kitabı okudum")
    np = pytest.importorskip("numpy")
    assert tok.decode(np.array(ids)) == " Kitabı okudum"
    assert tok.decode(iter(ids)) == tok.decode(tuple(ids)) == " Kitabı okudum"
    assert tok.decode([True, False]) == tok._decode_python([1, 0])
    with pytest.raises(TypeError):
        tok.decode([None])
