"""lm-evaluation-harness against ismail-serve over HTTP, and in process: the same numbers.

`lm_eval --model local-completions ... tokenizer_backend=remote` (the real command line, in a
subprocess) scores a local Turkish multiple-choice task through /v1/completions with echo and
logprobs, tokenizes through the server's root /tokenize, /detokenize and /tokenizer_info, and
runs a generation task; `IsmailLM` (lm_eval --model ismail) runs the same tasks in this
process. Per-item log-likelihoods agree to 1e-4, and accuracy and generations are equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py
sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "ismail-core" / "tests"))
from _serve import base_url, free_port, start_serve, stop_serve  # noqa: E402
from _tiny import tiny_tr_checkpoint  # noqa: E402
from lm_eval_tasks import GEN_TASK, MC_TASK, loglikelihoods_by_doc, write_tasks  # noqa: E402

pytest.importorskip("lm_eval")
pytest.importorskip("tenacity")  # lm-eval's api extra, which local-completions needs

MODEL = "tiny-lm-eval"
CONTEXT = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tr_checkpoint(tmp_path_factory.mktemp("lm-eval") / MODEL, CONTEXT, seed=1)


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_lm_eval_http(url: str, tasks_dir: Path, out: Path) -> dict[str, list[dict]]:
    """Run lm-eval's command line against the server; return its logged samples per task."""
    model_args = (
        f"base_url={url}/v1/completions,tokenizer_backend=remote,model={MODEL},"
        f"max_length={CONTEXT},num_concurrent=1,max_retries=1"
    )
    command = [
        str(Path(sys.executable).with_name("lm_eval")),
        "--model", "local-completions",
        "--model_args", model_args,
        "--tasks", f"{MC_TASK},{GEN_TASK}",
        "--include_path", str(tasks_dir),
        "--batch_size", "4",
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert MC_TASK in done.stdout and "acc" in done.stdout  # lm-eval's results table
    samples: dict[str, list[dict]] = {}
    for task in (MC_TASK, GEN_TASK):
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return samples


@pytest.mark.slow
def test_lm_eval_over_http_equals_in_process(checkpoint: Path, tmp_path: Path, monkeypatch):
    from ismail_core.harness import IsmailLM, evaluate_tasks

    tasks_dir = tmp_path / "tasks"
    write_tasks(tasks_dir)
    port = free_port()
    args = [str(checkpoint), "--port", str(port), "--max-model-len", str(CONTEXT)]
    args += ["--max-batch", "4", "--served-model-name", MODEL]
    args += ["--dtype", "float32"]  # as loaded in process (auto: bf16 on a CPU with native bf16)
    proc = start_serve(args, port=port, log=tmp_path / "serve.log", env=offline_env())
    try:
        http = run_lm_eval_http(base_url(port), tasks_dir, tmp_path / "out")
    finally:
        stop_serve(proc)

    for name, value in offline_env().items():
        monkeypatch.setenv(name, value)
    local = evaluate_tasks(
        IsmailLM(checkpoint, device="cpu", batch_size=4), [MC_TASK, GEN_TASK], tasks_dir,
        log_samples=True,
    )  # fmt: skip

    by_doc_http = loglikelihoods_by_doc(http[MC_TASK])
    by_doc_local = loglikelihoods_by_doc(local["samples"][MC_TASK])
    assert sorted(by_doc_http) == sorted(by_doc_local) and len(by_doc_local) == 8
    for doc_id, scores in by_doc_local.items():
        assert by_doc_http[doc_id] == pytest.approx(scores, abs=1e-4), doc_id
    accuracy = [sample["acc"] for sample in http[MC_TASK]]
    assert sum(accuracy) / len(accuracy) == pytest.approx(local["results"][MC_TASK]["acc,none"])

    def generations(samples: list[dict]) -> dict[int, str]:
        return {s["doc_id"]: s["filtered_resps"][0] for s in samples}

    assert generations(http[GEN_TASK]) == generations(local["samples"][GEN_TASK])
