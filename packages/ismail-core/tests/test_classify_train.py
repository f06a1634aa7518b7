"""ismail finetune --task classify end to end: training (all, head, last-N, LoRA), exact
resume, the CLI (finetune, eval, classify), the report, and one-line errors for bad input."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from ismail_core.checkpoint import ADAPTER_DIR, WEIGHTS_FILE, load_model, save_checkpoint
from ismail_core.classify.data import heldout_share
from ismail_core.classify.predict import TextClassifier
from ismail_core.cli import main
from ismail_core.config import ModelConfig
from ismail_core.finetune.config import finetune_config
from ismail_core.finetune.trainer import finetune
from ismail_core.layout import CLASSIFIER_HEAD_FILE
from ismail_core.model import Transformer
from ismail_core.report import write_report
from ismail_core.tokenizer import load_tokenizer

ANIMALS = ["kedi", "köpek", "kuş", "at", "balık", "inek"]
COLOURS = ["kırmızı", "mavi", "yeşil", "sarı", "mor", "beyaz"]


def _texts(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, label) pairs: 3-5 animal words ("hayvan") or colour words ("renk"), 60/40."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label, words = ("hayvan", ANIMALS) if i % 5 < 3 else ("renk", COLOURS)
        out.append((" ".join(rng.choice(words) for _ in range(rng.randint(3, 5))), label))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, hf_tokenizer_file, tiny_model_config) -> Path:
    """A random tiny language model with the 384-token test tokenizer."""
    tokenizer = load_tokenizer(hf_tokenizer_file)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, **tiny_model_config)
    directory = tmp_path_factory.mktemp("base") / "ckpt"
    save_checkpoint(directory, Transformer(cfg), tokenizer)
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The toy set as CSV (text,label), JSONL (metin/etiket) and a CSV test file."""
    root = tmp_path_factory.mktemp("data")
    rows = _texts(80, seed=1)
    csv = root / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    jsonl = root / "train.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"metin": t, "etiket": lab}, ensure_ascii=False) + "\n" for t, lab in rows
        ),
        encoding="utf-8",
    )
    test = root / "test.csv"
    test.write_text(
        "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in _texts(20, 2)), encoding="utf-8"
    )
    return {"csv": csv, "jsonl": jsonl, "test": test}


def _cfg(base: Path, data: Path, out: Path, **overrides):
    layer = {
        "finetune.task": "classify",
        "finetune.base": str(base),
        "finetune.data": str(data),
        "finetune.val_fraction": 0.25,
        "run.out_dir": str(out),
        "train.steps": 6,
        "train.batch_size": 8,
        "train.precision": "fp32",
        "optim.lr": 1e-2,
        "optim.min_lr": 1e-3,
        "optim.warmup_steps": 2,
        "eval.interval": 3,
        "checkpoint.interval": 3,
        "log.progress": False,
        "log.interval": 1,
    }
    layer.update(overrides)
    return finetune_config(layer)


def _stop_at(step_to_stop: int):
    def on_step(step, trainer):
        if step == step_to_stop:
            raise KeyboardInterrupt

    return on_step


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in after.items() if k in before and not torch.equal(before[k], v)}


# ---------------------------------------------------------------------- training
def test_full_finetune_evaluates_and_resumes_exactly(base, data, tmp_path):
    whole = finetune(_cfg(base, data["csv"], tmp_path / "whole"))
    assert whole.step == 6 and [e["step"] for e in whole.evals] == [0, 3, 6]
    last = whole.evals[-1]
    assert last["labels"] == ["hayvan", "renk"] and sum(map(sum, last["confusion"])) > 0
    assert 0 <= last["macro_f1"] <= 1 and 0 <= last["accuracy"] <= 1
    cut = finetune(_cfg(base, data["csv"], tmp_path / "cut"), on_step=_stop_at(4))
    assert cut.interrupted and cut.step == 4
    resumed = finetune(_cfg(base, data["csv"], tmp_path / "cut"))
    a, b = (
        load_model(whole.checkpoint)[0].state_dict(),
        load_model(resumed.checkpoint)[0].state_dict(),
    )
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, atol=0, rtol=0)
    info = json.loads((whole.checkpoint / "classifier.json").read_text())
    assert info["labels"] == ["hayvan", "renk"] and info["text_field"] == "text"


def test_head_only_leaves_every_other_weight_bit_identical(base, data, tmp_path):
    result = finetune(_cfg(base, data["csv"], tmp_path / "run", **{"classify.train": "head"}))
    before = load_model(base)[0].state_dict()
    after = load_model(result.checkpoint)[0].state_dict()
    assert set(after) - set(before) == {"score.weight", "score.bias"}
    assert _changed(before, after) == set()  # router biases included (buffers)


