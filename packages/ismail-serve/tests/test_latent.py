"""Serving a latent-vector attention model (attention="latent"): the engine's batched,
chunked prefill and decode over the paged cache (with its per-block memory state) give every
request its solo, uncached greedy result, and a checkpoint loads with its cache sized."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ismail_core import Transformer
from ismail_core.checkpoint import save_checkpoint
from ismail_core.config import ModelConfig
from ismail_serve.metrics import ServeMetrics
from ismail_serve.server import ServeConfig, load_engine

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: reuse test_engine's
from test_engine import PROMPTS, reference_greedy, submit_greedy  # noqa: E402


def latent_model(make_config, vocab_size: int) -> Transformer:
    """The serve tests' tiny model with latent attention: window 5, 4 latents, 2 kv heads."""
    torch.manual_seed(0)
    cfg = make_config(vocab_size).to_dict()
    cfg.update(attention="latent", sliding_window=5, n_latents=4, n_heads=4, n_kv_heads=2)
    return Transformer(ModelConfig.from_dict(cfg)).eval()


@pytest.mark.parametrize("prefill_chunk", [5, 64])
def test_batched_greedy_matches_uncached_reference(
    make_engine, make_config, tokenizer, prefill_chunk
):
    # block size 4: prompts and decoding cross many blocks, so every memory state read back
    # from the cache was written by an earlier call (or by another row's shared prefix)
    model = latent_model(make_config, tokenizer.vocab_size)
    engine = make_engine(
        model_override=model, block_size=4, max_batch=4, prefill_chunk=prefill_chunk
    )
    collectors = submit_greedy(engine, tokenizer, PROMPTS + PROMPTS[:2], 12)
    for prompt, c in zip(PROMPTS + PROMPTS[:2], collectors):
        expected = reference_greedy(model, tokenizer.encode(prompt).ids, 12)
        assert c.result() == tokenizer.decode(expected)
    assert engine.runner.blocks.usage == 0


def test_checkpoint_loads_with_its_memory_state_in_the_cache_size(tmp_path, make_config, tokenizer):
    model = latent_model(make_config, tokenizer.vocab_size)
    checkpoint = save_checkpoint(tmp_path / "latent", model, tokenizer)
    engine = load_engine(ServeConfig(str(checkpoint), max_batch=2), ServeMetrics())
    runner = engine.runner
    assert runner.decoder is runner.model  # no fused path for latent attention
    cache = runner.cache
    assert cache.has_memory and cache.state_bytes_per_block() > 0
    state, size = cache.state_bytes_per_block(), cache.block_size
    per_token = runner.cache_bytes_per_token()  # the state's share, rounded up, included
    assert per_token * size - size < runner.cache_bytes() / runner.num_blocks <= per_token * size
    # a memory budget buys blocks at that price (a block of one position would charge the
    # whole state to every token and buy a fraction of them)
    budget_mib = 9 * per_token * size / 2**20
    config = ServeConfig(str(checkpoint), max_model_len=32, kv_cache_memory_mib=budget_mib)
    assert load_engine(config, ServeMetrics()).runner.num_blocks == 9
    assert state > per_token  # the state is more than a token's keys and values here
