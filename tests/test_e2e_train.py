"""End to end through the `ismail` command: train a tokenizer and tokenize a corpus, train a
tiny model, resume it, generate and evaluate; each step a separate process, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = {
    "model.max_seq_len": 64,
    "model.dim": 64,
    "model.n_layers": 2,
    "model.n_heads": 2,
    "model.kv_lora_rank": 16,
    "model.qk_nope_head_dim": 16,
    "model.qk_rope_head_dim": 8,
    "model.v_head_dim": 16,
    "model.inter_dim": 128,
    "model.moe_inter_dim": 64,
    "train.batch_size": 4,
    "train.seq_len": 64,
    "train.threads": 1,
    "eval.interval": 2,
    "eval.max_tokens": 4096,
    "checkpoint.interval": 2,
    "log.progress": False,
    "log.sample_tokens": 8,
}


def ismail(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(cwd / "hf-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "ismail_core", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"ismail {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.mark.slow
def test_tokenize_data_train_resume_generate_eval(tmp_path: Path) -> None:
    from ismail_core.corpus.builtin import builtin_texts

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(builtin_texts()[:30]):
        (corpus / f"speech-{i:03d}.txt").write_text(text + "\n")

    out = ismail(
        "data", str(corpus), "--out", "data", "--train-tokenizer", "--vocab-size", "600",
        cwd=tmp_path,
    )  # fmt: skip
    assert "train" in out.stdout and "val" in out.stdout
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "tr" and meta["tokenizer"]["vocab_size"] == 600

    run = ["--data.path", "data", "--run.out_dir", "run"] + flags(TINY)
    first = ismail("train", *run, "--train.steps", "4", cwd=tmp_path)
    assert "new run" in first.stdout and "serve it:   uv run ismail-serve run" in first.stdout
    second = ismail("train", *run, "--train.steps", "6", cwd=tmp_path)
    assert "resuming from" in second.stdout and "at step 4" in second.stdout
    assert (tmp_path / "run" / "checkpoints" / "latest").resolve().name == "step_00000006"

    gen = ismail(
        "generate", "run", "--prompt", "Arkadaşlar", "--max-new-tokens", "12", "--seed", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert gen.stdout.startswith("Arkadaşlar") and len(gen.stdout.strip()) > len("Arkadaşlar")

    result = json.loads(ismail("eval", "run", "--data", "data", cwd=tmp_path).stdout)
    evals = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert result["bits_per_byte"] < evals[0]["bits_per_byte"]  # better than the fresh model
    assert abs(result["loss"] - evals[-1]["loss"]) < 0.05  # same split, same weights
