"""Encoding one pre-tokenized chunk: case marker, root + suffixes, BPE pieces, byte fallback.

For a word the encoder first looks for a morphological parse: a lexicon root followed only by
suffix tokens. Shared suffix tokens are allowed only where the decoder's rule spells them exactly
as in the input. Without a full parse it takes the cheapest segmentation over all pieces (fewest
tokens, then highest score). Every result is checked by decoding it; anything that would not
round-trip is re-encoded from the raw text, so encoding is lossless by construction.
"""

from __future__ import annotations

from tr_tokenizer.casing import CAPITALIZED, LOWER, UPPER, case_class
from tr_tokenizer.decoder import DecodeState, DecodeTables
from tr_tokenizer.pretokenize import APOSTROPHES, MAX_CHUNK, WORD
from tr_tokenizer.suffixes import Element, left_context, parse_form, realize, surfaces
from tr_tokenizer.vocab import BYTE_TOKENS, CAP, Vocabulary
from tr_tokenizer.vocab import UPPER as UPPER_TOKEN

_INF = float("inf")
# Ties between segmentations with the same number of tokens go to the higher-scoring pieces;
# scores are log-probabilities, scaled so that they never outweigh a whole token.
_TIE = 1e-3
_BYTE_PENALTY = 40.0

Path_ = list[tuple[int, int]]  # (token id, number of characters it covers)


class ChunkEncoder:
    """Encodes chunks into (ids, char lengths); built once per vocabulary."""

    def __init__(self, vocab: Vocabulary, tables: DecodeTables) -> None:
        self.tables = tables
        self.text_ids: dict[str, int] = {}
        self.root_ids: dict[str, int] = {}
        self.suffix_ids: dict[str, int] = {}  # literal suffix pieces and apostrophes
        self.shared_by_surface: dict[str, list[tuple[int, tuple[Element, ...]]]] = {}
        self.cost: list[float] = []
        for i, (text, kind, score) in enumerate(vocab.pieces):
            self.cost.append(1.0 + _TIE * min(-score, 30.0))
            if kind == "suffix" and text.startswith("+"):
                elements = parse_form(text[1:])
                for surface in surfaces(text[1:]):
                    self.shared_by_surface.setdefault(surface, []).append((i, elements))
            elif kind in ("root", "suffix", "bpe", "space"):
                self.text_ids[text] = i
                if kind == "root":
                    self.root_ids[text] = i
                elif kind == "suffix":
                    self.suffix_ids[text] = i
        for apostrophe in APOSTROPHES:
            if apostrophe in self.text_ids:
                self.suffix_ids[apostrophe] = self.text_ids[apostrophe]
        self.max_text = max((len(t) for t in self.text_ids), default=1)
        self.max_root = max((len(t) for t in self.root_ids), default=0)
        self.max_suffix = max((len(t) for t in self.suffix_ids), default=0)
        self.max_shared = max((len(t) for t in self.shared_by_surface), default=0)
        self.byte0 = vocab.pieces.index((BYTE_TOKENS[0], "byte", 0.0)) if vocab.pieces else 0
        self.cap_id = next(i for i, p in enumerate(vocab.pieces) if p[0] == CAP)
        self.upper_id = next(i for i, p in enumerate(vocab.pieces) if p[0] == UPPER_TOKEN)

    # ---- public entry -------------------------------------------------------------------

    def encode_chunk(self, chunk: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Encode one chunk. Returns token ids and the number of characters each one covers."""
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
        return tuple(t for t, _ in path), tuple(n for _, n in path)

    # ---- words --------------------------------------------------------------------------

    def _encode_word(self, chunk: str) -> Path_ | None:
        case, low = case_class(chunk)
        if case not in (LOWER, CAPITALIZED, UPPER):
            return None
        path = self._morph(low)
        if path is None:
            path = self._cheapest(low, shared=True)
        if case == CAPITALIZED:
            path = [(self.cap_id, 0), *path]
        elif case == UPPER:
            path = [(self.upper_id, 0), *path]
        if self._decode(path) != chunk:
            return None
        return path

    def _decode(self, path: Path_) -> str:
        state = DecodeState(self.tables)
        return "".join(state.step(t) for t, _ in path) + state.flush()

    def _morph(self, s: str) -> Path_ | None:
        """Best parse of `s` as one root followed only by suffix tokens, or None."""
        n = len(s)
        cost = [_INF] * (n + 1)
        back: list[tuple[int, int] | None] = [None] * (n + 1)
        for j in range(1, min(n, self.max_root) + 1):
            tid = self.root_ids.get(s[:j])
            if tid is not None:
                cost[j] = self.cost[tid]
                back[j] = (0, tid)
        for i in range(1, n):
            if cost[i] == _INF:
                continue
            self._suffix_edges(s, i, cost, back)
        return _trace(back, n) if cost[n] < _INF else None

    def _suffix_edges(self, s: str, i: int, cost: list[float], back: list) -> None:
        n = len(s)
        c0 = cost[i]
        for j in range(i + 1, min(n, i + self.max_suffix) + 1):
            tid = self.suffix_ids.get(s[i:j])
            if tid is not None and c0 + self.cost[tid] < cost[j]:
                cost[j] = c0 + self.cost[tid]
                back[j] = (i, tid)
        if self.max_shared:
            self._shared_edges(s, i, cost, back)

    def _shared_edges(self, s: str, i: int, cost: list[float], back: list) -> None:
        n = len(s)
        c0 = cost[i]
        last, vowel = left_context(s[:i])
        if last is None:
            return
        for j in range(i + 1, min(n, i + self.max_shared) + 1):
            sub = s[i:j]
            for tid, elements in self.shared_by_surface.get(sub, ()):
                c = c0 + self.cost[tid] - _TIE  # prefer the shared id over a literal twin
                if c < cost[j] and realize(elements, last, vowel) == sub:
                    cost[j] = c
                    back[j] = (i, tid)

    # ---- fallback -----------------------------------------------------------------------

    def _cheapest(self, s: str, shared: bool) -> Path_:
        """Fewest-token segmentation over all text pieces (and shared suffixes), bytes last."""
        n = len(s)
        cost = [_INF] * (n + 1)
        back: list[tuple[int, int] | None] = [None] * (n + 1)
        cost[0] = 0.0
        text_ids, costs = self.text_ids, self.cost
        for i in range(n):
            c0 = cost[i]
            if c0 == _INF:
                continue
            for j in range(i + 1, min(n, i + self.max_text) + 1):
                tid = text_ids.get(s[i:j])
                if tid is not None and c0 + costs[tid] < cost[j]:
                    cost[j] = c0 + costs[tid]
                    back[j] = (i, tid)
            if shared and i > 0 and self.max_shared:
                self._shared_edges(s, i, cost, back)
            nbytes = len(s[i].encode("utf-8", "surrogatepass"))
            c = c0 + nbytes * (1.0 + _TIE * _BYTE_PENALTY)
            if c < cost[i + 1]:
                cost[i + 1] = c
                back[i + 1] = (i, -1)
        path: Path_ = []
        j = n
        while j > 0:
            i, tid = back[j]
            if tid == -1:
                data = s[i].encode("utf-8", "surrogatepass")
                path.extend(reversed([(self.byte0 + b, 0) for b in data[1:]]))
                path.append((self.byte0 + data[0], 1))
            else:
                path.append((tid, j - i))
            j = i
        path.reverse()
        return path


def _trace(back: list, n: int) -> Path_:
    path: Path_ = []
    j = n
    while j > 0:
        i, tid = back[j]
        path.append((tid, j - i))
        j = i
    path.reverse()
    return path
