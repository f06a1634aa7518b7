"""The encoder's shortcuts give exactly what its checked paths give."""

from __future__ import annotations

from functools import cache

import tr_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.casing import LOWER, case_class

LETTERS = "abcçdefgğhıijklmnoöprsştuüvyzâîû'’"


@cache
def encoder():
    return tr_tokenizer.load()._encoder


@cache
def roots(alternating: bool) -> list[str]:
    enc = encoder()
    return sorted(t for t, i in enc.root_ids.items() if (i in enc.voicing) == alternating)


@settings(max_examples=400, deadline=None)
@given(
    st.booleans(),
    st.integers(min_value=0),
    st.lists(st.sampled_from(list(LETTERS)), max_size=12).map("".join),
)
def test_unchecked_parses_decode_to_the_word(alternating: bool, index: int, rest: str) -> None:
    # words made of a real root (half of them with an alternating last letter: "ağaç" +
    # "ı" decodes as "ağacı") plus letters, so most of them have a parse with suffixes
    candidates = roots(alternating)
    word = candidates[index % len(candidates)] + rest
    enc = encoder()
    case, low = case_class(word)
    assert case == LOWER
    path = enc._morph(low)
    if path is not None and enc._parse_needs_no_check(case, low, path):
        assert enc._decode(path) == word


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(LETTERS)), min_size=1, max_size=50).map("".join))
def test_unchecked_parses_decode_to_any_lowercase_word(rest: str) -> None:
    enc = encoder()
    for word in (rest, " " + rest):
        case, low = case_class(word)
        path = enc._morph(low)
        if path is not None and enc._parse_needs_no_check(case, low, path):
            assert enc._decode(path) == word
