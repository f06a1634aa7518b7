"""The encoder's shortcuts give exactly what its checked paths give."""

from __future__ import annotations

from functools import cache

import tr_tokenizer
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tr_tokenizer.casing import LOWER, case_class
from tr_tokenizer.encoder import ChunkEncoder
from tr_tokenizer.suffixes import _CONTEXT_CHARS


@cache
def encoder() -> ChunkEncoder:
    return tr_tokenizer.load()._encoder


@cache
def roots(alternating: bool) -> list[int]:
    """Root ids longer than one letter (a one-letter root never takes suffixes in a parse)."""
    enc = encoder()
    return sorted(
        i
        for t, i in enc.root_ids.items()
        if (i in enc.voicing) == alternating and len(t.lstrip(" ")) > 1
    )


@cache
def suffixes() -> list[int]:
    """Every suffix id: literal pieces and shared ones spelled from their left context."""
    enc = encoder()
    return sorted({*enc.suffix_ids.values(), *(i for i, _ in enc.shared)})


@settings(max_examples=400, deadline=None)
@given(
    st.booleans(),
    st.integers(min_value=0),
    st.lists(st.integers(min_value=0), max_size=4),
)
def test_unchecked_parses_decode_to_the_word(
    alternating: bool, root: int, suffix_picks: list[int]
) -> None:
    # Every word is built from a parse (a real root, half of them with an alternating last
    # letter as in "ağaç" + "ı" -> "ağacı", then suffix tokens), so every word has one and the
    # shortcut's decision is checked on each of them.
    enc = encoder()
    root_ids = roots(alternating)
    suffix_ids = suffixes()
    ids = [root_ids[root % len(root_ids)], *(suffix_ids[k % len(suffix_ids)] for k in suffix_picks)]
    word = enc._decode([(i, 0) for i in ids])
    assume(len(word) <= _CONTEXT_CHARS)  # longer words are always checked by decoding
    case, low = case_class(word)
    assert case == LOWER and low == word
    path = enc._morph(low)
    assert path is not None, f"no parse of {word!r}, built from {ids}"
    if path[0][0] in enc.voicing:
        # the decoder may voice the root's last letter: the encoder must check by decoding
        assert not enc._parse_needs_no_check(case, low, path)
    else:
        assert enc._parse_needs_no_check(case, low, path)
        assert enc._decode(path) == word
