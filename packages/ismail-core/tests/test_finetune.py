"""ismail finetune: label masks, packing, the trainer (full and LoRA), resume and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.chat import END_TOKEN, render_chat
from ismail_core.checkpoint import ADAPTER_DIR, WEIGHTS_FILE, load_model, save_checkpoint
from ismail_core.cli import main
from ismail_core.config import ModelConfig
from ismail_core.finetune.data import (
    IGNORE,
    Example,
    RowSampler,
    collate,
    encode_example,
    fit_length,
    pack,
    single_rows,
)
from ismail_core.finetune.lora import LoraError, load_with_adapter
from ismail_core.finetune.trainer import finetune
from ismail_core.model import Transformer
from ismail_core.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import finetune_config, stop_at  # noqa: E402

CHAT = [
    {"role": "system", "content": "Kısa cevap ver."},
    {"role": "user", "content": "Başkent neresi?"},
    {"role": "assistant", "content": "Ankara."},
    {"role": "user", "content": "Ya en kalabalık şehir?"},
    {"role": "assistant", "content": "İstanbul."},
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tr")


def _base(directory: Path, tokenizer, overrides: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, **overrides)
    save_checkpoint(directory, Transformer(cfg), tokenizer)
    return directory


@pytest.fixture(scope="module")
def tr_base(tmp_path_factory, tok, tiny_model_config) -> Path:
    """A random tiny model with the shipped tr-tokenizer (which has the chat markers)."""
    return _base(tmp_path_factory.mktemp("base") / "ckpt", tok, tiny_model_config)


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    """Forty short conversations, single- and multi-turn."""
    words = ["ev", "kitap", "göz", "okul", "masa", "kapı", "yol", "deniz", "ağaç", "kuş"]
    lines = []
    for i in range(40):
        a, b = words[i % 10], words[(i * 3 + 1) % 10]
        messages = [
            {"role": "user", "content": f"{a} {i}"},
            {"role": "assistant", "content": a},
        ]
        if i % 4 == 0:
            messages += [{"role": "user", "content": b}, {"role": "assistant", "content": b}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------- labels
def test_only_assistant_turns_and_their_end_are_trained(tok):
    ex = encode_example(tok, CHAT)
    trained = [i for i, label in zip(ex.ids, ex.labels) if label != IGNORE]
    end = tok.token_to_id(END_TOKEN)
    # every assistant turn of a multi-turn conversation, each closed by its end marker
    want = [*tok.encode("Ankara.").ids, end, *tok.encode("İstanbul.").ids, end]
    assert trained == want
    assert [lbl for lbl in ex.labels if lbl != IGNORE] == trained


def test_train_on_all_trains_everything_but_the_separator(tok):
    ex = encode_example(tok, CHAT, train_on="all")
    assert ex.labels[0] == IGNORE
    assert ex.labels[1:] == ex.ids[1:]


def test_length_limit_truncates_or_drops():
    long = Example(list(range(10)), [IGNORE] * 5 + list(range(5, 10)))
    prompt_only = Example(list(range(10)), [IGNORE] * 8 + [8, 9])
    short = Example([1, 2, 3], [IGNORE, 2, 3])
    kept, truncated, dropped = fit_length([long, prompt_only, short], 6, "truncate")
    assert [len(e.ids) for e in kept] == [6, 3] and truncated == 2 and dropped == 1
    kept, truncated, dropped = fit_length([long, short], 6, "drop")
    assert len(kept) == 1 and truncated == 0 and dropped == 1


# ---------------------------------------------------------------------- packing
@given(st.lists(st.integers(2, 12), min_size=1, max_size=20), st.integers(12, 30))
@settings(max_examples=50, deadline=None)
def test_packing_keeps_every_example_in_order_within_the_length(lengths, seq_len):
    examples = [Example([n] * n, [n] * n) for n in lengths]
    rows = pack(examples, seq_len)
    assert all(len(r.ids) <= seq_len for r in rows)
    assert [t for r in rows for t in r.ids] == [t for e in examples for t in e.ids]
    for row in rows:  # documents are numbered 0, 1, ... and never split
        pieces = {}
        for token, doc in zip(row.ids, row.docs):
            pieces.setdefault(doc, []).append(token)
        assert list(pieces) == list(range(len(pieces)))
        assert all(len(p) == p[0] for p in pieces.values())


def test_packed_example_gets_the_logits_it_gets_alone(tok, tiny_model_config):
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, **tiny_model_config))
    model.eval()
    examples = [
        encode_example(tok, CHAT),
        encode_example(tok, CHAT[1:3]),
        encode_example(tok, CHAT[3:]),
    ]
    packed = collate(pack(examples, 64), tok.pad_id, packed=True)
    assert packed.pop("loss_only") and packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        out = model(**packed)
        # the LM head only where there are targets gives the same loss
        assert float(model(**packed, loss_only=True).lm_loss) == pytest.approx(float(out.lm_loss))
        start = 0
        for ex in examples:
            alone = model(torch.tensor([ex.ids]))
            got = out.logits[0, start : start + len(ex.ids)]
            torch.testing.assert_close(got, alone[0], atol=1e-5, rtol=1e-5)
            start += len(ex.ids)
        # and the packed loss is the token-weighted mean of the examples' losses
        total = sum(
            float(model(**collate([r], 0, False)).lm_loss) * e.trained
            for r, e in zip(single_rows(examples), examples)
        )
    assert float(out.lm_loss) == pytest.approx(total / sum(e.trained for e in examples), rel=1e-5)


def test_row_sampler_covers_each_row_once_per_epoch():
    sampler = RowSampler(10, batch_size=3, grad_accum=1, world_size=1, seed=7)
    drawn = [i for step in range(10) for i in sampler.indices(step, 0, 0)]
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    again = RowSampler(10, batch_size=3, grad_accum=1, world_size=1, seed=7)
    assert again.indices(5, 0, 0) == sampler.indices(5, 0, 0)  # a function of the step


# ---------------------------------------------------------------------- the trainer
def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_full_finetune_resumes_exactly_and_saves_the_template(tr_base, chat_file, tmp_path):
    whole = finetune(finetune_config(tr_base, chat_file, tmp_path / "whole"))
    assert whole.step == 6 and [e["step"] for e in whole.evals] == [0, 3, 6]
    assert all("accuracy" in e and 0 <= e["ended"] <= 1 for e in whole.evals)

    cut = finetune(finetune_config(tr_base, chat_file, tmp_path / "cut"), on_step=stop_at(4))
    assert cut.interrupted and cut.step == 4
    resumed = finetune(finetune_config(tr_base, chat_file, tmp_path / "cut"))
    assert resumed.step == 6
    a, tok_a = load_model(whole.checkpoint)
    b, _ = load_model(resumed.checkpoint)
    for name, tensor in _weights(a).items():
        torch.testing.assert_close(_weights(b)[name], tensor, atol=0, rtol=0)
    assert (whole.checkpoint / "tokenizer" / "chat_template.jinja").is_file()
    assert tok_a.chat_template is not None
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    assert any(r.get("kind") == "eval" or "accuracy" in json.dumps(r) for r in rows)


def test_lora_saves_a_peft_adapter_that_loads_merged(tr_base, chat_file, tmp_path):
    result = finetune(
        finetune_config(
            tr_base,
            chat_file,
            tmp_path / "lora",
            **{"finetune.method": "lora", "finetune.merge": True, "lora.rank": 4, "optim.lr": 1e-2},
        )
    )
    ckpt = result.checkpoint
    adapter = ckpt / ADAPTER_DIR
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    assert (ckpt / WEIGHTS_FILE).is_file()  # --merge wrote merged weights beside the adapter
    merged, _ = load_model(ckpt)
    unmerged = load_with_adapter(ckpt, merge=False).eval()
    ids = torch.tensor([render_chat(load_tokenizer("tr"), CHAT).ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), unmerged(ids), atol=1e-5, rtol=1e-5)
        base, _ = load_model(tr_base)
        assert not torch.allclose(base(ids), merged(ids), atol=1e-4)  # the adapter did train


def test_lora_resumes_exactly(tr_base, chat_file, tmp_path):
    lora = {"finetune.method": "lora", "lora.rank": 4, "optim.lr": 1e-2}
    whole = finetune(finetune_config(tr_base, chat_file, tmp_path / "whole", **lora))

    finetune(finetune_config(tr_base, chat_file, tmp_path / "cut", **lora), on_step=stop_at(4))
    resumed = finetune(finetune_config(tr_base, chat_file, tmp_path / "cut", **lora))
    a = load_with_adapter(whole.checkpoint, merge=False).state_dict()
    b = load_with_adapter(resumed.checkpoint, merge=False).state_dict()
    for name in (n for n in a if "lora_" in n):
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)


def test_adapter_refuses_another_base(tr_base, chat_file, tmp_path, tok, tiny_model_config):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tr_base, base)
    result = finetune(
        finetune_config(base, chat_file, tmp_path / "run", **{"finetune.method": "lora"})
    )
    _base(base, tok, tiny_model_config, seed=1)  # another model where the base was
    with pytest.raises(LoraError, match="trained on base weights"):
        load_model(result.checkpoint)


def test_tokenizer_without_chat_markers_gets_them(
    tmp_path, hf_tokenizer_file, chat_file, tiny_model_config
):
    tokenizer = load_tokenizer(hf_tokenizer_file)
    assert tokenizer.token_to_id(END_TOKEN) is None
    base = _base(tmp_path / "base", tokenizer, tiny_model_config)
    result = finetune(finetune_config(base, chat_file, tmp_path / "run", **{"train.steps": 2}))
    model, tuned = load_model(result.checkpoint)
    assert tuned.token_to_id(END_TOKEN) is not None
    assert model.cfg.vocab_size == tuned.vocab_size == tokenizer.vocab_size + 4
    with pytest.raises(Exception, match="method full"):
        finetune(finetune_config(base, chat_file, tmp_path / "lora", **{"finetune.method": "lora"}))


# ---------------------------------------------------------------------- bad input, CLI
def _run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["finetune", *args])
    return code, capsys.readouterr().err


def test_cli_errors_are_one_line_and_say_what_to_do(
    capsys, tmp_path, tr_base, chat_file, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, err = _run_cli(capsys)
    assert code == 1 and "uv run ismail train" in err  # no runs/tiny yet
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n', encoding="utf-8")
    code, err = _run_cli(capsys, "--base", str(tr_base), "--data", str(bad))
    assert code == 1 and "bad.jsonl:1" in err
    code, err = _run_cli(
        capsys,
        "--base",
        str(tr_base),
        "--data",
        str(chat_file),
        "--lora",
        "--lora.targets",
        "nonexistent",
    )
    assert code == 1 and "nonexistent" in err and "wkv_b" in err
    code, err = _run_cli(capsys, "--base", str(tr_base), "--data", str(chat_file), "--qlora")
    assert code == 1 and "CUDA" in err
    code, err = _run_cli(capsys, "--finetune.metod", "lora")
    assert code == 2 and "finetune.method" in err


def test_a_run_directory_is_not_continued_on_other_data(tr_base, chat_file, tmp_path):
    finetune(finetune_config(tr_base, chat_file, tmp_path / "run", **{"train.steps": 2}))
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    other = tmp_path / "other.jsonl"
    other.write_text(chat_file.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match="finetune.data"):
        finetune(finetune_config(tr_base, other, tmp_path / "run", **{"train.steps": 4}))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


@pytest.mark.gpu
def test_qlora_trains_on_cuda(tr_base, chat_file, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("bitsandbytes")
    result = finetune(
        finetune_config(
            tr_base,
            chat_file,
            tmp_path / "q",
            **{"finetune.method": "qlora", "train.device": "cuda", "train.precision": "bf16"},
        )
    )
    model, _ = load_model(result.checkpoint)
    assert model is not None and (result.checkpoint / ADAPTER_DIR).is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_torchrun_two_processes(method, tr_base, chat_file, tmp_path, torchrun_finetune):
    flags = {
        "finetune.method": method,
        "finetune.eval_replies": 2,
        "run.out_dir": tmp_path / "run",
        "train.steps": 4,
        "train.batch_size": 2,
        "train.precision": "fp32",
        "eval.interval": 2,
        "checkpoint.interval": 2,
    }
    done = torchrun_finetune(["--base", str(tr_base), "--data", str(chat_file)], flags)
    assert "2 process(es)" in done.stdout and "held-out accuracy" in done.stdout
    model, _ = load_model(tmp_path / "run")
    assert model.cfg.dim == 64


def test_conversations_longer_than_the_context(tr_base, chat_file, tmp_path, capsys):
    long_user = " ".join(["Arkadaşlar, bu gece burada toplandık."] * 20)  # far past 64 tokens
    lines = chat_file.read_text(encoding="utf-8").splitlines()
    for i in range(20):
        messages = [{"role": "user", "content": f"{i} {long_user}"}]
        messages.append({"role": "assistant", "content": "Evet."})
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = finetune_config(tr_base, data, tmp_path / "run", **{"finetune.val_fraction": 0.5})
    result = finetune(cfg)  # held-out prompts too long to answer are not generated for
    assert result.step == 6
    out = capsys.readouterr().out
    assert "truncated" in out and "dropped" in out
    dropping = finetune_config(tr_base, data, tmp_path / "drop", **{"finetune.too_long": "drop"})
    finetune(dropping)
    assert "0 truncated" in capsys.readouterr().out