def test_last_n_trains_those_blocks_the_norm_and_the_head(base, data, tmp_path):
    result = finetune(_cfg(base, data["csv"], tmp_path / "run", **{"classify.train": "last-1"}))
    before = load_model(base)[0].state_dict()
    changed = _changed(before, load_model(result.checkpoint)[0].state_dict())
    assert changed and all(k.startswith(("layers.1.", "norm.")) for k in changed)
    assert "norm.weight" in changed


def test_lora_saves_adapter_and_head_and_resumes_exactly(base, data, tmp_path):
    lora = {"finetune.method": "lora", "lora.rank": 4}
    whole = finetune(_cfg(base, data["csv"], tmp_path / "whole", **lora))
    ckpt = whole.checkpoint
    assert (ckpt / ADAPTER_DIR / CLASSIFIER_HEAD_FILE).is_file()
    assert not (ckpt / WEIGHTS_FILE).exists()
    assert (ckpt / "classifier.json").is_file()
    classifier = TextClassifier.load(ckpt, device="cpu")
    base_weights = load_model(base)[0].state_dict()
    merged = classifier.model.state_dict()
    assert _changed(base_weights, merged)  # the adapters did train (merged in)
    finetune(_cfg(base, data["csv"], tmp_path / "cut", **lora), on_step=_stop_at(4))
    resumed = finetune(_cfg(base, data["csv"], tmp_path / "cut", **lora))
    again = TextClassifier.load(resumed.checkpoint, device="cpu").model.state_dict()
    for name, tensor in merged.items():
        torch.testing.assert_close(again[name], tensor, atol=0, rtol=0)
    with pytest.raises(Exception, match="drop --classify.train"):
        finetune(_cfg(base, data["csv"], tmp_path / "x", **lora, **{"classify.train": "head"}))


def test_merged_lora_classifier_stands_alone(base, data, tmp_path):
    result = finetune(
        _cfg(
            base,
            data["csv"],
            tmp_path / "run",
            **{"finetune.method": "lora", "finetune.merge": True},
        )
    )
    assert (result.checkpoint / WEIGHTS_FILE).is_file()
    alone = tmp_path / "alone"
    shutil.copytree(result.checkpoint, alone)
    shutil.rmtree(alone / ADAPTER_DIR)
    texts = ["kedi köpek kuş", "mavi sarı mor"]
    a = TextClassifier.load(alone, device="cpu").predict(texts)
    b = TextClassifier.load(result.checkpoint, device="cpu").predict(texts)
    for x, y in zip(a, b):
        assert x.label == y.label and x.scores == pytest.approx(y.scores, abs=1e-5)


def test_report_plots_accuracy_and_confusion(base, data, tmp_path):
    finetune(_cfg(base, data["csv"], tmp_path / "run", **{"train.steps": 3}))
    page = write_report(tmp_path / "run")
    assert (page.parent / "classification.png").is_file()
    assert (page.parent / "confusion.png").is_file()
    assert "macro-F1" in page.read_text()


