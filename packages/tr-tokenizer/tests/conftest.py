"""Shared fixtures: the shipped tokenizer (loaded once) and the evaluation data location."""

from __future__ import annotations

from pathlib import Path

import pytest
import tr_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tok() -> tr_tokenizer.Tokenizer:
    return tr_tokenizer.load()
