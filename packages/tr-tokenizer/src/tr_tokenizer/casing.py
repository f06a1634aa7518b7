"""Turkish casing (İ<->i, I<->ı) and the case class of a word.

Python's str.lower() maps "İ" to "i" + U+0307 and "I" to "i", which is wrong for Turkish, so the
dotted/dotless pairs are translated first. Every case decision is checked by a round trip: a word
gets a case marker only if applying the marker to its lowercase form gives the word back exactly.
"""

from __future__ import annotations

_TO_LOWER = str.maketrans({"I": "ı", "İ": "i"})
_TO_UPPER = str.maketrans({"i": "İ", "ı": "I"})

LOWER, CAPITALIZED, UPPER, MIXED = 0, 1, 2, 3


def tr_lower(text: str) -> str:
    """Lowercase with Turkish rules (I -> ı, İ -> i)."""
    return text.translate(_TO_LOWER).lower()


def tr_upper(text: str) -> str:
    """Uppercase with Turkish rules (i -> İ, ı -> I)."""
    return text.translate(_TO_UPPER).upper()


def tr_capitalize(text: str) -> str:
    """Uppercase the first character after an optional leading space; leave the rest as is."""
    j = 1 if text[:1] == " " else 0
    return text[:j] + tr_upper(text[j : j + 1]) + text[j + 1 :]


def case_class(word: str) -> tuple[int, str]:
    """Return (case class, lowercase form) of a word (optionally with one leading space).

    LOWER: already lowercase. CAPITALIZED: first letter upper, rest lower. UPPER: two or more
    letters, all upper. MIXED: anything else, including casings that do not round-trip.
    """
    low = tr_lower(word)
    if low == word:
        return LOWER, low
    if tr_capitalize(low) == word:
        return CAPITALIZED, low
    if len(word.strip(" ")) > 1 and tr_upper(low) == word:
        return UPPER, low
    return MIXED, low