# ---------------------------------------------------------------------- the CLI
def test_cli_end_to_end_beats_the_majority_baseline(base, data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--train.precision", "fp32", "--log.progress", "false", "--optim.lr", "1e-2"]
    flags += ["--optim.min_lr", "1e-3", "--optim.warmup_steps", "2", "--eval.interval", "10"]
    code = main(
        ["finetune", "--task", "classify", "--base", str(base), "--data", str(data["csv"]),
         "--run.out_dir", str(run), "--train.steps", "30", "--train.batch_size", "8", *flags]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "held-out accuracy" in out and "gold \\ predicted" in out
    assert f"uv run ismail classify {run}" in out

    assert main(["eval", str(run), "--data", str(data["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 20 and metrics["labels"] == ["hayvan", "renk"]
    assert metrics["accuracy"] > metrics["majority_accuracy"]
    assert main(["eval", str(run), "--data", str(data["test"])]) == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "majority baseline" in text and "hayvan" in text

    assert main(["classify", str(run), "--text", "kedi at balık", "--text", "mavi mor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["hayvan", "renk"]
    listing = tmp_path / "texts.txt"
    listing.write_text("kedi köpek\n\nsarı yeşil mavi\n", encoding="utf-8")
    assert main(["classify", str(run), "--file", str(listing), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["kedi köpek", "sarı yeşil mavi"]
    assert [r["label"] for r in rows] == ["hayvan", "renk"]
    assert set(rows[0]["scores"]) == {"hayvan", "renk"}
    assert main(["classify", str(run), "--file", str(data["test"])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20


def test_cli_jsonl_with_named_fields(base, data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        ["finetune", "--task", "classify", "--base", str(base), "--data", str(data["jsonl"]),
         "--classify.text_field", "metin", "--classify.label_field", "etiket",
         "--run.out_dir", str(run), "--train.steps", "2", "--train.precision", "fp32",
         "--log.progress", "false"]
    )  # fmt: skip
    assert code == 0 and "held-out accuracy" in capsys.readouterr().out
    assert (
        json.loads((run / "checkpoints" / "latest" / "classifier.json").read_text())["text_field"]
        == "metin"
    )
    # the classifier's own field names are the defaults of eval and classify --file
    assert main(["eval", str(run), "--data", str(data["jsonl"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 80
    assert main(["classify", str(run), "--file", str(data["jsonl"])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 80


# ---------------------------------------------------------------------- bad input
def _error(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def classifier_run(base, data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("clf") / "run"
    finetune(_cfg(base, data["csv"], run, **{"train.steps": 1, "eval.interval": 0}))
    return run


def test_wrong_kind_of_checkpoint_errors(capsys, base, classifier_run, tmp_path):
    err = _error(capsys, "classify", str(base), "--text", "kedi")
    assert (
        "causal language model" in err and f"ismail finetune --task classify --base {base}" in err
    )
    for argv in (
        ["generate", str(classifier_run), "--prompt", "x"],
        ["export", str(classifier_run), str(tmp_path / "out")],
        ["eval", str(classifier_run), "--tasks", "hellaswag"],
    ):
        err = _error(capsys, *argv)
        assert "text classifier" in err and "ismail classify" in err
    from ismail_core.checkpoint import CheckpointError
    from ismail_core.harness import IsmailLM
    from ismail_core.hf_export import export_checkpoint_hf

    for call in (
        lambda: export_checkpoint_hf(classifier_run, tmp_path / "py-out"),
        lambda: IsmailLM(pretrained=str(classifier_run)),
    ):  # the Python functions behind the commands refuse it too
        with pytest.raises(CheckpointError, match="text classifier"):
            call()
    err = _error(capsys, "finetune", "--task", "classify", "--base", str(classifier_run),
                 "--run.out_dir", str(tmp_path / "x"))  # fmt: skip
    assert "already a classifier" in err


def test_bad_input_errors(capsys, base, classifier_run, tmp_path):
    err = _error(capsys, "classify", str(classifier_run), "--text", "kedi", "--text", " ")
    assert "--text number 2 is empty" in err
    assert "--text TEXT" in _error(capsys, "classify", str(classifier_run))
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\nkedi,hayvan\nbalina,deniz\n", encoding="utf-8")
    err = _error(capsys, "eval", str(classifier_run), "--data", str(unknown))
    assert f"{unknown}:3: label 'deniz' does not occur in the classifier" in err

    def finetune_error(content: str, suffix: str = "jsonl") -> str:
        path = tmp_path / f"bad.{suffix}"
        path.write_text(content, encoding="utf-8")
        return _error(capsys, "finetune", "--task", "classify", "--base", str(base), "--data",
                      str(path), "--run.out_dir", str(tmp_path / "never"))  # fmt: skip

    assert "mixed types" in finetune_error(
        '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n'
    )
    assert "bad.jsonl:2: the label" in finetune_error(
        '{"text": "a", "label": "x"}\n{"text": "b"}\n'
    )
    assert "bad.csv:3: the text is empty" in finetune_error("text,label\nkedi,x\n  ,y\n", "csv")
    assert "two or more labels" in finetune_error('{"text": "a", "label": "x"}\n')
    # a label that only a held-out record has (val_fraction 0.05: find a text held out)
    rare = next(f"balina {i}" for i in range(1000) if heldout_share(f"balina {i}") < 0.05)
    kept = [f"kedi {i}" for i in range(1000) if heldout_share(f"kedi {i}") >= 0.05][:4]
    colours = [f"mavi {i}" for i in range(1000) if heldout_share(f"mavi {i}") >= 0.05][:4]
    records = [{"text": t, "label": "hayvan"} for t in kept] + [
        {"text": t, "label": "renk"} for t in colours
    ]
    records.append({"text": rare, "label": "deniz"})
    err = finetune_error("".join(json.dumps(r) + "\n" for r in records))
    assert "label 'deniz' does not occur in the training split" in err


def test_unknown_train_setting_is_refused(base, data, tmp_path):
    with pytest.raises(Exception, match="classify.train must be"):
        finetune(_cfg(base, data["csv"], tmp_path / "x", **{"classify.train": "last-9"}))
