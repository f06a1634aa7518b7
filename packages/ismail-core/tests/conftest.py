"""Shared fixtures for ismail-core's tests: a small byte-level BPE tokenizer and a text corpus.

A 384-token vocabulary keeps test models tiny (the embedding dominates small models).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CORPUS = [
    "Arkadaşlar, bu gece burada sizleri toplamaktan maksadım şudur.",
    "Memleketin yaşadığı vahim anları size söylemeye lüzum görmüyorum.",
    "Bu bedbaht memlekete karşı mühim vazifelerimiz vardır. Onu kurtarmak yegâne hedefimizdir.",
    "Türkiye Cumhuriyeti'nin temeli kültürdür; İstanbul'da ve Ankara'da okullar açıldı.",
    "Çocuklar öğretmenlerine çiçek getirdiler, ığdır ve şırnak'tan gelen öğrenciler de vardı.",
    "Yurtta sulh, cihanda sulh! Milletimizin istikbali gençlerin ellerindedir.",
    "Hayatta en hakiki mürşit ilimdir, fendir.",
    "Ne mutlu Türküm diyene! Egemenlik kayıtsız şartsız milletindir.",
]


def _train_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return list(CORPUS)


@pytest.fixture(scope="session")
def hf_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json trained on the test corpus (384 tokens)."""
    path = tmp_path_factory.mktemp("hf-tokenizer") / "tokenizer.json"
    _train_bpe(CORPUS * 4, vocab_size=384).save(str(path))
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: offline flags for datasets / huggingface_hub, and no outgoing sockets."""
    import socket

    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both read their variables at import time, which may have been before this test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    connect = socket.socket.connect

    def local_only(sock: socket.socket, address) -> None:
        if sock.family != socket.AF_UNIX:
            raise AssertionError(f"network access in an offline test: {address}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The CI machine has two cores shared by several jobs; tiny tensors gain nothing from more.
    torch.set_num_threads(1)


# A model small enough that a training step takes milliseconds on one core.
TINY_MODEL = {
    "max_seq_len": 64,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 2,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "inter_dim": 128,
    "moe_inter_dim": 64,
}


def _tiny_train_layer(run_dir: Path, data_dir: Path, **overrides) -> dict:
    """Flat config overrides for a seconds-long training run of the tiny test model."""
    layer = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    layer.update(
        {
            "run.out_dir": str(run_dir),
            "data.path": str(data_dir),
            "train.steps": 8,
            "train.batch_size": 4,
            "train.seq_len": 32,
            "optim.warmup_steps": 2,
            "eval.interval": 4,
            "eval.max_tokens": 2048,
            "checkpoint.interval": 4,
            "log.interval": 1,
            "log.progress": False,
            "log.sample_tokens": 8,
            "train.precision": "fp32",
        }
    )
    layer.update(overrides)
    return layer


@pytest.fixture(scope="session")
def tiny_train_layer():
    """`tiny_train_layer(run_dir, data_dir, **overrides)` -> flat config for a tiny run."""
    return _tiny_train_layer


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer_file: Path) -> Path:
    """A data directory: 40 built-in speeches tokenized with the 384-token test tokenizer."""
    import json

    from ismail_core.corpus import DataSpec, prepare_data
    from ismail_core.corpus.builtin import builtin_texts

    root = tmp_path_factory.mktemp("tiny-data")
    source = root / "speeches.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:40]))
    out = root / "data"
    prepare_data(
        DataSpec(
            source=str(source),
            out=str(out),
            tokenizer=str(hf_tokenizer_file),
            cache_dir=str(root / "cache"),
            val_fraction=0.1,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    """ModelConfig overrides of the tiny test model."""
    return dict(TINY_MODEL)


def _torchrun_finetune(args: list[str], flags: dict):
    """`ismail finetune ARGS --key value ...` in two CPU processes under torchrun (gloo, one
    thread each); returns the completed process after checking it succeeded."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "ismail_core", "finetune", *args]
    flags = {"train.device": "cpu", "train.threads": 1, "log.progress": "false", **flags}
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def torchrun_finetune():
    """`torchrun_finetune(args, flags)`: a fine-tuning run in two processes (see above)."""
    return _torchrun_finetune
