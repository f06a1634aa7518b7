"""The training loop: learning, checkpoints, exact resume, precisions, expert rotation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ismail_core.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    load_model,
    load_weights,
    resolve_checkpoint,
)
from ismail_core.train import ConfigError, build_config, train
from ismail_core.train.metrics import read_metrics
from ismail_core.train.optimizer import OptimizerError


@pytest.fixture
def make_cfg(tiny_train_layer, tiny_data: Path):
    """make_cfg(dir, **overrides) -> TrainConfig of a tiny run in dir/run on the tiny data."""

    def make(directory: Path, data: Path | None = None, **overrides):
        return build_config(tiny_train_layer(directory / "run", data or tiny_data, **overrides))

    return make


def test_training_lowers_validation_loss_and_keeps_checkpoints(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(
        tmp_path,
        **{
            "train.steps": 24,
            "optim.lr": 1e-2,
            "checkpoint.keep_last": 2,
            "checkpoint.interval": 8,
            "eval.interval": 8,
        },
    )
    result = train(cfg)
    first, last = result.evals[0], result.evals[-1]
    assert (first["step"], last["step"]) == (0, 24)
    assert last["bits_per_byte"] < 0.85 * first["bits_per_byte"]
    ckpts = tmp_path / "run" / "checkpoints"
    steps = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_"))
    assert steps == ["step_00000016", "step_00000024"]  # keep_last=2; best is among them
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000024"
    assert (ckpts / "best").resolve().name == "step_00000024"
    rows = read_metrics(tmp_path / "run")
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 25))
    assert len(train_rows[0]["expert_load"]) == 1  # one MoE layer (layer 0 is dense)
    assert sum(train_rows[0]["expert_load"][0]) == 4 * 32 * 2  # tokens x top-2
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["model_config"]["dim"] == 64 and saved["train"]["steps"] == 24
    model, tok = load_model(tmp_path / "run")
    assert tok.vocab_size == model.cfg.vocab_size == 384


def test_resume_refuses_data_from_another_tokenizer(
    tmp_path: Path, make_cfg, tiny_data: Path, hf_tokenizer_file: Path
) -> None:
    train(make_cfg(tmp_path, **{"train.steps": 2}))
    other = tmp_path / "other-data"
    other.mkdir()
    for item in tiny_data.iterdir():
        (other / item.name).symlink_to(item)
    meta = json.loads((tiny_data / "meta.json").read_text())
    (other / "meta.json").unlink()
    (other / "tokenizer").unlink()
    tok_json = json.loads(hf_tokenizer_file.read_text())
    tok_json["model"]["vocab"]["zzzz"] = len(tok_json["model"]["vocab"])  # one more token
    (other / "tokenizer").mkdir()
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok_json))
    from ismail_core.tokenizer import load_tokenizer

    meta["tokenizer"]["fingerprint"] = load_tokenizer(other / "tokenizer").fingerprint
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="trained with tokenizer .* different things"):
        train(make_cfg(tmp_path, other, **{"train.steps": 4}))


def test_corrupt_latest_checkpoint_is_named(tmp_path: Path, make_cfg) -> None:
    train(make_cfg(tmp_path, **{"train.steps": 6, "checkpoint.interval": 3}))
    weights = resolve_checkpoint(tmp_path / "run") / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    earlier = tmp_path / "run" / "checkpoints" / "step_00000003"
    with pytest.raises(CheckpointError, match=f"{weights}.*corrupt.*--run.resume {earlier}"):
        train(make_cfg(tmp_path, **{"train.steps": 8}))
    resumed = train(make_cfg(tmp_path, **{"train.steps": 8, "run.resume": str(earlier)}))
    assert resumed.step == 8 and resumed.checkpoint.name == "step_00000008"


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"train.seq_len": 65}, ConfigError, "exceeds the model's max_seq_len 64"),
        ({"optim.name": "adamw8bit"}, OptimizerError, "adamw8bit needs a CUDA GPU"),
        ({"model.vocab_size": 100}, ConfigError, "smaller than the tokenizer's 384"),
        ({"train.expert_rotation": 9}, ConfigError, "exceeds the model's 4 routed experts"),
        ({"run.resume": "/nonexistent/ckpt"}, CheckpointError, "does not exist"),
    ],
)
def test_bad_training_setups(tmp_path: Path, make_cfg, overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        train(make_cfg(tmp_path, **overrides))


def test_resume_refuses_a_different_model(tmp_path: Path, make_cfg) -> None:
    train(make_cfg(tmp_path, **{"train.steps": 2}))
    with pytest.raises(ConfigError, match="different model \\(dim: 64 -> 96\\)"):
        train(make_cfg(tmp_path, **{"train.steps": 4, "model.dim": 96}))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path: Path, make_cfg, precision: str) -> None:
    # fp16 is emulated on CPUs (slow), so few steps and a short evaluation.
    overrides = {"train.precision": precision, "train.steps": 2, "eval.max_tokens": 256}
    result = train(make_cfg(tmp_path, **overrides))
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert result.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if precision == "fp16":
        state = torch.load(result.checkpoint / "trainer_state.pt", weights_only=True)
        assert state["scaler"]["scale"] > 0


@pytest.mark.slow
def test_fp8_training_through_ismail_kernels(tmp_path: Path, make_cfg) -> None:
    from ismail_core.train.trainer import Trainer
    from ismail_kernels import FP8TrainLinear

    # dim 128 so linear layers have an input size that is a multiple of the FP8 block.
    cfg = make_cfg(
        tmp_path,
        **{"train.precision": "fp8", "train.steps": 2, "model.dim": 128, "eval.interval": 0},
    )
    trainer = Trainer(cfg)
    assert any(isinstance(m, FP8TrainLinear) for m in trainer.raw_model.modules())
    result = trainer.run()
    assert result.evals[-1]["loss"] < 7  # ln(384) ~ 5.95: finite and sane
    model, _ = load_model(tmp_path / "run")  # the checkpoint holds plain weights
    assert not any(isinstance(m, FP8TrainLinear) for m in model.modules())


def test_expert_rotation_freezes_the_other_experts(tmp_path: Path, make_cfg) -> None:
    from ismail_core.train.trainer import Trainer

    cfg = make_cfg(
        tmp_path,
        **{"train.expert_rotation": 2, "train.rotation_interval": 2, "train.steps": 2},
    )
    trainer = Trainer(cfg)
    moe = trainer.raw_model.moe_layers()[0]
    before = [[p.detach().clone() for p in e.parameters()] for e in moe.experts]
    trainer.run()
    changed = [
        any(not torch.equal(p, q) for p, q in zip(e.parameters(), old))
        for e, old in zip(moe.experts, before)
    ]
    assert changed == [True, True, False, False]
    assert all(p.grad is None for e in moe.experts[2:] for p in e.parameters())


def test_activation_checkpointing_gives_the_same_training(tmp_path: Path, make_cfg) -> None:
    plain = train(make_cfg(tmp_path / "a", **{"train.steps": 2}))
    overrides = {"train.steps": 2, "train.activation_checkpointing": True}
    ckpt = train(make_cfg(tmp_path / "b", **overrides))
    a = load_weights(plain.checkpoint / WEIGHTS_FILE)
    b = load_weights(ckpt.checkpoint / WEIGHTS_FILE)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_tensorboard_logging_and_missing_wandb(tmp_path: Path, make_cfg) -> None:
    pytest.importorskip("tensorboard")
    train(make_cfg(tmp_path, **{"train.steps": 1, "log.tensorboard": True}))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the wandb package"):
            train(make_cfg(tmp_path / "w", **{"log.wandb": True}))


def test_out_of_memory_names_the_knobs(tmp_path: Path, make_cfg, monkeypatch) -> None:
    from ismail_core.train.trainer import Trainer, TrainError

    def oom(self, step):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_forward_backward", oom)
    with pytest.raises(TrainError, match="out of GPU memory.*--train.batch_size.*adamw8bit"):
        train(make_cfg(tmp_path))


def test_batch_tokens_sets_gradient_accumulation(tmp_path: Path, make_cfg) -> None:
    from ismail_core.train.trainer import Trainer

    trainer = Trainer(make_cfg(tmp_path, **{"train.batch_tokens": 500}))  # 4 x 32 per micro
    assert trainer.grad_accum == 4 and trainer.tokens_per_step == 512
