"""The issue's quality targets on UD Turkish (evaluation data; skipped when it is absent)."""

from __future__ import annotations

import pytest
import tr_tokenizer
from tr_tokenizer.evaluate import (
    Sentence,
    aligned,
    morphology_alignment,
    one_letter_starts,
    read_conllu,
    roots_intact,
)

from .conftest import SHARED_DATA

UD = SHARED_DATA / "ud-turkish"
FILES = sorted(UD.glob("*.conllu"))


def test_alignment_definition() -> None:
    # word "kitaplar" at 0..8, lemma "kitap" (5 letters)
    assert aligned(0, 8, 5, [(0, 5), (5, 8)])
    assert not aligned(0, 8, 5, [(0, 3), (3, 5), (5, 8)])  # boundary inside the lemma
    assert not aligned(0, 8, 5, [(0, 8)])  # no boundary at the lemma's end
    assert aligned(0, 8, 5, [(0, 0), (0, 5), (5, 8)])  # a case marker before the word is fine


def test_roots_intact_and_one_letter_start_definitions() -> None:
    sentence = Sentence("kitaplar çıkan", [(0, 8, "kitap"), (9, 14, "çık")])
    assert roots_intact([sentence], lambda t: [(0, 3), (3, 8), (8, 12), (12, 14)]) == (1, 2)
    assert roots_intact([sentence], lambda t: [(0, 8), (8, 14)]) == (2, 2)
    assert one_letter_starts([sentence.text], lambda t: [(0, 8), (8, 10), (10, 14)]) == (1, 2)
    assert one_letter_starts([sentence.text], lambda t: [(0, 8), (8, 11), (11, 14)]) == (0, 2)


CONLLU = """# text = Yirmilerindeki kitapları okudum.
1-2\tYirmilerindeki\t_\t_
1\tYirmilerinde\tyirmi\tNUM
2\tki\tki\tADP
3\tkitapları\tkitap\tNOUN
4\tokudum\toku\tVERB
5\t.\t.\tPUNCT

"""


def test_read_conllu_words_and_multiword_tokens(tmp_path, tok) -> None:
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    (sentence,) = read_conllu(path)
    words = [(sentence.text[a:b], lemma) for a, b, lemma in sentence.words]
    assert words == [("Yirmilerindeki", "yirmi"), ("kitapları", "kitap"), ("okudum", "oku"),
                     (".", ".")]  # fmt: skip
    good, total = morphology_alignment([sentence], lambda t: tok.encode(t).offsets)
    assert total == 3 and 0 <= good <= 3


@pytest.fixture(scope="module")
def ud_sentences():
    if not FILES:
        pytest.skip(f"UD Turkish data not found under {UD}")
    sentences = [s for f in FILES for s in read_conllu(f)]
    assert len(sentences) > 7000
    return sentences


def _tokens_per_word(tok, sentences) -> float:
    n_tokens = n_words = 0
    for s in sentences:
        ids = tok.encode_ids(s.text)
        assert tok.decode(ids) == s.text
        n_tokens += len(ids)
        n_words += len(s.text.split())
    return n_tokens / n_words


@pytest.mark.slow
def test_v1_targets_on_ud_turkish(ud_sentences) -> None:
    """The morphology-first vocabulary: every inflected word split at its lemma."""
    tok = tr_tokenizer.load(version="v1")
    assert _tokens_per_word(tok, ud_sentences) <= 2.1
    good, total = morphology_alignment(ud_sentences, lambda t: tok.encode(t).offsets)
    assert total > 20000 and good / total >= 0.70


@pytest.mark.slow
def test_default_targets_on_ud_turkish(tok, ud_sentences) -> None:
    """The default (v4) keeps frequent inflected words whole, a sentence's first word on its
    spaced root (glue markers) and derived stems whole (yaşlı + lar): fewer tokens than a
    byte-level BPE-32k trained on the same text (1.808 per word here, bench/tokenizer.py; v4
    measured 1.763), no one-letter starts, at least 95% of roots whole (issue 19; v3 measured
    94.7%, v4 95.3%)."""
    assert _tokens_per_word(tok, ud_sentences) <= 1.77
    offsets = {s.text: tok.encode(s.text).offsets for s in ud_sentences}
    bad, words = one_letter_starts([s.text for s in ud_sentences], offsets.__getitem__)
    assert words > 40000 and bad / words <= 0.003
    whole, eligible = roots_intact(ud_sentences, offsets.__getitem__)
    assert eligible > 60000 and whole / eligible >= 0.95
