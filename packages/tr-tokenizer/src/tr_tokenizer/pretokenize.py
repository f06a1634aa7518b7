"""Pre-tokenization: split text into chunks that are encoded independently (and cached).

The chunks cover the input exactly and in order, so offsets follow from chunk lengths. A word
carries its leading space (" kitaplar") so a typical word needs no separate space token. Apostrophe
suffixes stay with their word ("Ankara'da") because their surface depends on the word's vowels.
Letters, digits and punctuation never share a chunk, so no learned piece mixes them; names of
non-text tokens ("<|eos|>", "<0x41>", "+lAr") can therefore never collide with a text piece.

The pattern uses the standard library's `re` (about 1.5x faster here than `regex` with \\p{..}
classes): a "letter" is a word character that is not a decimal digit or "_" (so letters and
other numerics such as "²"); combining marks fall into the punctuation class.
"""

from __future__ import annotations

import re

_LETTER = r"[^\W\d_]"
_WORD = rf" ?{_LETTER}+(?:['’]{_LETTER}+)*"
PATTERN = re.compile(
    rf"{_WORD}"  # word with optional leading space and apostrophe suffixes
    r"| ?\d{1,3}"  # numbers in groups of at most three digits
    rf"|['’]{_LETTER}+"  # apostrophe suffix after a number or symbol ("1920'de")
    r"| ?(?:[^\s\w]|_)+"  # punctuation and symbols
    r"|\s+(?!\S)"  # whitespace run, leaving one space for the next word
    r"|\s+"
)
WORD = re.compile(_WORD)
APOSTROPHES = ("'", "’")

# Chunks longer than this are encoded in context-free segments of this length (no morphology),
# which bounds the work per chunk and keeps 10 MB single-line inputs linear.
MAX_CHUNK = 64
