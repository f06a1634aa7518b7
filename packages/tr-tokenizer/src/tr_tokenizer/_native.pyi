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
    def encode_chunk(self, chunk: str) -> _IdsAndLens | None:
        """(ids, lens), or None for a chunk left to the Python encoder."""
    def encode(
        self,
        chunks: list[str],
        cache: dict[str, tuple[int, ...]],
        lens: dict[str, tuple[int, ...]],
        fallback: Callable[[str], _IdsAndLens],
        limit: int,
    ) -> list[int]:
        """The ids of all chunks, through the cache."""
    def encode_text(
        self,
        text: str,
        cache: dict[str, tuple[int, ...]],
        lens: dict[str, tuple[int, ...]],
        fallback: Callable[[str], _IdsAndLens],
        limit: int,
    ) -> list[int]:
        """encode() of the chunks of split(text)."""
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str | None:
        """The text of `ids`, or None where decoder.py must decode them."""
    def offsets(
        self,
        chunks: list[str],
        lens: dict[str, tuple[int, ...]],
        lens_of: Callable[[str], tuple[int, ...]],
        pos: int,
        out: list[tuple[int, int]],
    ) -> int:
        """Append each token's (start, end) to `out`; return the end position."""
