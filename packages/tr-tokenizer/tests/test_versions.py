"""Shipped vocabulary versions: the old one keeps its meaning, the new one is the default."""

from __future__ import annotations

import pytest
import tr_tokenizer
from tr_tokenizer.tokenizer import DEFAULT_VOCAB, SHIPPED_VOCABULARIES, shipped_version

V1_FINGERPRINT = "5b34758e5c813cf0"  # what every checkpoint and data set made before v2 records
V2_FINGERPRINT = "0bc311cb62fccf6e"  # ... and those made with v2, the default before v3
V3_FINGERPRINT = "6620d83490d89744"  # ... and those made with v3, the default before v4


@pytest.mark.parametrize(
    ("version", "fingerprint"),
    [("v1", V1_FINGERPRINT), ("v2", V2_FINGERPRINT), ("v3", V3_FINGERPRINT)],
)
def test_earlier_versions_are_still_shipped_unchanged(version: str, fingerprint: str) -> None:
    old = tr_tokenizer.load(version=version)
    assert old.fingerprint == fingerprint
    assert shipped_version(fingerprint) == version


def test_default_is_the_newest_and_differs(tok) -> None:
    assert DEFAULT_VOCAB == SHIPPED_VOCABULARIES[-1] != "v1"
    assert tok.fingerprint != V1_FINGERPRINT
    assert shipped_version(tok.fingerprint) == DEFAULT_VOCAB
    assert tr_tokenizer.load(version=DEFAULT_VOCAB).fingerprint == tok.fingerprint
    assert shipped_version("0" * 16) is None


def test_saved_copy_loads_as_the_version_it_is(tmp_path) -> None:
    tr_tokenizer.load(version="v1").save(tmp_path / "tok")
    assert tr_tokenizer.load(tmp_path / "tok").fingerprint == V1_FINGERPRINT


def test_bad_version_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="no shipped vocabulary 'v9'; this tr-tokenizer ships v1"):
        tr_tokenizer.load(version="v9")
    with pytest.raises(ValueError, match="not both"):
        tr_tokenizer.load(tmp_path, version="v1")
