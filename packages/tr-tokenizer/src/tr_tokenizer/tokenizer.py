"""The public Tokenizer: encode/decode, batches, streaming decode, save/load."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from itertools import chain
from pathlib import Path

import regex

from tr_tokenizer.decoder import DecodeState, DecodeTables
from tr_tokenizer.encoder import ChunkEncoder
from tr_tokenizer.parallel import WorkerPool, fork_available
from tr_tokenizer.pretokenize import PATTERN
from tr_tokenizer.vocab import BOS, EOS, FILE_NAME, PAD, SPECIAL_TOKENS, Vocabulary

_CACHE_LIMIT = 500_000  # cached chunks before the cache is cleared (bounds memory)
_PARALLEL_MIN_CHARS = 1_000_000  # below this, a batch is encoded in this process


class _ChunkCache(dict):
    """chunk -> token ids; encodes on a miss, so the hot loop is a plain dict lookup.

    The pure-Python path's cache: the compiled segmenter keeps its own (same limit).
    """

    def __init__(self, encoder: ChunkEncoder, lens: dict) -> None:
        super().__init__()
        self.encoder = encoder
        self.lens = lens

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        ids, lens = self.encoder.encode_chunk(chunk)
        if len(self) >= _CACHE_LIMIT:
            self.clear()
            self.lens.clear()
        self[chunk] = ids
        self.lens[chunk] = lens
        return ids


@dataclass(frozen=True)
class Piece:
    """One token of a segmentation: its vocabulary name, the text it covers, its kind."""

    token: str
    text: str
    kind: str


class Encoding:
    """Result of `encode`: `.ids`, plus `.tokens` and `.offsets` computed on first use."""

    __slots__ = ("ids", "_text", "_special", "_tok", "_tokens", "_offsets")

    def __init__(self, ids: list[int], text: str, tok: Tokenizer, special: bool = False) -> None:
        self.ids = ids
        self._text = text
        self._special = special
        self._tok = tok
        self._tokens: list[str] | None = None
        self._offsets: list[tuple[int, int]] | None = None

    @property
    def tokens(self) -> list[str]:
        """Vocabulary names of the tokens (shared suffixes appear as their form, e.g. "+lAr")."""
        if self._tokens is None:
            names = self._tok._names
            self._tokens = [names[i] for i in self.ids]
        return self._tokens

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(start, end) character span of each token; spans cover the input in order."""
        if self._offsets is None:
            self._offsets = self._tok._offsets(self._text, self._special)
        return self._offsets

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoding(ids={self.ids!r})"


class DecodeStream:
    """Streaming decoder: `step(id)` returns newly completed text; `flush()` the remainder.

    With `context` (ids already shown, such as a prompt), the output is the text that the new
    ids add after the context, spelled in its light: shared suffixes take their surface form
    from the context's last word. The concatenation of all outputs is
    `decode(context + ids)[len(decode(context)):]`, except where the new ids voice the
    context's last letter (ağaç + ı -> ağacı) or complete a character whose bytes it left
    incomplete: text already shown is never written again, nor rewritten.
    """

    def __init__(
        self, tok: Tokenizer, skip_special_tokens: bool = False, context: Iterable[int] = ()
    ) -> None:
        self._tok = tok
        self._state = DecodeState(tok._tables, skip_special_tokens)
        context = list(context)
        for token_id in context:
            tok._check_id(token_id)
        self._state.seed(context)

    def step(self, token_id: int) -> str:
        """Feed one id; return the text it completes (possibly "")."""
        self._tok._check_id(token_id)
        return self._state.step(token_id)

    def flush(self) -> str:
        """End of stream: return any text still held back."""
        return self._state.flush()


