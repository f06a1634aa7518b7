"""ismail-core tells ismail-kernels which of its layers stay in high precision."""

from __future__ import annotations

import warnings

import pytest
from ismail_core import ModelConfig, Transformer
from ismail_core.fp8 import FP8_SKIP_NAMES, fp8_config

kernels = pytest.importorskip("ismail_kernels")

# What ismail-kernels skipped by name before callers named their layers; on ismail's models
# `fp8_config` must convert exactly the same layers.
FORMER_KERNEL_SKIPS = (
    "embed*",
    "wte",
    "wpe",
    "*norm*",
    "gate",
    "router",
    "head",
    "lm_head",
    "output",
    "wkv_b",
)
VARIANTS = [
    {"attention": "mla"},
    {"attention": "mla", "q_lora_rank": 64, "tie_embeddings": True},
    {"attention": "mha", "pos_emb": "learned", "bias": True, "norm": "layernorm"},
    {"attention": "gqa", "n_kv_heads": 2, "n_routed_experts": 0},
    {"attention": "latent", "sliding_window": 16},
]


def fp8_layers(config, **overrides) -> set[str]:
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=256,
        dim=128,
        n_layers=2,
        max_seq_len=64,
        inter_dim=256,
        moe_inter_dim=128,
        kv_lora_rank=32,
        **overrides,
    )
    model = Transformer(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers kept for their shape are named in a warning
        kernels.quantize_model(model, config)
    return {name for name, m in model.named_modules() if isinstance(m, kernels.FP8Linear)}


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_fp8_config_converts_the_layers_the_kernels_once_chose(overrides) -> None:
    former = kernels.FP8Config(block_size=32, skip_names=FORMER_KERNEL_SKIPS)
    converted = fp8_layers(fp8_config(block_size=32), **overrides)
    assert converted == fp8_layers(former, **overrides)
    assert converted and not any(n.split(".")[-1] in FP8_SKIP_NAMES for n in converted)
