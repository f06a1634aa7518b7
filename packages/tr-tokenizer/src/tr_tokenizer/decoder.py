"""Turning ids back into text: case markers, shared suffixes spelled from context, byte fallback.

One state machine serves both one-shot `decode` and streaming: it emits text only for complete
characters, so the concatenation of all `step` outputs equals `decode(ids)`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

import regex

from tr_tokenizer.casing import tr_capitalize, tr_lower, tr_upper
from tr_tokenizer.suffixes import VOWELS, Element, left_context, parse_form, realize
from tr_tokenizer.vocab import CAP as CAP_TOKEN
from tr_tokenizer.vocab import GLUE as GLUE_TOKEN
from tr_tokenizer.vocab import GLUE_CAP, GLUE_UPPER, Vocabulary

# Kind codes used in the per-id tables. GLUE: only drops the next piece's leading space.
TEXT, SPECIAL, CAP, UPPER, BYTE, SHARED, GLUE = range(7)

_LETTERS_ONLY = regex.compile(r"[\p{L}\p{M}]+")
_SPACED_WORD = regex.compile(r" [\p{L}\p{M}]+")
_TAIL = 48  # characters of output kept as left context for shared suffixes


def _utf8_errors(exc: UnicodeError) -> tuple[str | bytes, int]:
    """Decode surrogate code points written by the encoder; replace anything else invalid.
    (A decoding error handler: codecs calls it with UnicodeDecodeErrors only.)"""
    try:
        return codecs.lookup_error("surrogatepass")(exc)
    except UnicodeDecodeError:
        assert isinstance(exc, UnicodeDecodeError)
        return "\ufffd", exc.start + 1


codecs.register_error("tr_tokenizer", _utf8_errors)


class DecodeTables:
    """Per-id lookup tables derived from a vocabulary."""

    def __init__(self, vocab: Vocabulary) -> None:
        n = len(vocab.pieces)
        self.kind = [TEXT] * n
        self.text: list[str] = [""] * n
        self.byte = [0] * n
        self.elements: list[tuple[Element, ...]] = [()] * n
        self.voiced: list[str | None] = [None] * n  # root ids whose last letter alternates
        for i, letter in vocab.voicing.items():
            self.voiced[i] = letter
        self.letters_only = [False] * n  # may continue an all-caps word
        self.spaced_word = [False] * n  # may start an all-caps word
        self.glues = [False] * n  # a marker that drops the next piece's leading space
        for i, (text, kind, _) in enumerate(vocab.pieces):
            self.text[i] = text
            if kind == "special":
                self.kind[i] = SPECIAL
            elif kind == "case":
                self.kind[i] = _MARKER_KINDS.get(text, UPPER)
                self.glues[i] = text in (GLUE_TOKEN, GLUE_CAP, GLUE_UPPER)
            elif kind == "byte":
                self.kind[i] = BYTE
                self.byte[i] = int(text[3:5], 16)
            elif kind == "suffix" and text.startswith("+"):
                self.kind[i] = SHARED
                self.elements[i] = parse_form(text[1:])
                self.letters_only[i] = True
            else:
                self.letters_only[i] = _LETTERS_ONLY.fullmatch(text) is not None
                self.spaced_word[i] = _SPACED_WORD.fullmatch(text) is not None


_MARKER_KINDS = {CAP_TOKEN: CAP, GLUE_CAP: CAP, GLUE_TOKEN: GLUE}  # other markers: UPPER

# Case states of the decoder.
_NONE, _CAP_PENDING, _UPPER_START, _UPPER_CONT = range(4)
_CASE_OF_MARKER = {CAP: _CAP_PENDING, UPPER: _UPPER_START, GLUE: _NONE}


class DecodeState:
    """Incremental decoder. `step(id)` returns the newly completed text."""

    def __init__(self, tables: DecodeTables, skip_special_tokens: bool = False) -> None:
        self.t = tables
        self.skip_special = skip_special_tokens
        self.case = _NONE
        self.glue = False  # drop the next piece's leading space (a glue marker came last)
        self.tail = ""
        self.utf8: codecs.IncrementalDecoder | None = None  # created at the first byte token
        self.pending_bytes = False
        # (plain, voiced) last letter of an alternating root, written once the next token shows
        # whether a vowel follows (kitap + ı -> kitabı); it is already in `tail` as plain.
        self.held: tuple[str, str] | None = None
        # Whether the held letter belongs to a context that was shown already (see `seed`).
        self.held_shown = False
        # Whether the pending bytes belong to such a context.
        self.bytes_shown = False

    def seed(self, ids: Iterable[int]) -> None:
        """Read `ids` as left context that is already shown: later output is only new text.

        The context's own text counts as shown, including the last letter of an alternating
        root (ağaç + ı -> ağacı) and UTF-8 bytes it leaves incomplete, which the context's
        one-shot decode writes as they stand (ç, U+FFFD). A continuation never repeats them;
        it cannot rewrite them either, so a suffix that voices that letter or bytes that
        complete that character are the only places where the continuation differs from the
        matching slice of the whole decode.
        """
        for i in ids:
            self.step(i)
        self.held_shown = self.held is not None
        self.bytes_shown = self.pending_bytes

    def step(self, token_id: int) -> str:
        t = self.t
        kind = t.kind[token_id]
        held = ""
        if self.held is not None and not (kind == TEXT or kind == SHARED):
            held = self._release(False)
        if kind == BYTE:
            self.pending_bytes = True
            if self.utf8 is None:
                self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="tr_tokenizer")
            out = self.utf8.decode(bytes((t.byte[token_id],)))
            self.bytes_shown = self.bytes_shown and not out  # bytes that end a new character
            self.case = _NONE
            self.glue = False
            return held + self._emit(out)
        out = self.flush() if self.pending_bytes else ""
        if kind == TEXT or kind == SHARED:
            if kind == SHARED:
                last, vowel = left_context(self.tail)
                piece = realize(t.elements[token_id], last, vowel)
                if piece is None:  # no word to the left (only for ids not made by encode)
                    piece = realize(t.elements[token_id], "a", "a") or ""
            else:
                piece = t.text[token_id]
                if self.glue and piece[:1] == " ":
                    piece = piece[1:]
            self.glue = False
            case = self.case
            if case != _NONE:
                if case == _CAP_PENDING:
                    piece = tr_capitalize(piece)
                    self.case = _NONE
                elif t.letters_only[token_id] or (case == _UPPER_START and t.spaced_word[token_id]):
                    piece = tr_upper(piece)
                    self.case = _UPPER_CONT
                else:
                    self.case = _NONE
            if self.held is not None:
                out += self._release(tr_lower(piece[:1])[:1] in VOWELS)
            voiced = t.voiced[token_id]
            if voiced is not None and len(piece) > 1:
                plain = piece[-1]
                self.held = (plain, tr_upper(voiced) if plain != plain.lower() else voiced)
                self.tail = (self.tail + piece)[-_TAIL:]  # the plain letter is the context
                return out + piece[:-1]
            return out + self._emit(piece)
        if kind == CAP or kind == UPPER or kind == GLUE:
            self.case = _CASE_OF_MARKER[kind]
            self.glue = t.glues[token_id]
            return held + out
        # SPECIAL
        self.case = _NONE
        self.glue = False
        if self.skip_special:
            return held + out
        return held + out + self._emit(t.text[token_id])

    def _release(self, voiced: bool) -> str:
        """Write the held last letter of an alternating root, voiced before a vowel."""
        assert self.held is not None, "called with a letter held"
        plain, voiced_letter = self.held
        self.held = None
        letter = voiced_letter if voiced else plain
        self.tail = self.tail[:-1] + letter
        if self.held_shown:  # written already, as part of a context (see `seed`)
            self.held_shown = False
            return ""
        return letter

    def _emit(self, text: str) -> str:
        if text:
            self.tail = (self.tail + text)[-_TAIL:]
        return text

    def flush(self) -> str:
        """Return text held back: an alternating root's last letter, incomplete UTF-8 bytes
        (as U+FFFD if never completed)."""
        out = self._release(False) if self.held is not None else ""
        if not self.pending_bytes:
            return out
        self.pending_bytes = False
        assert self.utf8 is not None
        text = self._emit(self.utf8.decode(b"", final=True))
        if self.bytes_shown:  # the context's own incomplete bytes, written already
            self.bytes_shown = False
            return out
        return out + text
