"""tr-tokenizer."""

__version__ = "0.1.0"
