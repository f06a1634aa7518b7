"""Shared fixtures: the shipped tokenizer (loaded once) and the evaluation data location; and
the shipped tokenizer with and without its compiled segmenter, which the tests of the compiled
code compare (plain cached functions, since hypothesis tests call them too)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
import tr_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
PURE_ENV = "TR_TOKENIZER_PURE_PYTHON"


@pytest.fixture(scope="session")
def tok() -> tr_tokenizer.Tokenizer:
    return tr_tokenizer.load()


@cache
def native_tokenizer() -> tr_tokenizer.Tokenizer:
    """The shipped tokenizer with its compiled segmenter (skips the test where it is not built)."""
    tok = tr_tokenizer.load()
    if tok._encoder.native is None:
        pytest.skip("the compiled segmenter is not built")
    return tok


@cache
def pure_tokenizer() -> tr_tokenizer.Tokenizer:
    """The shipped tokenizer loaded with PURE_ENV set: everything runs in Python."""
    old = os.environ.get(PURE_ENV)
    os.environ[PURE_ENV] = "1"
    try:
        tok = tr_tokenizer.load()
    finally:
        if old is None:
            del os.environ[PURE_ENV]
        else:
            os.environ[PURE_ENV] = old
    assert tok._encoder.native is None
    return tok