class Tokenizer:
    """A lossless, morphology-aware Turkish tokenizer over a fixed vocabulary."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._tables = DecodeTables(vocab)
        self._names = self._tables.text  # the pieces' texts, in id order
        self._kinds = [p[1] for p in vocab.pieces]
        self._ids = {name: i for i, name in enumerate(self._names)}
        self._encoder = ChunkEncoder(vocab, self._tables)
        self._native = self._encoder.native
        self._lens: dict[str, tuple[int, ...]] = {}
        self._cache = _ChunkCache(self._encoder, self._lens)
        self.special_tokens: dict[str, int] = {t: self._ids[t] for t in SPECIAL_TOKENS}
        self._special_re = regex.compile("|".join(regex.escape(t) for t in SPECIAL_TOKENS))
        self._pool: WorkerPool | None = None

    # ---- vocabulary ---------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of the vocabulary (16 hex characters); computed on first use."""
        return self.vocab.fingerprint()

    @property
    def vocab_size(self) -> int:
        """Number of ids (ids are 0..vocab_size-1)."""
        return len(self._names)

    @property
    def pad_id(self) -> int:
        """Id of "<|pad|>"."""
        return self.special_tokens[PAD]

    @property
    def bos_id(self) -> int:
        """Id of "<|bos|>" (encode never adds it; prepend it yourself)."""
        return self.special_tokens[BOS]

    @property
    def eos_id(self) -> int:
        """Id of "<|eos|>" (encode never adds it; append it yourself)."""
        return self.special_tokens[EOS]

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary name, or None if there is no such token."""
        return self._ids.get(token)

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary name of an id (ValueError for an id outside the vocabulary)."""
        self._check_id(token_id)
        return self._names[token_id]

    def kind(self, token_id: int) -> str:
        """Kind of a token: special, case, byte, space, root, suffix or bpe."""
        self._check_id(token_id)
        return self._kinds[token_id]

    # ---- encoding -----------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> Encoding:
        """Encode text. With allow_special, special-token names in the text become their ids."""
        return Encoding(self.encode_ids(text, allow_special), text, self, allow_special)

    def encode_ids(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids only: the fast path (no tokens or offsets)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}; decode bytes first")
        if not (allow_special and "<|" in text):
            return self._encode_plain(text)
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += self._encode_plain(text[pos : m.start()])
            ids.append(self.special_tokens[m.group()])
            pos = m.end()
        ids += self._encode_plain(text[pos:])
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        """Ids of text without special tokens, through the per-chunk cache."""
        if self._native is not None:
            # pre-tokenization, the cache and the segmentation of new chunks in compiled code
            return self._native.encode_text(text, self._encoder.encode_chunk_python, _CACHE_LIMIT)
        # map + chain keep the per-chunk loop in C; a cache miss calls _ChunkCache.__missing__
        return list(chain.from_iterable(map(self._cache.__getitem__, PATTERN.findall(text))))

    def _offsets(self, text: str, allow_special: bool) -> list[tuple[int, int]]:
        if not (allow_special and "<|" in text):
            return self._plain_offsets(text, 0)
        offsets: list[tuple[int, int]] = []
        pos = 0
        for m in self._special_re.finditer(text):
            offsets += self._plain_offsets(text[pos : m.start()], pos)
            offsets.append((m.start(), m.end()))
            pos = m.end()
        offsets += self._plain_offsets(text[pos:], pos)
        return offsets

    def _plain_offsets(self, text: str, pos: int) -> list[tuple[int, int]]:
        """(start, end) of each token of text without special tokens, the first at `pos`."""
        if self._native is not None:
            return self._native.offsets(text, self._encoder.encode_chunk_python, _CACHE_LIMIT, pos)
        offsets = []
        lens = self._lens
        for c in PATTERN.findall(text):
            for n in lens.get(c) or self._chunk_lens(c):
                offsets.append((pos, pos + n))
                pos += n
        return offsets

    def _chunk_lens(self, chunk: str) -> tuple[int, ...]:
        """Characters covered by each token of `chunk`, encoding (and caching) it if needed."""
        self._cache.__missing__(chunk)
        # another thread may clear the cache in between: then encode without it
        return self._lens.get(chunk) or self._encoder.encode_chunk(chunk)[1]

    def encode_batch(self, texts: Sequence[str], num_workers: int | None = None) -> list[Encoding]:
        """Encode many texts; large batches are split over worker processes (default: one per
        CPU), which are started on first use and kept for later batches (see `close`)."""
        return [
            Encoding(ids, text, self)
            for ids, text in zip(self.encode_batch_ids(texts, num_workers), texts)
        ]

    def encode_batch_ids(
        self, texts: Sequence[str], num_workers: int | None = None
    ) -> list[list[int]]:
        """Ids for many texts, encoded over `num_workers` processes when the batch is large."""
        if isinstance(texts, str):  # a str is a Sequence[str]: it would encode one char per item
            raise TypeError(
                "encode_batch() expects a list of strings, got a single str; "
                "use encode() for one text or wrap it in a list"
            )
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch() expects str items, got {type(t).__name__}")
        workers = num_workers or os.cpu_count() or 1
        total = sum(len(t) for t in texts)
        if workers <= 1 or len(texts) < 2 or total < _PARALLEL_MIN_CHARS or not fork_available():
            return [self.encode_ids(t) for t in texts]
        if self._pool is None or self._pool.workers != workers:
            self.close()
            self._pool = WorkerPool(self, workers)
        return self._pool.encode(texts)

    def close(self) -> None:
        """Stop batch-encoding worker processes, if any (they also stop with the tokenizer)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def segment(self, text: str) -> list[Piece]:
        """Morphological view: each token with the text it covers and its kind."""
        enc = self.encode(text)
        return [
            Piece(self._names[i], text[a:b], self._kinds[i])
            for i, (a, b) in zip(enc.ids, enc.offsets)
        ]

    # ---- decoding -----------------------------------------------------------------------

    def _check_id(self, token_id: int) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            if not (hasattr(token_id, "__index__") and not isinstance(token_id, float)):
                raise TypeError(f"token ids must be int, got {type(token_id).__name__}")
            token_id = token_id.__index__()
        if not 0 <= token_id < len(self._names):
            raise ValueError(
                f"unknown token id {token_id}: this vocabulary has ids 0..{len(self._names) - 1}"
            )

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text for ids; decode(encode(s).ids) == s for every string s."""
        ids = ids if type(ids) is list else list(ids)
        native = self._encoder.native
        if native is not None:
            # the compiled decoder (the same text as DecodeState); None for ids that are no
            # ints (such as NumPy integers: converted, then decoded there after all) and for
            # the rare text that it leaves to the Python decoder
            text = native.decode(ids, skip_special_tokens)
            if text is None and not all(isinstance(i, int) for i in ids):
                ids = [int(i) if not isinstance(i, int) else i for i in ids]
                text = native.decode(ids, skip_special_tokens)
            if text is not None:
                return text
        return self._decode_python(ids, skip_special_tokens)

    def _decode_python(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """decode with decoder.DecodeState: the reference for the compiled decoder."""
        ids = [int(i) if not isinstance(i, int) else i for i in ids]
        n = len(self._names)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"unknown token id {i}: this vocabulary has ids 0..{n - 1}")
        state = DecodeState(self._tables, skip_special_tokens)
        step = state.step
        return "".join([step(i) for i in ids]) + state.flush()

    def decode_stream(
        self, skip_special_tokens: bool = False, context: Iterable[int] = ()
    ) -> DecodeStream:
        """A streaming decoder that only ever emits complete characters; with `context` (a
        prompt's ids), it emits only the text that follows the context (see DecodeStream)."""
        return DecodeStream(self, skip_special_tokens, context)

    # ---- persistence --------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the vocabulary to `directory/tr_tokenizer.json` (atomically)."""
        return self.vocab.save(directory)

    def __reduce__(self):
        # pickle the vocabulary only (e.g. for multiprocessing workers), not the caches
        return (Tokenizer, (self.vocab,))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


