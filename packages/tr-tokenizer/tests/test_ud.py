"""The issue's quality targets on UD Turkish (evaluation data; skipped when it is absent)."""

from __future__ import annotations

import pytest
from tr_tokenizer.evaluate import aligned, morphology_alignment, read_conllu

from .conftest import SHARED_DATA

UD = SHARED_DATA / "ud-turkish"
FILES = sorted(UD.glob("*.conllu"))


def test_alignment_definition() -> None:
    # word "kitaplar" at 0..8, lemma "kitap" (5 letters)
    assert aligned(0, 8, 5, [(0, 5), (5, 8)])
    assert not aligned(0, 8, 5, [(0, 3), (3, 5), (5, 8)])  # boundary inside the lemma
    assert not aligned(0, 8, 5, [(0, 8)])  # no boundary at the lemma's end
    assert aligned(0, 8, 5, [(0, 0), (0, 5), (5, 8)])  # a case marker before the word is fine


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


@pytest.mark.slow
@pytest.mark.skipif(not FILES, reason=f"UD Turkish data not found under {UD}")
def test_targets_on_ud_turkish(tok) -> None:
    sentences = [s for f in FILES for s in read_conllu(f)]
    assert len(sentences) > 7000
    n_tokens = n_words = 0
    for s in sentences:
        ids = tok.encode_ids(s.text)
        assert tok.decode(ids) == s.text
        n_tokens += len(ids)
        n_words += len(s.text.split())
    assert n_tokens / n_words <= 2.1
    good, total = morphology_alignment(sentences, lambda t: tok.encode(t).offsets)
    assert total > 20000 and good / total >= 0.70
