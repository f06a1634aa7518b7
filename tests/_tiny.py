"""A tiny randomly initialised model with the shipped tr-tokenizer, for the end-to-end tests.

Random weights emit plenty of bare suffix ids, which is what the tests of in-context decoding
need, and the model is small enough that a forward pass costs milliseconds on a CPU. Imported
like tests/_serve.py (the test adds tests/ to sys.path).
"""

from __future__ import annotations

from pathlib import Path

import torch
from ismail_core import ModelConfig, Transformer
from ismail_core.checkpoint import save_checkpoint
from ismail_core.tokenizer import Tokenizer, load_tokenizer


def tiny_tr_model(max_seq_len: int, seed: int = 0) -> tuple[Transformer, Tokenizer]:
    """(model in eval mode, the shipped tr-tokenizer)."""
    tok = load_tokenizer("tr")
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=max_seq_len,
        dim=64,
        n_layers=2,
        n_heads=2,
        inter_dim=128,
        moe_inter_dim=64,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
    )
    return Transformer(cfg).eval(), tok


def tiny_tr_checkpoint(directory: Path, max_seq_len: int, seed: int = 0) -> Path:
    """Save `tiny_tr_model(max_seq_len, seed)` as a checkpoint directory; returns its path."""
    model, tok = tiny_tr_model(max_seq_len, seed)
    return save_checkpoint(directory, model, tok)
