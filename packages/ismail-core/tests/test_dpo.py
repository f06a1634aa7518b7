"""ismail finetune --task dpo: preference records, reply-only labels, reference log-probs equal
to a direct forward pass, training with exact resume, LoRA without a second model, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from ismail_core.checkpoint import load_model, save_checkpoint
from ismail_core.cli import main
from ismail_core.config import ModelConfig
from ismail_core.finetune.config import FinetuneConfig
from ismail_core.finetune.data import IGNORE, Example
from ismail_core.finetune.dpo import PreferenceTrainer
from ismail_core.finetune.formats import FinetuneDataError
from ismail_core.finetune.preference_data import (
    PairExample,
    PreferenceRecord,
    encode_pair,
    fit_pair,
    load_preference_records,
)
from ismail_core.finetune.trainer import finetune
from ismail_core.model import Transformer
from ismail_core.report import write_report
from ismail_core.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import finetune_config, stop_at  # noqa: E402

WORDS = ["ev", "kitap", "göz", "okul", "masa", "kapı", "yol", "deniz", "ağaç", "kuş", "gün", "su"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tr")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok, tiny_model_config) -> Path:
    """A random tiny model with the shipped tr-tokenizer (which has the chat markers)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, **tiny_model_config)
    directory = tmp_path_factory.mktemp("base") / "ckpt"
    save_checkpoint(directory, Transformer(cfg), tok)
    return directory


def _plural(word: str) -> tuple[str, str]:
    """(the right plural, the plural with the wrong vowel harmony)."""
    back = [v for v in word if v in "aıou"]
    front = [v for v in word if v in "eiöü"]
    last_back = bool(back) and (not front or word.rindex(back[-1]) > word.rindex(front[-1]))
    right, wrong = ("lar", "ler") if last_back else ("ler", "lar")
    return word + right, word + wrong


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """Forty-eight pairs: string prompts and conversational ones, chosen = right plural."""
    lines = []
    for i in range(48):
        word = WORDS[i % len(WORDS)]
        chosen, rejected = _plural(word)
        prompt = f"{word} kelimesinin çoğulu nedir? ({i})"
        if i % 3 == 0:
            record = {
                "prompt": [
                    {"role": "system", "content": "Kısa cevap ver."},
                    {"role": "user", "content": prompt},
                ],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        else:
            record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        lines.append(json.dumps(record, ensure_ascii=False))
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cfg(base: Path, data: Path, out: Path, **overrides) -> FinetuneConfig:
    """tiny_setup's six-step fine-tuning run, as DPO on the preference pairs."""
    dpo = {"finetune.task": "dpo", "finetune.val_fraction": 0.25, "optim.lr": 3e-3}
    return finetune_config(base, data, out, **{**dpo, **overrides})


# ---------------------------------------------------------------------- records
def test_records_in_string_and_message_form(pairs_file):
    records = load_preference_records(str(pairs_file))
    assert len(records) == 48
    assert records[0].prompt[0] == ("system", "Kısa cevap ver.")
    assert records[0].chosen == "evler" and records[0].rejected == "evlar"
    assert records[1].prompt == (("user", "kitap kelimesinin çoğulu nedir? (1)"),)
    assert (records[1].chosen, records[1].rejected) == ("kitaplar", "kitapler")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "a", "chosen": "b"}, "missing 'rejected'"),
        ({"prompt": "  ", "chosen": "b", "rejected": "c"}, "prompt is empty"),
        ({"prompt": "a", "chosen": "aynı", "rejected": " aynı "}, "same reply"),
        ({"prompt": "a", "chosen": "", "rejected": "c"}, '"chosen" is empty'),
        ({"prompt": "a", "chosen": 3, "rejected": "c"}, "make it a string"),
        (
            {
                "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "chosen": "b",
                "rejected": "c",
            },
            "ends with an assistant turn",
        ),
        (
            {"prompt": "a", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"},
            "exactly one assistant message",
        ),
        ([1, 2], "not an object|is a list"),
    ],
)
def test_bad_records_get_one_line_errors_with_the_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "x", "chosen": "y", "rejected": "z"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(FinetuneDataError, match=message) as info:
        load_preference_records(str(path))
    assert "bad.jsonl:2" in str(info.value) and "\n" not in str(info.value)


def test_only_the_reply_and_its_end_of_turn_are_labelled(tok):
    record = PreferenceRecord((("user", "ev kelimesinin çoğulu nedir?"),), "evler", "evlar")
    pair = encode_pair(tok, record)
    for side, reply in ((pair.chosen, "evler"), (pair.rejected, "evlar")):
        labelled = [t for t, label in zip(side.ids, side.labels) if label != IGNORE]
        assert tok.decode(labelled[:-1]) == reply  # the reply, then the end-of-turn marker
        assert side.labels.index(labelled[0]) == len(side.ids) - len(labelled)
    n = len(pair.chosen.ids) - pair.chosen.trained
    assert pair.chosen.ids[:n] == pair.rejected.ids[:n]  # the same prompt ids


def test_fit_pair_cuts_or_drops_and_keeps_no_empty_side():
    pair = PairExample(
        Example([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]), Example([1, 2, 5], [IGNORE, IGNORE, 5])
    )
    assert fit_pair(pair, 4, "drop") is pair or fit_pair(pair, 4, "drop") == pair
    assert fit_pair(pair, 3, "drop") is None
    cut = fit_pair(pair, 3, "truncate")
    assert cut.chosen.ids == [1, 2, 3] and cut.rejected.ids == [1, 2, 5]
    assert fit_pair(pair, 2, "truncate") is None  # no reply token left


