"""Data pipeline of `ismail data`: sources -> cleaning -> split -> tokenization -> shards.

Reading shards (ShardedSplit) does not import `datasets`; DataSpec and prepare_data, which do,
are imported on first use so training processes start faster.
"""

from __future__ import annotations

import importlib
from typing import Any

from ismail_core.corpus.errors import DataError
from ismail_core.corpus.shards import ShardedSplit, load_metadata

__all__ = ["DataError", "DataSpec", "ShardedSplit", "load_metadata", "prepare_data"]


def __getattr__(name: str) -> Any:
    if name in ("DataSpec", "prepare_data"):
        return getattr(importlib.import_module("ismail_core.corpus.prepare"), name)
    raise AttributeError(f"module 'ismail_core.corpus' has no attribute {name!r}")
