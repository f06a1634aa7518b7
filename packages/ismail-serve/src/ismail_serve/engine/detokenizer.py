"""Streaming text for one sequence: complete characters only, stop strings held back.

The tokenizer's `decode_stream` turns token ids into text as soon as whole characters are
available (a Turkish ğ split over two byte tokens never arrives broken), and `StopMatcher`
holds back any tail that could still become a stop string. What `push` returns, concatenated
with `finish`, equals a one-shot decode of the same tokens cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ismail_core.sampling import StopMatcher


class IncrementalText:
    """Token ids in, safe-to-show text out."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], skip_special_tokens: bool) -> None:
        self._decoder = tokenizer.decode_stream(skip_special_tokens=skip_special_tokens)
        self._stops = StopMatcher(list(stops))

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one generated token; return (text to emit now, whether a stop string was hit)."""
        return self._stops.feed(self._decoder.step(token_id))

    def finish(self) -> tuple[str, bool]:
        """End of generation: return the remaining text and whether it completed a stop string."""
        text, stopped = self._stops.feed(self._decoder.flush())
        if stopped:
            return text, True
        return text + self._stops.flush(), False
