"""Encoding one pre-tokenized chunk: case marker, root + suffixes, BPE pieces, byte fallback.

For a word the encoder first looks for a morphological parse: a lexicon root followed only by
suffix tokens. Shared suffix tokens are allowed only where the decoder's rule spells them exactly
as in the input. Without a full parse it takes the cheapest segmentation over all pieces (fewest
tokens, then highest score). Every result is checked by decoding it; anything that would not
round-trip is re-encoded from the raw text, so encoding is lossless by construction.

The compiled module tr_tokenizer._native (built from _native.c when the package is installed
with a C compiler) runs this same algorithm for the chunks that make up nearly all Turkish
text and gives exactly the same ids; this module is its reference and handles everything else.
Set TR_TOKENIZER_PURE_PYTHON=1 to use this module alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import regex

from tr_tokenizer.casing import CAPITALIZED, LOWER, MIXED, UPPER, case_class, tr_lower
from tr_tokenizer.decoder import DecodeState, DecodeTables
from tr_tokenizer.pretokenize import APOSTROPHES, MAX_CHUNK, WORD
from tr_tokenizer.suffixes import (
    _CONTEXT_CHARS,
    BACK_VOWELS,
    ROUNDED_VOWELS,
    VOWELS,
    Element,
    context_keys,
    parse_form,
    realize,
)
from tr_tokenizer.vocab import BYTE_TOKENS, CAP, GLUE, GLUE_CAP, GLUE_UPPER, Vocabulary
from tr_tokenizer.vocab import UPPER as UPPER_TOKEN

if TYPE_CHECKING:
    from tr_tokenizer import _native

_INF = float("inf")
# Ties between segmentations with the same number of tokens go to the higher-scoring pieces;
# scores are log-probabilities, scaled so that they never outweigh a whole token.
_TIE = 1e-3
# With the vocabulary's longest_first rule (TrainConfig), each character of a root or whole word
# takes this off its cost: on equal token counts the longer one wins unless it is far rarer
# (10 nats per character). Roots stay short enough that this never outweighs a token either.
_LONGER = 1e-2
_BYTE_PENALTY = 40.0
# A word that starts with a one-letter piece followed by more pieces (ç + ı + kan, s + izin)
# is almost never morphology: the parse never takes a one-letter root unless it is the whole
# word, and the fallback segmentation pays this much more than a whole token for one.
ONE_LETTER_START = 1.5
_APOSTROPHE_SPLIT = regex.compile("(['’])")
_PREFIX = -1  # scan-table value of a text that only starts some piece

Path_ = list[tuple[int, int]]  # (token id, number of characters it covers)


@dataclass(frozen=True)
class SegmenterTables:
    """What the compiled segmenter (tr_tokenizer._native.Segmenter) is built from.

    _native.c reads each attribute by its name; the per-id lists have one entry per id.
    """

    root_scan: dict[str, int]  # roots and voiced stems (and their prefixes: _PREFIX)
    text_scan: dict[str, int]  # every text piece, for the checked fallback segmentation
    raw_scan: dict[str, int]  # the pieces whose text never changes, for the raw one
    suffix_tables: list[dict[str, tuple[int, float] | tuple[()]]]  # one per HARMONY_KEYS entry
    costs: list[float]  # per id
    byte_cost: float  # one byte token
    one_letter_cost: float  # ONE_LETTER_START
    kinds: list[int]  # per id: decoder kind codes
    texts: list[str]  # per id
    elements: list[tuple[Element, ...]]  # per id: a shared suffix's elements, else ()
    voiced: list[str | None]  # per id: the voiced last letter of an alternating root
    letters_only: list[bool]  # per id: may continue an all-caps word
    spaced_word: list[bool]  # per id: may start an all-caps word
    whole_only: list[bool]  # per id: a parse takes it only as the whole word
    cap_id: int
    upper_id: int
    byte0: int  # the id of byte 0x00; bytes follow in order
    glue_id: int  # the glue markers (lowercase, capitalized, all caps); -1 without them
    glue_cap_id: int
    glue_upper_id: int


class ChunkEncoder:
    """Encodes chunks into (ids, char lengths); built once per vocabulary."""

    def __init__(self, vocab: Vocabulary, tables: DecodeTables) -> None:
        self.tables = tables
        # context key -> {spelling: (id, cost), proper prefix: ()}, built on first use
        self.tables_by_context: dict[tuple | None, dict[str, tuple]] = {}
        self._read_pieces(vocab)
        self._build_scans(vocab)
        self._find_markers(vocab)
        self.native: _native.Segmenter | None = None
        if native_available():
            self.native = self._native_segmenter()

    def _read_pieces(self, vocab: Vocabulary) -> None:
        """Costs, the pieces by kind, and the vocabulary's encoding rules (TrainConfig)."""
        self.text_ids: dict[str, int] = {}
        self.root_ids: dict[str, int] = {}
        self.suffix_ids: dict[str, int] = {}  # literal suffix pieces and apostrophes
        self.shared: list[tuple[int, tuple[Element, ...]]] = []
        self.cost: list[float] = []
        # ids that a parse takes only as the whole word (see TrainConfig.whole_words_alone)
        self.whole_only: list[bool] = [
            kind == "word" and vocab.config.get("whole_words_alone", False)
            for _, kind, _ in vocab.pieces
        ]
        longer = _LONGER if vocab.config.get("longest_first", False) else 0.0
        for i, (text, kind, score) in enumerate(vocab.pieces):
            lexical = kind in ("root", "word")
            self.cost.append(1.0 + _TIE * min(-score, 30.0) - lexical * longer * len(text.strip()))
            if kind == "suffix" and text.startswith("+"):
                self.shared.append((i, parse_form(text[1:])))
            elif kind in ("root", "word", "suffix", "bpe", "space"):
                self.text_ids[text] = i
                if kind in ("root", "word"):
                    self.root_ids[text] = i
                elif kind == "suffix":
                    self.suffix_ids[text] = i
        for apostrophe in APOSTROPHES:
            if apostrophe in self.text_ids:
                self.suffix_ids[apostrophe] = self.text_ids[apostrophe]

    def _build_scans(self, vocab: Vocabulary) -> None:
        """The lookups the segmentation loops scan: roots, all text pieces, fixed-text pieces."""
        # voiced stems of alternating roots (" kitab" -> id of " kitap"); only the parse uses
        # them, because only a following vowel makes the decoder write the voiced letter
        self.voicing = frozenset(vocab.voicing)  # root ids whose last letter alternates
        self.voiced_root_ids: dict[str, int] = {}
        for i, letter in vocab.voicing.items():
            text = vocab.pieces[i][0]
            self.voiced_root_ids.setdefault(text[:-1] + letter, i)
        # pieces whose text never depends on their neighbours: the unverified raw fallback
        # uses only these, so it is lossless by construction
        self.raw_ids = {t: i for t, i in self.text_ids.items() if i not in vocab.voicing}
        # The segmentation loops scan spans s[i:j] for growing j; these lookups also hold every
        # proper prefix of a piece (mapped to _PREFIX), so a scan stops at the first span that
        # no piece starts with instead of running to the longest piece length.
        # text_scan is raw_scan plus the alternating roots (and their prefixes)
        self.raw_scan = _with_prefixes(self.raw_ids)
        self.text_scan = dict(self.raw_scan)
        for text, i in self.text_ids.items():
            if i in vocab.voicing:
                self.text_scan[text] = i  # may have been a prefix of another piece
                for k in range(1, len(text)):
                    self.text_scan.setdefault(text[:k], _PREFIX)
        roots = dict(self.voiced_root_ids)
        roots.update(self.root_ids)  # a plain root wins over a voiced stem with the same text
        self.root_scan = _with_prefixes(roots)

    def _find_markers(self, vocab: Vocabulary) -> None:
        """The ids of byte 0x00, the case markers and the glue markers."""
        self.byte0 = vocab.pieces.index((BYTE_TOKENS[0], "byte", 0.0)) if vocab.pieces else 0
        markers = {text: i for i, (text, kind, _) in enumerate(vocab.pieces) if kind == "case"}
        self.cap_id, self.upper_id = markers[CAP], markers[UPPER_TOKEN]
        # the glue markers by case class; empty for vocabularies made before them (v1, v2)
        glue = {LOWER: GLUE, CAPITALIZED: GLUE_CAP, UPPER: GLUE_UPPER}
        self.glue_ids: dict[int, int] = (
            {case: markers[t] for case, t in glue.items()}
            if all(t in markers for t in glue.values())
            else {}
        )

    def _native_segmenter(self) -> _native.Segmenter:
        """The compiled segmenter over this encoder's tables (see tr_tokenizer._native)."""
        from tr_tokenizer import _native

        return _native.Segmenter(self.native_tables())

    def native_tables(self) -> SegmenterTables:
        """This encoder's tables, as the compiled segmenter reads them."""
        t = self.tables
        return SegmenterTables(
            root_scan=self.root_scan,
            text_scan=self.text_scan,
            raw_scan=self.raw_scan,
            suffix_tables=[self._suffix_table(key) for key in HARMONY_KEYS],
            costs=self.cost,
            byte_cost=1.0 + _TIE * _BYTE_PENALTY,
            one_letter_cost=ONE_LETTER_START,
            kinds=t.kind,
            texts=t.text,
            elements=t.elements,
            voiced=t.voiced,
            letters_only=t.letters_only,
            spaced_word=t.spaced_word,
            whole_only=self.whole_only,
            cap_id=self.cap_id,
            upper_id=self.upper_id,
            byte0=self.byte0,
            glue_id=self.glue_ids.get(LOWER, -1),
            glue_cap_id=self.glue_ids.get(CAPITALIZED, -1),
            glue_upper_id=self.glue_ids.get(UPPER, -1),
        )

    # ---- public entry -------------------------------------------------------------------

    def encode_chunk(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Encode one chunk. Returns token ids and the number of characters each one covers."""
        if self.native is not None:
            done = self.native.encode_chunk(chunk)
            if done is not None:
                return done
        return self.encode_chunk_python(chunk)

    def encode_chunk_python(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """encode_chunk without the compiled segmenter: the reference implementation."""
        if len(chunk) > MAX_CHUNK:
            ids: list[int] = []
            lens: list[int] = []
            for k in range(0, len(chunk), MAX_CHUNK):
                for tid, n in self._cheapest(chunk[k : k + MAX_CHUNK], shared=False):
                    ids.append(tid)
                    lens.append(n)
            return tuple(ids), tuple(lens)
        path = self._encode_word(chunk) if WORD.fullmatch(chunk) else None
        if path is None:
            path = self._cheapest(chunk, shared=False)
        if not path:
            return (), ()
        path_ids, path_lens = zip(*path)
        return path_ids, path_lens

    # ---- words --------------------------------------------------------------------------

    def _encode_word(self, chunk: str) -> Path_ | None:
        case, low = case_class(chunk)
        if case != MIXED:
            path = self._morph(low)
            glued = self._glued(case, low, path)
            if glued is not None and self._decode(glued) == chunk:
                return glued
            if path is not None and self._parse_needs_no_check(case, low, path):
                return path
            if path is None:
                path = self._cheapest(low, shared=True)
            path = self._with_marker(case, path)
            if self._decode(path) == chunk:
                return path
        if any(a in chunk for a in APOSTROPHES):
            path = self._encode_runs(chunk)
            if self._decode(path) == chunk:
                return path
        return None

    def _parse_needs_no_check(self, case: int, low: str, path: Path_) -> bool:
        """True if decoding the parse `path` of `low` provably gives `low` back.

        The decoder writes a root or literal suffix as its text, and spells a shared suffix from
        the left context of the text written so far, which is the prefix of `low` whose context
        key chose that suffix's spelling (context_keys agrees with the decoder's backward scan
        within _CONTEXT_CHARS). What is left to check by decoding: case markers, and roots
        whose last letter alternates (the decoder voices it before a vowel).
        """
        return case == LOWER and len(low) <= _CONTEXT_CHARS and path[0][0] not in self.voicing

    def _glued(self, case: int, low: str, path: Path_ | None) -> Path_ | None:
        """A word with no space before it, parsed with a spaced root after a glue marker
        ("Kitabı" at a text's start: <|glue_cap|> " kitap" +(s)I), when that costs no more than
        `path`, its parse with an unspaced root (None if there is none), with its case marker.

        So a root keeps one id wherever its word stands. The glue markers replace the case
        markers, so only a lowercase word pays a token for one.
        """
        if not self.glue_ids or low[:1] == " ":
            return None
        spaced = self._morph(" " + low)
        if spaced is None:
            return None
        (root, n), *rest = spaced
        glued = [(self.glue_ids[case], 0), (root, n - 1), *rest]
        if path is not None and self._path_cost(glued) > self._path_cost(
            self._with_marker(case, path)
        ):
            return None
        return glued

    def _path_cost(self, path: Path_) -> float:
        total = 0.0
        for tid, _ in path:  # summed in order, as _native.c does (sum() may compensate)
            total += self.cost[tid]
        return total

    def _with_marker(self, case: int, path: Path_) -> Path_:
        if case == CAPITALIZED:
            return [(self.cap_id, 0), *path]
        if case == UPPER:
            return [(self.upper_id, 0), *path]
        return path

    def _encode_runs(self, chunk: str) -> Path_:
        """Encode the letter runs between apostrophes separately, each with its own case.

        An all-caps marker covers letters only, so "ANKARA'DA" becomes
        <upper> " ankara" "'" <upper> "+DA"; the suffix is still spelled from "ankara".
        """
        path: Path_ = []
        context = ""
        for part in _APOSTROPHE_SPLIT.split(chunk):
            if not part:
                continue
            case, low = case_class(part)
            if part in APOSTROPHES or case == MIXED:
                path += self._cheapest(part, shared=False)
                context += tr_lower(part)
                continue
            sub = self._morph(low) if not context else None
            glued = self._glued(case, low, sub) if not context else None
            if glued is not None:
                path += glued
            else:
                if sub is None:
                    sub = self._cheapest(context + low, shared=True, start=len(context))
                path += self._with_marker(case, sub)
            context += low
        return path

    def _decode(self, path: Path_) -> str:
        state = DecodeState(self.tables)
        return "".join(state.step(t) for t, _ in path) + state.flush()

    def _morph(self, s: str) -> Path_ | None:
        """Best parse of `s` as one root followed only by suffix tokens, or None."""
        root_scan, costs = self.root_scan, self.cost
        tid = root_scan.get(s, _PREFIX)
        if tid != _PREFIX:
            # the whole word is one root: every other parse has two or more tokens, and one
            # token always costs less than two (scores never outweigh a whole token)
            return [(tid, len(s))]
        n = len(s)
        cost = [_INF] * (n + 1)
        back: list[tuple[int, int] | None] = [None] * (n + 1)
        first_letter = 2 if s[0] == " " else 1  # a root this long is one letter
        for j in range(1, n + 1):
            root = root_scan.get(s[:j])
            if root is None:
                break
            if root != _PREFIX and j > first_letter and not self.whole_only[root]:
                cost[j] = costs[root]
                back[j] = (0, root)
        keys = None
        tables = self.tables_by_context
        for i in range(1, n):
            c0 = cost[i]
            if c0 == _INF:
                continue
            keys = keys or context_keys(s)
            # _suffix_edges inlined: this loop is most of the time spent on a new word
            table = tables.get(keys[i]) or self._suffix_table(keys[i])
            for j in range(i + 1, n + 1):
                hit = table.get(s[i:j])
                if hit is None:
                    break
                if hit and c0 + hit[1] < cost[j]:
                    cost[j] = c0 + hit[1]
                    back[j] = (i, hit[0])
        return _trace(back, n) if cost[n] < _INF else None

    def _suffix_edges(self, s: str, i: int, key, cost: list[float], back: list) -> None:
        """Relax edges from position i over every suffix token that spells s[i:j] after a
        left context with this key (literal suffixes only when key is None)."""
        table = self.tables_by_context.get(key) or self._suffix_table(key)
        c0 = cost[i]
        for j in range(i + 1, len(s) + 1):
            hit = table.get(s[i:j])
            if hit is None:  # no suffix spelling starts with s[i:j]
                break
            if hit and c0 + hit[1] < cost[j]:  # () marks a prefix that is no spelling itself
                cost[j] = c0 + hit[1]
                back[j] = (i, hit[0])

    def _suffix_table(
        self, key: tuple[str, str | None] | None
    ) -> dict[str, tuple[int, float] | tuple[()]]:
        """Spelling -> (cheapest suffix id, cost) in one left context; every proper prefix of a
        spelling that is no spelling itself maps to () so a scan knows when to stop.

        Built once per context key (a few dozen exist) so the search is one dict lookup per span.
        """
        cached = self.tables_by_context.get(key)
        if cached is not None:
            return cached
        same = _harmony_class(key)
        if same != key:  # spelled exactly like its class representative: share that table
            shared_table = self.tables_by_context[key] = self._suffix_table(same)
            return shared_table
        best: dict[str, tuple[int, float]] = {}
        for text, tid in self.suffix_ids.items():
            best[text] = (tid, self.cost[tid])
        if key is not None:
            for tid, elements in self.shared:
                spelled = realize(elements, *key)
                if spelled:
                    c = self.cost[tid] - _TIE  # prefer a shared id over a literal twin
                    if spelled not in best or c < best[spelled][1]:
                        best[spelled] = (tid, c)
        table: dict[str, tuple[int, float] | tuple[()]] = dict(best)
        for text in best:
            for k in range(1, len(text)):
                table.setdefault(text[:k], ())
        self.tables_by_context[key] = table
        return table

    # ---- fallback -----------------------------------------------------------------------

    def _cheapest(self, s: str, shared: bool, start: int = 0) -> Path_:
        """Fewest-token segmentation of s[start:] over all text pieces, with bytes for
        characters no piece covers. With shared, also suffixes spelled from s[:i] and roots
        whose last letter alternates (the caller verifies the result); without, only pieces
        whose text is fixed."""
        n = len(s)
        cost = [_INF] * (n + 1)
        back: list[tuple[int, int] | None] = [None] * (n + 1)
        cost[start] = 0.0
        scan = self.text_scan if shared else self.raw_scan
        costs = self.cost
        keys = context_keys(s) if shared else None
        one_letter = _one_letter_start(s) if shared else 0
        for i in range(start, n):
            c0 = cost[i]
            if c0 == _INF:
                continue
            for j in range(i + 1, n + 1):
                tid = scan.get(s[i:j])
                if tid is None:
                    break
                c = c0 + costs[tid] + (ONE_LETTER_START if j == one_letter and i == 0 else 0.0)
                if tid != _PREFIX and c < cost[j]:
                    cost[j] = c
                    back[j] = (i, tid)
            if keys is not None and i > 0:
                # suffix tokens spelled from the left context (literal ones are text pieces too)
                self._suffix_edges(s, i, keys[i], cost, back)
            nbytes = len(s[i].encode("utf-8", "surrogatepass"))
            c = c0 + nbytes * (1.0 + _TIE * _BYTE_PENALTY)
            if c < cost[i + 1]:
                cost[i + 1] = c
                back[i + 1] = (i, -1)
        path: Path_ = []
        j = n
        while j > start:
            step = back[j]
            assert step is not None  # every position up to n is reached (bytes cover any char)
            i, tid = step
            if tid == -1:
                data = s[i].encode("utf-8", "surrogatepass")
                path.extend(reversed([(self.byte0 + b, 0) for b in data[1:]]))
                path.append((self.byte0 + data[0], 1))
            else:
                path.append((tid, j - i))
            j = i
        path.reverse()
        return path


# realize() reads the last vowel only through vowel harmony (backness, rounding) and the last
# letter only as vowel / voiceless / other, so keys in one class spell every suffix alike.
_REPRESENTATIVE = {v: ("a" if v in BACK_VOWELS else "e") for v in VOWELS}
_REPRESENTATIVE.update({v: ("o" if v in BACK_VOWELS else "ö") for v in ROUNDED_VOWELS})


def _harmony_class(key: tuple[str, str | None] | None) -> tuple[str, str | None] | None:
    """The representative context key that spells every suffix exactly as `key` does."""
    if key is None:
        return None
    last, vowel = key
    rep = _REPRESENTATIVE[vowel] if vowel is not None else None
    if last in VOWELS:
        assert rep is not None  # a key whose last letter is a vowel has that last vowel
        return (rep, rep)
    return (last, rep)


# The representative context keys in the order of the compiled segmenter's suffix tables: no
# word; after a vowel; after a voiceless, then another consonant (_native_layout.py writes this
# order into _native_layout.h for _native.c's context_classes, and refuses any other).
_VOWEL_REPRESENTATIVES = ("a", "e", "o", "ö")
HARMONY_KEYS: tuple[tuple[str, str | None] | None, ...] = (
    None,
    *((v, v) for v in _VOWEL_REPRESENTATIVES),
    *(("t", v) for v in (None, *_VOWEL_REPRESENTATIVES)),
    *(("r", v) for v in (None, *_VOWEL_REPRESENTATIVES)),
)


def native_available() -> bool:
    """Whether the compiled segmenter is built and not switched off by TR_TOKENIZER_PURE_PYTHON."""
    if os.environ.get("TR_TOKENIZER_PURE_PYTHON", "") not in ("", "0"):
        return False
    try:
        from tr_tokenizer import _native  # noqa: F401
    except ImportError:
        return False
    return True


def _one_letter_start(word: str) -> int:
    """The end of the word's first letter (after its leading space, if any) when more of the
    word follows it; 0 otherwise. A first piece ending there pays ONE_LETTER_START."""
    end = 2 if word.startswith(" ") else 1
    return end if len(word) > end and word[end - 1] not in APOSTROPHES else 0


def _with_prefixes(ids: dict[str, int]) -> dict[str, int]:
    """`ids` plus every proper prefix of its keys that is not a key, mapped to _PREFIX."""
    scan = dict(ids)
    for text in ids:
        for k in range(1, len(text)):
            scan.setdefault(text[:k], _PREFIX)
    return scan


def _trace(back: list, n: int) -> Path_:
    path: Path_ = []
    j = n
    while j > 0:
        i, tid = back[j]
        path.append((tid, j - i))
        j = i
    path.reverse()
    return path
