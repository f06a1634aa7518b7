"""Training configuration (files, flags, suggestions) and the learning-rate schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ismail_core.train.config import ConfigError, OptimSection, build_config, read_config_file
from ismail_core.train.lr_schedule import lr_at


def test_layers_apply_in_order(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "preset: tiny\noptim:\n  lr: 0.001\n  warmup_steps: 7\nmodel:\n  dim: 128\n"
        "train:\n  compile: yes\n"
    )
    cfg = build_config(read_config_file(yaml_file), {"optim.lr": "2e-3", "model.n_layers": "3"})
    assert cfg.optim.lr == 0.002 and cfg.optim.warmup_steps == 7
    assert cfg.train.compile is True
    model = cfg.model_config(vocab_size=1000)
    assert (model.dim, model.n_layers, model.vocab_size) == (128, 3, 1000)
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps(cfg.to_dict()))
    assert build_config(read_config_file(json_file)) == cfg
    assert cfg.run.out_dir == "runs/tiny"
    assert build_config({"preset": "ismail-512"}).run.out_dir == "runs/ismail-512"


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"optim.lrr": 1}, "unknown config key 'optim.lrr' \\(did you mean 'optim.lr'\\?\\)"),
        ({"model.dimm": 1}, "did you mean 'model.dim'"),
        ({"train.steps": "many"}, "train.steps: expected int, got 'many'"),
        ({"train.compile": "maybe"}, "expected bool"),
        ({"train.precision": "fp4"}, "train.precision must be one of"),
        ({"optim.min_lr": 1.0}, "min_lr"),
    ],
)
def test_bad_keys_and_values(layer: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(layer)


def test_unknown_preset_and_bad_model_values() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'tiney'.*did you mean 'tiny'"):
        build_config({"preset": "tiney"}).model_config()
    with pytest.raises(ConfigError, match="n_activated_experts"):
        build_config({"model.n_activated_experts": 9}).model_config()


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "none.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="cannot parse"):
        read_config_file(broken)


@given(
    total=st.integers(1, 500),
    warmup=st.integers(0, 50),
    peak=st.floats(1e-5, 1e-1),
    floor_share=st.floats(0, 1),
)
def test_lr_schedule_warms_up_then_decays_to_the_floor(
    total: int, warmup: int, peak: float, floor_share: float
) -> None:
    cfg = OptimSection(lr=peak, min_lr=peak * floor_share, warmup_steps=warmup)
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    assert all(0 < lr <= peak * (1 + 1e-12) for lr in lrs)
    assert all(a <= b for a, b in zip(lrs[: min(warmup, total)], lrs[1 : min(warmup, total)]))
    after = lrs[warmup:]
    assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))  # non-increasing
    assert all(lr >= cfg.min_lr * (1 - 1e-12) for lr in after)
    assert lr_at(total, total, cfg) == pytest.approx(cfg.min_lr) or warmup >= total
