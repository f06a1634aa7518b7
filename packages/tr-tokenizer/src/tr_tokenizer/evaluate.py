"""Quality measures: tokens per word, bytes per token, round trip, morphology alignment.

Morphology alignment: over the words whose lemma is a proper prefix of the word (compared in
Turkish lowercase), the share where a token boundary falls exactly at the lemma's end and no
token boundary falls strictly inside the lemma.
Roots intact: over the words whose lemma (letters only, two or more) is a prefix of the word or
the word itself, the share with no token boundary strictly inside the lemma.
One-letter starts: over lowercase words of four or more letters, the share whose first token
covers only the first letter (ç + ı + kan, s + izin): a cut no linguist would make.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import regex

from tr_tokenizer.casing import tr_lower

Offsets = Sequence[tuple[int, int]]
_LOWER_WORD = regex.compile(r"(?<!\p{L})\p{Ll}{4,}(?!\p{L})")


@dataclass
class Sentence:
    """A sentence's text and its words as (start, end, lemma) character spans."""

    text: str
    words: list[tuple[int, int, str]]


def read_conllu(path: str | Path) -> list[Sentence]:
    """Sentences of a CoNLL-U file with surface words and lemmas.

    Multiword tokens (ID ranges such as 3-4) count as one surface word with the lemma of their
    first part; their parts are skipped.
    """
    sentences: list[Sentence] = []
    text = None
    rows: list[tuple[str, str]] = []  # (surface form, lemma)
    mwt_form, mwt_first, mwt_last = None, 0, 0  # the multiword token being read, if any
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.startswith("# text = "):
            text = line[len("# text = ") :]
        elif line.startswith("#"):
            continue
        elif not line.strip():
            if text is not None and rows:
                sentences.append(_locate(text, rows))
            text, rows, mwt_form = None, [], None
        else:
            cols = line.split("\t")
            if len(cols) < 3 or "." in cols[0]:  # empty nodes have ids like 5.1
                continue
            if "-" in cols[0]:
                first, last = cols[0].split("-")
                mwt_form, mwt_first, mwt_last = cols[1], int(first), int(last)
                continue
            word_id = int(cols[0])
            if mwt_form is not None and word_id == mwt_first:
                rows.append((mwt_form, cols[2]))
            elif mwt_form is None or word_id > mwt_last:
                mwt_form = None
                rows.append((cols[1], cols[2]))
    if text is not None and rows:
        sentences.append(_locate(text, rows))
    return sentences


def _locate(text: str, rows: list[tuple[str, str]]) -> Sentence:
    words = []
    pos = 0
    for form, lemma in rows:
        start = text.find(form, pos)
        if start < 0:
            continue
        words.append((start, start + len(form), lemma))
        pos = start + len(form)
    return Sentence(text, words)


def aligned(word_start: int, word_end: int, lemma_len: int, offsets: Offsets) -> bool:
    """True if a boundary falls at word_start + lemma_len and none inside the lemma."""
    cut = word_start + lemma_len
    at_cut = False
    for a, b in offsets:
        for boundary in (a, b):
            if word_start < boundary < cut:
                return False
            if boundary == cut:
                at_cut = True
    return at_cut


def _lowered_words(
    sentences: Iterable[Sentence], offsets_of: Callable[[str], Offsets]
) -> Iterator[tuple[int, int, str, str, list[tuple[int, int]]]]:
    """(start, end, form, lemma, offsets) for every word of sentences: form and lemma in
    Turkish lowercase, offsets the sentence's non-empty token spans from `offsets_of(text)`."""
    for s in sentences:
        offsets = [o for o in offsets_of(s.text) if o[0] != o[1]]
        for start, end, lemma in s.words:
            yield start, end, tr_lower(s.text[start:end]), tr_lower(lemma), offsets


def morphology_alignment(
    sentences: Iterable[Sentence], offsets_of: Callable[[str], Offsets]
) -> tuple[int, int]:
    """(aligned words, eligible words) over sentences, with offsets from `offsets_of(text)`."""
    good = total = 0
    for start, end, form, lem, offsets in _lowered_words(sentences, offsets_of):
        if not lem or len(lem) >= len(form) or not form.startswith(lem):
            continue
        total += 1
        # only the offsets that overlap this word matter
        near = [(a, b) for a, b in offsets if a < end and b > start]
        good += aligned(start, end, len(lem), near)
    return good, total


def roots_intact(
    sentences: Iterable[Sentence], offsets_of: Callable[[str], Offsets]
) -> tuple[int, int]:
    """(words with no boundary inside their lemma, eligible words) over sentences."""
    good = total = 0
    for start, _end, form, lem, offsets in _lowered_words(sentences, offsets_of):
        if len(lem) < 2 or not lem.isalpha() or not form.startswith(lem):
            continue
        total += 1
        cut = start + len(lem)
        good += not any(start < x < cut for a, b in offsets for x in (a, b))
    return good, total


def one_letter_starts(
    texts: Iterable[str], offsets_of: Callable[[str], Offsets]
) -> tuple[int, int]:
    """(lowercase words of 4+ letters whose first token covers only their first letter, such
    words) over texts."""
    bad = total = 0
    for text in texts:
        offsets = [o for o in offsets_of(text) if o[0] != o[1]]
        for m in _LOWER_WORD.finditer(text):
            inside = [(a, b) for a, b in offsets if a < m.end() and b > m.start()]
            total += 1
            bad += len(inside) > 1 and inside[0][1] == m.start() + 1
    return bad, total
