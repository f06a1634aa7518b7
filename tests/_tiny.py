"""A tiny randomly initialised model with the shipped tr-tokenizer, for the end-to-end tests.

Random weights emit plenty of bare suffix ids, which is what the tests of in-context decoding
need, and the model is small enough that a forward pass costs milliseconds on a CPU. Imported
like tests/_serve.py (the test adds tests/ to sys.path); the model's shape is ismail-core's
tests' tiny_setup.py, shared with the package tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ismail_core import Transformer
from ismail_core.checkpoint import save_checkpoint
from ismail_core.tokenizer import Tokenizer, load_tokenizer

sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "ismail-core" / "tests"))
from tiny_setup import tiny_config  # noqa: E402


def tiny_tr_model(max_seq_len: int, seed: int = 0) -> tuple[Transformer, Tokenizer]:
    """(model in eval mode, the shipped tr-tokenizer)."""
    tok = load_tokenizer("tr")
    torch.manual_seed(seed)
    return Transformer(tiny_config(tok.vocab_size, max_seq_len)).eval(), tok


def tiny_tr_checkpoint(directory: Path, max_seq_len: int, seed: int = 0) -> Path:
    """Save `tiny_tr_model(max_seq_len, seed)` as a checkpoint directory; returns its path."""
    model, tok = tiny_tr_model(max_seq_len, seed)
    return save_checkpoint(directory, model, tok)
