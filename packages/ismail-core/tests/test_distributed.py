"""`torchrun -m ismail_core train` with 2 CPU processes on gloo: DDP and FSDP2, then resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ismail_core.checkpoint import load_model, resolve_checkpoint
from ismail_core.train.metrics import read_metrics


def _torchrun(flags: dict, cwd: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "ismail_core", "train"]
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "optimizer"), [("ddp", "adamw"), ("fsdp", "adamw"), ("ddp", "muon")]
)
def test_two_process_gloo_training_and_resume(
    strategy: str, optimizer: str, tmp_path: Path, tiny_train_layer, tiny_data: Path
) -> None:
    flags = tiny_train_layer(tmp_path / "run", tiny_data, **{"optim.name": optimizer})
    flags.update({"train.steps": 4, "dist.strategy": strategy, "train.device": "cpu"})
    flags.update({"train.threads": 1, "eval.interval": 2, "checkpoint.interval": 2})
    flags["log.sample_tokens"] = 0
    first = _torchrun(flags, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 process(es)" in first.stdout
    rows = read_metrics(tmp_path / "run")
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert evals[-1]["loss"] < evals[0]["loss"]
    model, _ = load_model(tmp_path / "run")  # a complete (gathered) state dict
    assert model.cfg.dim == 64
    flags["train.steps"] = 6
    second = _torchrun(flags, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and "at step 4" in second.stdout
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000006"
