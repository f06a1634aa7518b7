"""Loading a checkpoint into an engine: cache sizing, FP8, start-up message, CLI errors."""

from __future__ import annotations

import pytest
import torch
from ismail_core import Transformer
from ismail_core.checkpoint import save_checkpoint
from ismail_serve.cli import main
from ismail_serve.metrics import ServeMetrics
from ismail_serve.server import ServeConfig, describe_engine, load_engine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, make_config):
    torch.manual_seed(0)
    # dim 128 so the Linear layers fit FP8's 128-wide blocks
    cfg = make_config(tokenizer.vocab_size, max_seq_len=128)
    cfg = type(cfg).from_dict({**cfg.to_dict(), "dim": 128, "kv_lora_rank": 128})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", Transformer(cfg), tokenizer)


def generate(engine, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy ids through the engine's runner, one step at a time (no engine thread)."""
    runner, ids = engine.runner, list(prompt_ids)
    runner.blocks.allocate("g", ids, reuse=False)
    logits = runner.forward(["g"], [ids], [0], last_only=True)[0]
    out = []
    for _ in range(n):
        token = int(logits.argmax())
        out.append(token)
        runner.blocks.append("g", token)
        logits = runner.forward(["g"], [[token]], [len(ids)], last_only=True)[0]
        ids.append(token)
    runner.blocks.free("g")
    return out


def test_cache_sized_from_flags_or_memory_budget(checkpoint):
    config = ServeConfig(str(checkpoint), max_batch=3, max_model_len=64)
    engine = load_engine(config, ServeMetrics())
    assert engine.config.max_batch == 3 and engine.config.max_model_len == 64
    runner = engine.runner
    per_token = runner.cache_bytes_per_token()
    assert runner.num_blocks == 3 * 4 and runner.block_size == 16  # 3 sequences of 64 tokens
    assert runner.cache_bytes() == 3 * 64 * per_token
    message = describe_engine(engine, ServeConfig(str(checkpoint)), pages=False)
    assert f"12 blocks x 16 tokens x {per_token} B/token" in message
    assert "prefix caching on" in message

    budget_mib = 37 * 16 * per_token / 2**20  # room for exactly 37 blocks
    engine = load_engine(
        ServeConfig(
            str(checkpoint),
            max_model_len=64,
            kv_cache_memory_mib=budget_mib,
            enable_prefix_caching=False,
        ),
        ServeMetrics(),
    )
    assert engine.runner.num_blocks == 37 and engine.config.max_batch == 16
    assert not engine.runner.blocks.enable_prefix_caching


def test_bad_sizes_are_explained(checkpoint):
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 128"):
        load_engine(ServeConfig(str(checkpoint), max_model_len=4096), ServeMetrics())
    with pytest.raises(ValueError, match="cannot hold one sequence of 128 tokens"):
        load_engine(ServeConfig(str(checkpoint), kv_cache_memory_mib=1e-6), ServeMetrics())


def test_fp8_quantized_engine_follows_the_full_precision_one(checkpoint, tokenizer):
    from ismail_kernels import FP8Linear

    full = load_engine(ServeConfig(str(checkpoint), max_batch=1), ServeMetrics())
    fp8 = load_engine(ServeConfig(str(checkpoint), max_batch=1, quantize="fp8"), ServeMetrics())
    assert any(isinstance(m, FP8Linear) for m in fp8.runner.model.modules())
    assert not any(isinstance(m, FP8Linear) for m in full.runner.model.modules())
    prompt = tokenizer.encode("Kitaplarımızdan birini okudunuz mu?").ids
    for engine in (full, fp8):
        engine.runner.blocks.allocate("p", prompt)
    a = full.runner.forward(["p"], [prompt], [0])[0]
    b = fp8.runner.forward(["p"], [prompt], [0])[0]
    for engine in (full, fp8):
        engine.runner.blocks.free("p")
    # FP8 weights move the logits a little, not a lot.
    assert torch.allclose(a, b, atol=0.1 * a.abs().max().item())
    assert len(generate(fp8, prompt, 5)) == 5


def test_cli_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "ismail-serve: error:" in capsys.readouterr().err


def test_api_key_from_flag_or_environment(checkpoint, monkeypatch):
    configs = []

    def fake_serve(config) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr("ismail_serve.server.serve", fake_serve)
    monkeypatch.setenv("ISMAIL_API_KEY", "key-from-env")
    assert main([str(checkpoint)]) == 0
    assert main([str(checkpoint), "--api-key", "key-from-flag"]) == 0
    assert [c.api_key for c in configs] == ["key-from-env", "key-from-flag"]
    monkeypatch.delenv("ISMAIL_API_KEY")
    assert main([str(checkpoint)]) == 0
    assert configs[-1].api_key is None
