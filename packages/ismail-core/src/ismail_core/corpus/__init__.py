"""Data pipeline of `ismail data`: sources -> cleaning -> split -> tokenization -> shards."""

from ismail_core.corpus.errors import DataError
from ismail_core.corpus.prepare import DataSpec, prepare_data
from ismail_core.corpus.shards import ShardedSplit, load_metadata

__all__ = ["DataError", "DataSpec", "ShardedSplit", "load_metadata", "prepare_data"]
