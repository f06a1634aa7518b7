"""Types of the compiled segmenter, built from _native.c (see encoder.ChunkEncoder)."""

from collections.abc import Callable
from typing import Final

from tr_tokenizer.encoder import SegmenterTables

NUM_CLASSES: Final[int]  # suffix tables: len(encoder.HARMONY_KEYS)
MAX_CHARS: Final[int]  # longer chunks are left to the Python encoder

_IdsAndLens = tuple[tuple[int, ...], tuple[int, ...]]

def split(text: str) -> list[str]:
    """The chunks of `text`, as pretokenize.PATTERN.findall(text)."""

class Segmenter:
    def __init__(self, tables: SegmenterTables) -> None: ...
    @property
    def cached(self) -> int:
        """The number of chunks in the cache."""
    def encode_chunk(self, chunk: str) -> _IdsAndLens | None:
        """(ids, lens), or None for a chunk left to the Python encoder."""
    def encode_text(
        self, text: str, fallback: Callable[[str], _IdsAndLens], limit: int
    ) -> list[int]:
        """The ids of the chunks of split(text), each from the cache or encoded and cached (by
        fallback(chunk) for a chunk left to Python); the cache is cleared when it holds `limit`
        chunks."""
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str | None:
        """The text of `ids`, or None where decoder.py must decode them."""
    def offsets(
        self, text: str, fallback: Callable[[str], _IdsAndLens], limit: int, start: int
    ) -> list[tuple[int, int]]:
        """(start, end) of each token of encode_text(text, fallback, limit), the first at
        `start`."""