# ---------------------------------------------------------------------- reference
def _direct_logps(model, record: PreferenceRecord, tok) -> list[float]:
    """Log-probability of each reply from full logits, token by token (the reference)."""
    out = []
    pair = encode_pair(tok, record)
    for side in (pair.chosen, pair.rejected):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([side.ids]))[0].double(), -1)
        out.append(
            sum(
                logp[t - 1, side.ids[t]].item()
                for t in range(1, len(side.ids))
                if side.labels[t] != IGNORE
            )
        )
    return out


def test_reference_logps_equal_a_direct_forward_pass(base, pairs_file, tmp_path, tok):
    trainer = PreferenceTrainer(_cfg(base, pairs_file, tmp_path / "run"))
    model, _ = load_model(base)
    model.eval()
    val = [r for r in load_preference_records(str(pairs_file))]
    held_out = trainer.val_pairs
    assert len(held_out) == trainer.ref_val.shape[0] > 0
    # the held-out records in order are those whose encoding matches the held-out pairs
    by_ids = {tuple(encode_pair(tok, r).chosen.ids): r for r in val}
    for pair, ref in zip(held_out, trainer.ref_val):
        want = _direct_logps(model, by_ids[tuple(pair.chosen.ids)], tok)
        assert ref.tolist() == pytest.approx(want, abs=1e-4)


# ---------------------------------------------------------------------- training
def test_dpo_learns_resumes_exactly_and_logs_trl_metrics(base, pairs_file, tmp_path):
    whole = finetune(_cfg(base, pairs_file, tmp_path / "whole"))
    first, last = whole.evals[0], whole.evals[-1]
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert last["rewards/margins"] > 0 and last["loss"] < first["loss"]
    assert 0 <= last["preference_accuracy"] <= 1 and "accuracy" in last
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 6
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(name in r for r in train_rows)
    assert all(r["logps/chosen"] < 0 for r in train_rows)
    page = write_report(tmp_path / "whole")
    assert (page.parent / "rewards.png").is_file()
    assert "Held-out preference accuracy" in page.read_text()

    cut = finetune(_cfg(base, pairs_file, tmp_path / "cut"), on_step=stop_at(4))
    assert cut.interrupted and cut.step == 4
    resumed = finetune(_cfg(base, pairs_file, tmp_path / "cut"))
    a, _ = load_model(whole.checkpoint)
    b, _ = load_model(resumed.checkpoint)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, atol=0, rtol=0)


def test_lora_reference_is_the_base_with_adapters_off(base, pairs_file, tmp_path, monkeypatch, tok):
    def no_second_copy(self, checkpoint=None):
        raise AssertionError("LoRA must not load a second copy of the weights")

    cfg = _cfg(
        base,
        pairs_file,
        tmp_path / "lora",
        **{"finetune.method": "lora", "lora.rank": 4, "optim.lr": 1e-2},
    )
    trainer = PreferenceTrainer(cfg)
    result = trainer.run()
    assert result.evals[-1]["rewards/margins"] != 0  # the adapters trained
    monkeypatch.setattr(PreferenceTrainer, "_load_weights", no_second_copy)
    _, again = trainer._reference_logps()  # trained adapters switched off: the base again
    torch.testing.assert_close(again, trainer.ref_val, atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for n, p in trainer.raw_model.named_parameters() if "lora_" in n)


def test_ipo_cdpo_and_rpo_train(base, pairs_file, tmp_path):
    for name, options in (
        ("ipo", {"preference.loss_type": "ipo"}),
        ("cdpo", {"preference.label_smoothing": 0.1}),
        ("rpo", {"preference.rpo_alpha": 1.0}),
    ):
        result = finetune(_cfg(base, pairs_file, tmp_path / name, **{"train.steps": 3, **options}))
        assert result.evals[-1]["rewards/margins"] > 0
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        assert all(("nll_loss" in r) == (name == "rpo") for r in rows if r["kind"] == "train")


# ---------------------------------------------------------------------- CLI
def test_cli_dpo_run_and_its_errors(base, pairs_file, tmp_path, capsys):
    args = [
        "finetune",
        "--task",
        "dpo",
        "--base",
        str(base),
        "--data",
        str(pairs_file),
        "--run.out_dir",
        str(tmp_path / "cli"),
        "--train.steps",
        "2",
        "--log.progress",
        "false",
        "--finetune.eval_replies",
        "2",
        "--finetune.max_new_tokens",
        "3",
        "--finetune.val_fraction",
        "0.25",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "prefers chosen" in out and "held-out preference accuracy" in out
    bad = tmp_path / "same.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "b"}) + "\n")
    assert main([*args[:6], str(bad), "--run.out_dir", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "same.jsonl:1" in err and "same reply" in err
    assert main(["finetune", "--task", "dpo", "--preference.beta", "0"]) != 0
    assert "beta must be > 0" in capsys.readouterr().err
    assert main(["finetune", "--task", "ppo"]) != 0
    assert "finetune.task must be one of" in capsys.readouterr().err


def test_torchrun_two_processes_with_lora(base, pairs_file, tmp_path, torchrun_finetune):
    """DDP with the reference computed by switching the adapters off on every rank."""
    flags = {
        "finetune.data": pairs_file,
        "finetune.method": "lora",
        "finetune.eval_replies": 2,
        "finetune.val_fraction": 0.25,
        "run.out_dir": tmp_path / "run",
        "train.steps": 2,
        "train.batch_size": 2,
        "train.precision": "fp32",
        "eval.interval": 2,
        "checkpoint.interval": 2,
    }
    done = torchrun_finetune(["--task", "dpo", "--base", str(base)], flags)
    assert "2 process(es)" in done.stdout and "held-out preference accuracy" in done.stdout
