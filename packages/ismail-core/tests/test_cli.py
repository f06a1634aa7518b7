"""The `ismail` command: happy paths in-process, and every bad input gives a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ismail_core.cli import main


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("command", ["data", "train", "generate", "eval", "report", "export"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ismail " + command in capsys.readouterr().out


def test_train_help_documents_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--optim.lr", "--train.grad_accum", "--model.dim", "--dist.strategy"):
        assert option in out


def test_data_command(tmp_path: Path, hf_tokenizer_file: Path, corpus, capsys) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in corpus))
    out = tmp_path / "data"
    code, stdout, _ = _run(
        capsys,
        "data",
        str(source),
        "--out",
        str(out),
        "--tokenizer",
        str(hf_tokenizer_file),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert code == 0 and (out / "meta.json").is_file()
    assert "train" in stdout and "val" in stdout


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["data", "/no/such/corpus.txt"], 1, "does not exist"),
        (["data", "builtin", "--val-fraction", "1.5"], 2, "--val-fraction must be in"),
        (["data", "builtin", "--tokenizer", "/no/tok.json"], 1, "tokenizer '/no/tok.json' not"),
        (["train", "--preset", "tiney"], 1, "did you mean 'tiny'"),
        (["train", "--optim.lrr", "1"], 2, "did you mean '--optim.lr'"),
        (["train", "--train.steps", "many"], 1, "train.steps: expected int"),
        (["train", "--config", "/no/config.yaml"], 1, "does not exist"),
        (["train", "--data.path", "/no/data", "--data.source", "/no/src"], 1, "does not exist"),
        (["generate", "/no/ckpt"], 1, "/no/ckpt does not exist"),
        (["eval", "/no/ckpt", "--data", "x"], 1, "does not exist"),
        (["report", "/no/run"], 1, "metrics.jsonl does not exist"),
        (["export", "/no/ckpt", "/tmp/out"], 1, "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(
    argv: list[str], code: int, message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written into the checkout
    got, _, err = _run(capsys, *argv)
    assert got == code, err
    assert message in err
    assert err.strip().splitlines()[-1].startswith("ismail ")  # after any progress bars


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_train_layer, tiny_data: Path) -> Path:
    from ismail_core.train import build_config, train

    run = tmp_path_factory.mktemp("cli-run")
    train(build_config(tiny_train_layer(run / "run", tiny_data, **{"train.steps": 2})))
    return run / "run"


def test_generate_eval_report_export(trained_run: Path, tiny_data: Path, tmp_path, capsys) -> None:
    code, out, _ = _run(
        capsys, "generate", str(trained_run), "--prompt", "Türk", "--max-new-tokens", "8",
        "--seed", "1", "--no-stream",
    )  # fmt: skip
    assert code == 0 and out.startswith("Türk")
    code, out, _ = _run(capsys, "eval", str(trained_run), "--data", str(tiny_data))
    result = json.loads(out)
    assert code == 0 and result["tokens"] > 0 and result["bits_per_byte"] > 0
    text = tmp_path / "held-out.txt"
    text.write_text("Hayatta en hakiki mürşit ilimdir, fendir. " * 20)
    code, out, _ = _run(capsys, "eval", str(trained_run), "--data", str(text))
    assert code == 0 and json.loads(out)["tokens"] > 0
    code, out, _ = _run(capsys, "report", str(trained_run))
    report = trained_run / "report"
    assert code == 0 and (report / "index.html").is_file()
    html = (report / "index.html").read_text()
    for png in ("loss.png", "lr.png", "tokens_per_s.png", "expert_load.png", "bits_per_byte.png"):
        assert (report / png).stat().st_size > 1000 and png in html
    code, out, _ = _run(capsys, "export", str(trained_run), str(tmp_path / "hf"))
    assert code == 0 and (tmp_path / "hf" / "config.json").is_file()


def test_report_overlays_several_runs(trained_run: Path, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text((trained_run / "metrics.jsonl").read_text())
    out = tmp_path / "compared"
    code, printed, _ = _run(capsys, "report", str(trained_run), str(other), "--out", str(out))
    assert code == 0 and str(out / "index.html") in printed
    html = (out / "index.html").read_text()
    assert "<li>run:" in html and "<li>other:" in html  # each run's final bits per byte
    for png in ("compare_bits_per_byte.png", "compare_val_loss.png", "compare_train_loss.png"):
        assert (out / png).stat().st_size > 1000 and png in html


def test_export_fp8_checkpoint_loads_and_generates(trained_run: Path, tmp_path, capsys) -> None:
    """`ismail export --format fp8` writes weight_scale_inv scales that load_model rebuilds."""
    from ismail_core.checkpoint import load_model, load_weights
    from ismail_kernels import FP8Linear

    out = tmp_path / "fp8"
    code, _, err = _run(capsys, "export", str(trained_run), str(out), "--format", "fp8")
    assert code == 0, err
    state = load_weights(out / "model.safetensors")
    scales = [k for k in state if k.endswith(".weight_scale_inv")]
    assert scales and all(state[k.removesuffix("_scale_inv")].dtype == torch.float8_e4m3fn
                          for k in scales)  # fmt: skip
    fp8_model, _ = load_model(out)
    full_model, _ = load_model(trained_run)
    assert sum(isinstance(m, FP8Linear) for m in fp8_model.modules()) == len(scales)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, full_model.cfg.vocab_size, (1, 16), generator=gen)
    with torch.no_grad():
        ref, got = full_model(ids), fp8_model(ids)
    # FP8 e4m3 keeps ~3 mantissa bits per weight and activation: logits move, but little.
    assert (got - ref).abs().max() <= 0.1 * ref.abs().max()
    code, text, _ = _run(capsys, "generate", str(out), "--prompt", "Türk", "--max-new-tokens", "4",
                         "--seed", "1", "--no-stream")  # fmt: skip
    assert code == 0 and text.startswith("Türk")
    code, _, err = _run(capsys, "export", str(out), str(tmp_path / "again"), "--format", "fp8")
    assert code == 1 and "already holds FP8 weights" in err


def test_generate_and_eval_reject_bad_values(
    trained_run: Path, tmp_path: Path, hf_tokenizer_file: Path, capsys
) -> None:
    code, _, err = _run(capsys, "generate", str(trained_run), "--max-new-tokens", "0")
    assert code == 2 and "--max-new-tokens must be at least 1" in err
    code, _, err = _run(capsys, "generate", str(trained_run), "--top-p", "0")
    assert code == 2 and "top_p must be in (0, 1]" in err
    code, _, err = _run(capsys, "generate", str(trained_run), "--max-new-tokens", "500")
    assert code == 1 and "maximum context length is 64 tokens" in err
    code, _, err = _run(capsys, "eval", str(trained_run), "--data", "x", "--seq-len", "999")
    assert code == 2 and "exceeds the model's max_seq_len 64" in err
    # data tokenized by a different tokenizer
    other = tmp_path / "tokenizer.json"
    tok = json.loads(hf_tokenizer_file.read_text())
    tok["model"]["vocab"]["zzzz"] = len(tok["model"]["vocab"])
    other.write_text(json.dumps(tok))
    doc = tmp_path / "doc.txt"
    doc.write_text("Hayatta en hakiki mürşit ilimdir, fendir. " * 5)
    assert main(["data", str(doc), "--out", str(tmp_path / "d"), "--tokenizer", str(other),
                 "--cache-dir", str(tmp_path / "c"), "--val-fraction", "0"]) == 0  # fmt: skip
    capsys.readouterr()
    code, _, err = _run(
        capsys, "eval", str(trained_run), "--data", str(tmp_path / "d"), "--split", "train"
    )
    assert code == 1 and "was tokenized with tokenizer" in err
