"""The data pipeline's error type."""


class DataError(ValueError):
    """Bad data input (missing files, empty corpus, mismatched tokenizer); says how to fix it."""
