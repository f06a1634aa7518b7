"""The data pipeline's error type."""

from ismail_core.errors import IsmailError


class DataError(IsmailError, ValueError):
    """Bad data input (missing files, empty corpus, mismatched tokenizer); says how to fix it."""
