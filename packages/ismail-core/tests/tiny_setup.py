"""Tiny setups shared by test files and folders: the tiny model the end-to-end and serving tests
run (a forward pass costs milliseconds on a CPU), the smaller ones of the model's unit tests,
and a seconds-long fine-tuning run.

Used by ismail-core's tests, ismail-serve's tests and the root tests/ (tests/_tiny.py). They
import this file after putting its folder on sys.path (see lm_eval_tasks.py), since
--import-mode=importlib does not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ismail_core import ModelConfig
from ismail_core.finetune.config import FinetuneConfig
from ismail_core.train.config import build_config

# ModelConfig.preset("tiny") overrides of a few-thousand-parameter MLA + MoE model: every model
# test (test_model, test_decode_fast) runs in milliseconds.
SMALL: dict[str, Any] = dict(
    vocab_size=97,
    max_seq_len=64,
    dim=48,
    n_layers=3,
    n_heads=4,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    inter_dim=64,
    moe_inter_dim=24,
    n_dense_layers=1,
    n_routed_experts=4,
    n_activated_experts=2,
)

# Narrower still, for the tests of routing and the MoE layer (test_model_moe, test_routing).
SMALL_MOE: dict[str, Any] = dict(
    vocab_size=89,
    max_seq_len=64,
    dim=32,
    n_layers=3,
    n_heads=2,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=8,
    inter_dim=48,
    moe_inter_dim=16,
    n_dense_layers=1,
    n_routed_experts=4,
    n_activated_experts=2,
)


def tiny_config(vocab_size: int, max_seq_len: int = 128) -> ModelConfig:
    """The "tiny" preset shrunk further: 2 layers of width 64, a 32-rank latent KV cache."""
    return ModelConfig.preset(
        "tiny",
        vocab_size=vocab_size,
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


def finetune_config(base: Path, data: Path, out: Path, **overrides: Any) -> FinetuneConfig:
    """Six steps of fine-tuning `base` on `data` into `out`, evaluated (4 replies of 4 tokens)
    and saved every 3 steps; overrides are flat config keys such as "finetune.task"."""
    layer = {
        "finetune.base": str(base),
        "finetune.data": str(data),
        "finetune.val_fraction": 0.2,
        "finetune.eval_replies": 4,
        "finetune.max_new_tokens": 4,
        "run.out_dir": str(out),
        "train.steps": 6,
        "train.batch_size": 4,
        "train.precision": "fp32",
        "eval.interval": 3,
        "checkpoint.interval": 3,
        "log.progress": False,
        "log.interval": 1,
        **overrides,
    }
    return build_config(layer, config_cls=FinetuneConfig)


def stop_at(step: int) -> Callable[[int, Any], None]:
    """An `on_step` callback that interrupts a run after `step`, as Ctrl-C would (the trainer
    saves a checkpoint to resume from)."""

    def on_step(done: int, trainer: Any) -> None:
        if done == step:
            raise KeyboardInterrupt

    return on_step
