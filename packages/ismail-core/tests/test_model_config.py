"""ModelConfig presets, validation and config.json round trip."""

import json

import pytest
from ismail_core.config import PRESETS, ModelConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name, tmp_path):
    cfg = ModelConfig.preset(name)
    cfg.save(tmp_path)
    assert ModelConfig.load(tmp_path) == cfg
    assert ModelConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg


def test_preset_overrides_and_issue_shapes():
    cfg = ModelConfig.preset("tiny", vocab_size=500)
    assert cfg.vocab_size == 500 and cfg.attention == "mla"
    big = ModelConfig.preset("ismail-512")
    assert (big.vocab_size, big.dim, big.n_layers, big.n_heads, big.kv_lora_rank) == (
        32768,
        512,
        16,
        12,
        256,
    )
    assert big.n_routed_experts == 4 and big.n_activated_experts == 2 and big.n_shared_experts >= 1
    xl = ModelConfig.preset("ismail-1024")
    assert (xl.dim, xl.n_layers, xl.n_dense_layers, xl.n_routed_experts) == (1024, 20, 3, 6)
    assert xl.max_seq_len >= 2048
    gpt2 = ModelConfig.preset("gpt2-124m")
    assert gpt2.attention == "mha" and gpt2.mlp == "gelu" and gpt2.n_routed_experts == 0


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match="did you mean 'n_heads'"):
        ModelConfig.from_dict({"n_head": 4})
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        ModelConfig.preset("tinny")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention="mha", dim=250, n_heads=4), "not divisible by n_heads"),
        (dict(attention="gqa", n_heads=6, n_kv_heads=4, dim=240), "multiple of n_kv_heads"),
        (dict(n_activated_experts=5), "n_activated_experts"),
        (dict(n_expert_groups=3), "divisible by n_expert_groups"),
        (dict(qk_rope_head_dim=15), "even"),
        (dict(attention="mla", pos_emb="learned"), "mla needs pos_emb"),
        (dict(rope_factor=0.5), "rope_factor"),
        (dict(attention="bogus"), "attention must be one of"),
        (dict(attention="mha", n_kv_heads=2), "use attention='gqa'"),
    ],
)
def test_impossible_combinations_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("tiny", **overrides)


def test_load_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.load(tmp_path)
