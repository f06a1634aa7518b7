"""Text cleaning: Unicode NFC, control characters, whitespace; exact-duplicate removal."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0/C1 control characters except tab and newline (which carry layout), plus the BOM and
# zero-width no-break space; both appear in scraped Turkish text and carry no meaning.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_CRLF = re.compile(r"\r\n?")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise one document: NFC, Unix newlines, no control characters, trimmed whitespace.

    NFC matters for Turkish: decomposed ş/ğ/ı/İ from some sources would otherwise be tokenized
    differently from their composed forms.
    """
    text = _CRLF.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    # NFC last: removing a control character can bring a letter and its combining mark together.
    return unicodedata.normalize("NFC", text).strip()


def text_hash(text: str) -> str:
    """A stable content hash, used for exact deduplication and the train/validation split."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
