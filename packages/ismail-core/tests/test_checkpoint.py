"""Checkpoint directories: atomic save, tied weights, run-directory resolution, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ismail_core.atomic import atomic_symlink
from ismail_core.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint_tokenizer,
    load_config,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from ismail_core.config import ModelConfig
from ismail_core.tokenizer import load_tokenizer


class TiedLM(torch.nn.Module):
    """A minimal model with a tied embedding / LM head, like the real one can have."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.cfg = config
        self.embed = torch.nn.Embedding(config.vocab_size, config.dim)
        self.norm = torch.nn.LayerNorm(config.dim)
        self.head = torch.nn.Linear(config.dim, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight


def _config() -> ModelConfig:
    return ModelConfig.preset("tiny", vocab_size=384, dim=32, n_layers=2, tie_embeddings=True)


def test_save_and_load_round_trip(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    model = TiedLM(_config())
    tok = load_tokenizer(hf_tokenizer_file)
    state = {"step": 7, "rng": torch.get_rng_state()}
    ckpt = save_checkpoint(tmp_path / "step_7", model, tok, trainer_state=state)
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR, TRAINER_STATE_FILE]
    )
    assert load_config(ckpt) == model.cfg
    assert load_checkpoint_tokenizer(ckpt).fingerprint == tok.fingerprint
    weights = load_weights(ckpt / WEIGHTS_FILE)
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    # The tied tensor is stored once and restored as the same storage.
    assert weights["head.weight"].data_ptr() == weights["embed.weight"].data_ptr()
    resumed = load_trainer_state(ckpt)
    assert resumed["step"] == 7 and torch.equal(resumed["rng"], state["rng"])
    # No temporary directories are left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["step_7"]


def test_tr_tokenizer_checkpoint_from_before_the_vocabulary_rename_loads(tmp_path: Path) -> None:
    # tr-tokenizer's vocabulary was saved as tokenizer.json until it got its own name
    # (tr_tokenizer.json); checkpoints written before must load as they did.
    from tr_tokenizer.vocab import FILE_NAME, LEGACY_FILE_NAME

    tok = load_tokenizer("tr")
    ckpt = save_checkpoint(tmp_path / "old", TiedLM(_config()), tok)
    assert (ckpt / TOKENIZER_DIR / FILE_NAME).is_file()
    (ckpt / TOKENIZER_DIR / FILE_NAME).rename(ckpt / TOKENIZER_DIR / LEGACY_FILE_NAME)
    again = load_checkpoint_tokenizer(ckpt)
    assert again.kind == "tr" and again.fingerprint == tok.fingerprint
    assert again.encode("Kitaplarımızdan").ids == tok.encode("Kitaplarımızdan").ids


def test_overwrite_replaces_atomically(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    save_checkpoint(tmp_path / "ck", TiedLM(_config()), tok)
    model = TiedLM(_config())
    save_checkpoint(tmp_path / "ck", model, tok)
    weights = load_weights(tmp_path / "ck" / WEIGHTS_FILE)
    assert torch.equal(weights["norm.weight"], model.norm.weight)
    assert load_trainer_state(tmp_path / "ck") is None
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_failed_save_keeps_previous_checkpoint(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    good = TiedLM(_config())
    save_checkpoint(tmp_path / "ck", good, tok)

    class Unpicklable:
        pass

    with pytest.raises((AttributeError, TypeError)):  # pickling a local class fails
        save_checkpoint(tmp_path / "ck", TiedLM(_config()), tok, trainer_state={"x": Unpicklable})
    weights = load_weights(tmp_path / "ck" / WEIGHTS_FILE)
    assert torch.equal(weights["embed.weight"], good.embed.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_run_directory_resolves_latest(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(hf_tokenizer_file)
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    for step in (10, 20):
        save_checkpoint(ckpts / f"step_{step:08d}", TiedLM(_config()), tok)
    atomic_symlink("step_00000020", ckpts / "latest")
    expected = (ckpts / "step_00000020").resolve()
    assert resolve_checkpoint(run) == expected
    assert resolve_checkpoint(ckpts) == expected
    assert resolve_checkpoint(ckpts / "latest") == ckpts / "latest"
    atomic_symlink("step_00000010", ckpts / "latest")
    assert resolve_checkpoint(run) == (ckpts / "step_00000010").resolve()
    assert not any(p.name.startswith(".") for p in ckpts.iterdir())


def test_errors_name_the_file(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        resolve_checkpoint(tmp_path / "run")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path)

    ck = save_checkpoint(tmp_path / "ck", TiedLM(_config()), load_tokenizer(hf_tokenizer_file))
    weights = ck / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}.*corrupt"):
        load_weights(weights)
    os.remove(weights)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(weights)
    (ck / CONFIG_FILE).write_text('{"dimm": 3}')
    with pytest.raises(CheckpointError, match="did you mean 'dim'"):
        load_config(ck)
    (ck / TRAINER_STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
        load_trainer_state(ck)


def test_load_model_gives_identical_logits(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    from ismail_core import Transformer, load_model

    torch.manual_seed(0)
    cfg = ModelConfig.preset(
        "tiny", vocab_size=384, dim=64, n_layers=2, max_seq_len=32, tie_embeddings=True
    )
    model = Transformer(cfg).eval()
    tok = load_tokenizer(hf_tokenizer_file)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_1", model, tok)
    atomic_symlink("step_1", tmp_path / "run" / "checkpoints" / "latest")
    loaded, loaded_tok = load_model(tmp_path / "run")
    ids = torch.tensor([tok.encode("Yurtta sulh, cihanda sulh!").ids])
    assert torch.equal(loaded(ids), model(ids))
    assert loaded_tok.fingerprint == tok.fingerprint
    assert not loaded.training
    half, _ = load_model(tmp_path / "run", dtype=torch.bfloat16)
    assert half.embed.weight.dtype == torch.bfloat16
    # weights stored in bf16 load as bf16 (not into float32 parameters of twice the size)
    save_checkpoint(tmp_path / "bf16", half, tok)
    stored, _ = load_model(tmp_path / "bf16")
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}
    assert torch.equal(stored(ids), half(ids))


def test_load_model_rejects_mismatched_weights(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    from ismail_core import Transformer, load_model

    cfg = ModelConfig.preset("tiny", vocab_size=384, dim=64, n_layers=2, max_seq_len=32)
    ck = save_checkpoint(tmp_path / "ck", Transformer(cfg), load_tokenizer(hf_tokenizer_file))
    ModelConfig.preset("tiny", vocab_size=384, dim=64, n_layers=3, max_seq_len=32).save(
        ck / CONFIG_FILE
    )
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(ck)