# The vocabularies this package ships (src/tr_tokenizer/vocabs/NAME), oldest first; the last
# is the default. An old one stays so that data and models made with it keep their meaning;
# they also carry a copy of their vocabulary, which `load(path)` reads.
SHIPPED_VOCABULARIES = ("v1", "v2", "v3", "v4")
DEFAULT_VOCAB = SHIPPED_VOCABULARIES[-1]


def load(path: str | os.PathLike | None = None, *, version: str | None = None) -> Tokenizer:
    """Load a tokenizer: a directory saved by `Tokenizer.save`, or with no path the shipped
    vocabulary `version` (one of SHIPPED_VOCABULARIES; None: the newest, DEFAULT_VOCAB)."""
    if path is not None and version is not None:
        raise ValueError("pass a saved directory or a shipped version, not both")
    if version is not None and version not in SHIPPED_VOCABULARIES:
        raise ValueError(
            f"no shipped vocabulary {version!r}; this tr-tokenizer ships "
            f"{', '.join(SHIPPED_VOCABULARIES)}"
        )
    # Loading allocates ~100k containers (JSON lists, table tuples) that form no cycles. With
    # the collector running they survive into its oldest generation and trigger a full
    # collection soon after, typically in the middle of the first encode. So it is paused
    # while loading, and one young collection at the end (~10 ms) untracks the new tuples
    # here rather than in the first encode.
    enabled = gc.isenabled()
    gc.disable()
    try:
        if path is None:
            with resources.as_file(shipped_vocabulary_file(version or DEFAULT_VOCAB)) as p:
                return Tokenizer(Vocabulary.load(p))
        return Tokenizer(Vocabulary.load(path))
    finally:
        if enabled:
            gc.enable()
            gc.collect(1)


def shipped_vocabulary_file(version: str = DEFAULT_VOCAB):
    """The package resource holding the shipped vocabulary `version` (plain JSON)."""
    return resources.files("tr_tokenizer") / "vocabs" / version / FILE_NAME


@cache
def shipped_version(fingerprint: str) -> str | None:
    """The shipped vocabulary with this fingerprint (for messages about mismatched data), or
    None if it is none of them."""
    for version in SHIPPED_VOCABULARIES:
        with resources.as_file(shipped_vocabulary_file(version)) as p:
            if Vocabulary.load(p).fingerprint() == fingerprint:
                return version
    return None
