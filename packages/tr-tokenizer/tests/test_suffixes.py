"""Suffix spelling rules and Turkish casing, checked against real Turkish word forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.casing import CAPITALIZED, LOWER, MIXED, UPPER, case_class, tr_lower, tr_upper
from tr_tokenizer.suffixes import (
    INVENTORY,
    canonical_chain,
    context_key,
    context_keys,
    left_context,
    parse_form,
    realize,
)

# (stem, suffix form, expected spelling), from standard Turkish forms
CASES = [
    ("kitap", "lAr", "lar"), ("ev", "lAr", "ler"), ("göz", "DA", "de"), ("kitap", "DA", "ta"),
    ("ağaç", "DAn", "tan"), ("oda", "(y)A", "ya"), ("ev", "(y)A", "e"), ("oda", "(s)I", "sı"),
    ("ev", "(s)I", "i"), ("okul", "(n)In", "un"), ("kapı", "(n)In", "nın"), ("göz", "(I)m", "üm"),
    ("araba", "(I)m", "m"), ("gel", "DI", "di"), ("git", "DI", "ti"), ("kork", "DI", "tu"),
    ("gör", "DI", "dü"), ("gel", "(y)AcAk", "ecek"), ("oku", "(y)AcAk", "yacak"),
    ("iş", "CI", "çi"), ("yol", "CI", "cu"), ("söz", "lIk", "lük"), ("kitap", "lArI", "ları"),
    ("Ankara'", "(y)A", "ya"), ("Mehmet'", "DA", "te"), ("İZMİR'", "DA", "de"),
    ("kal", "Iyor", "ıyor"), ("gör", "Iyor", "üyor"), ("bir", "(ş)Ar", "er"),
    ("iki", "(ş)Ar", "şer"),
]  # fmt: skip


@pytest.mark.parametrize("stem,form,expected", CASES)
def test_realize_matches_turkish(stem: str, form: str, expected: str) -> None:
    assert realize(parse_form(form), *left_context(stem)) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aeıioöuükptrgIİAÖ'’ 1.\u0307")), max_size=60))
def test_context_keys_match_the_backward_scan(text: str) -> None:
    assert context_keys(text) == [context_key(text[:i]) for i in range(len(text) + 1)]


def test_no_vowel_context_is_not_realizable() -> None:
    assert realize(parse_form("DA"), *left_context("1920'")) is None
    assert realize(parse_form("lAr"), *left_context("")) is None
    assert left_context("word ") == (None, None)


def test_inventory_forms_parse_and_chains_resolve_buffers() -> None:
    for form in INVENTORY:
        assert parse_form(form)
    assert canonical_chain(["lAr", "(s)I", "nDAn"]) == "lArInDAn"
    assert canonical_chain(["(y)AcAğ", "(I)m"]) == "(y)AcAğIm"
    assert canonical_chain(["(s)I", "(y)lA"]) == "(s)Iyl" + "A"
    with pytest.raises(ValueError, match="bad suffix form"):
        parse_form("(yA")


def test_turkish_casing() -> None:
    assert tr_lower("İSTANBUL IŞIK") == "istanbul ışık"
    assert tr_upper("istanbul ışık") == "İSTANBUL IŞIK"
    assert "İ".lower() != "i"  # why the Turkish mapping is needed
    assert case_class(" Işık") == (CAPITALIZED, " ışık")
    assert case_class("IŞIK") == (UPPER, "ışık")
    assert case_class("ışık") == (LOWER, "ışık")
    assert case_class("iPhone")[0] == MIXED
    assert case_class("I")[0] == CAPITALIZED  # one letter: capitalized, not all-caps


def test_context_keys_in_one_harmony_class_spell_every_suffix_alike() -> None:
    # the encoder shares one suffix table per class (encoder._harmony_class); that is only
    # lossless if every inventory form and every shipped shared suffix is spelled identically
    import tr_tokenizer
    from tr_tokenizer.encoder import _harmony_class
    from tr_tokenizer.suffixes import VOWELS

    forms = {parse_form(form) for form in INVENTORY}
    forms |= {elements for _, elements in tr_tokenizer.load()._encoder.shared}
    vowels = sorted(VOWELS)
    keys = [(v, v) for v in vowels] + [(c, v) for c in "tr" for v in [*vowels, None]]
    classes = {_harmony_class(key) for key in keys}
    assert len(classes) == 4 + 2 * 5  # vowel-final, voiceless, other: 4 harmony classes each
    for key in keys:
        same = _harmony_class(key)
        for elements in forms:
            assert realize(elements, *key) == realize(elements, *same), (key, elements)


def test_nominal_morphotactics() -> None:
    from tr_tokenizer.suffixes import may_follow

    assert may_follow(None, "lArI") and may_follow("lAr", "(I)mIz") and may_follow("DA", "ki")
    assert may_follow("DA", "lAr")  # copula: evdeler
    assert not may_follow("(y)A", "lArI")  # not + a + ları
    assert not may_follow("(s)I", "(I)m") and not may_follow("(I)m", "lAr")
    assert not may_follow("DAn", "DA") and not may_follow("DA", "lIk")


def test_training_parser_keeps_to_morphotactics() -> None:
    from tr_tokenizer.trainer import _MorphParser

    parser = _MorphParser({"not", "nota", "ev"})
    assert parser.parses("notaları") == [(pytest.approx(1.996), "nota", ["lArI"])]
    assert parser.parse("evdekileri") == ("ev", ["DA", "ki", "lArI"])
    assert parser.parse("evdeler") == ("ev", ["DA", "lAr"])


def test_training_parser_takes_proper_names_only_before_an_apostrophe() -> None:
    from tr_tokenizer.trainer import _MorphParser

    parser = _MorphParser({"ara", "aras", "ankara"}, proper=frozenset({"aras", "ankara"}))
    assert parser.parse("arasında") == ("ara", ["(s)I", "nDA"])
    assert parser.parse("aras'ta") == ("aras", ["'", "DA"])
    assert parser.parse("aras") == ("aras", [])
    assert parser.parse("ankarada") is None  # a proper name's suffix follows an apostrophe
    assert _MorphParser({"ara", "aras"}).parse("arasında") == ("aras", ["(s)I", "nDA"])
