"""A transformers user gets from an export what `ismail generate` gives.

A tiny model is trained for a few steps on the built-in corpus with the shipped tr-tokenizer
and exported with `ismail export`. Then a separate Python process that imports transformers
only (never ismail_core; tr_tokenizer comes in through the export's own tokenizer module)
loads it with AutoTokenizer / AutoModelForCausalLM, runs the text-generation pipeline with
greedy decoding and `apply_chat_template`. Its text must be exactly `ismail generate`'s for the
same prompts (continuations decoded in context), plain and, for a chat model, in chat.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ismail_core.chat import render_chat
from ismail_core.checkpoint import load_checkpoint_tokenizer, resolve_checkpoint
from ismail_core.cli import main
from ismail_core.corpus import DataSpec, prepare_data
from ismail_core.corpus.builtin import builtin_texts
from ismail_core.tokenizer import save_tokenizer
from ismail_core.train import train
from ismail_core.train.config import build_config

pytest.importorskip("transformers")

PROMPTS = ["Türk milleti", "Cumhuriyet", "Arkadaşlar, bu memleketin"]
MESSAGES = [
    {"role": "system", "content": "Kısa yaz."},
    {"role": "user", "content": "Ankara'yı anlat."},
]
# A template a fine-tuning could have stored (the default's turns, one a line).
CHAT_TEMPLATE = (
    "{{ eos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NEW_TOKENS = 24

# Run in a fresh interpreter: transformers and the export folder, nothing of ismail.
TRANSFORMERS_USER = """
import json, sys
from transformers import AutoTokenizer, pipeline

plain, chat, prompts, messages, new = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \\
    json.loads(sys.argv[4]), int(sys.argv[5])
generate = pipeline("text-generation", model=plain, trust_remote_code=True)
texts = [generate(p, max_new_tokens=new, do_sample=False, return_full_text=False)[0]
         ["generated_text"] for p in prompts]
chat_tok = AutoTokenizer.from_pretrained(chat, trust_remote_code=True)
chat_ids = chat_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
converse = pipeline("text-generation", model=chat, trust_remote_code=True)
reply = converse(messages, max_new_tokens=new, do_sample=False)[0]["generated_text"][-1]
print(json.dumps({"texts": texts, "chat_ids": list(chat_ids), "reply": reply,
                  "ismail_imported": any(m.startswith("ismail") for m in sys.modules),
                  "tokenizer": type(chat_tok).__name__}))
"""


def _transformers_env(tmp_path: Path) -> dict[str, str]:
    """Offline, with transformers' remote-code module cache inside the test's directory."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory: a tiny model trained 40 steps on 40 built-in speeches (tr-tokenizer),
    enough for greedy decoding to write words and punctuation rather than one token over."""
    root = tmp_path_factory.mktemp("hf-export")
    source = root / "speeches.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in builtin_texts()[:40]))
    data = root / "data"
    prepare_data(DataSpec(source=str(source), out=str(data), cache_dir=str(root / "cache")))
    model = {"max_seq_len": 64, "dim": 64, "n_layers": 2, "n_heads": 2, "kv_lora_rank": 16}
    model |= {"qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16}
    model |= {"inter_dim": 128, "moe_inter_dim": 64}
    layer = {f"model.{k}": v for k, v in model.items()} | {
        "run.out_dir": str(root / "run"),
        "data.path": str(data),
        "train.steps": 40,
        "train.batch_size": 4,
        "train.seq_len": 64,
        "train.precision": "fp32",
        "optim.lr": 0.01,
        "optim.warmup_steps": 4,
        "eval.interval": 40,
        "eval.max_tokens": 2048,
        "checkpoint.interval": 40,
        "log.progress": False,
        "log.sample_tokens": 0,
    }
    train(build_config(layer))
    return root / "run"


def _with_chat_template(run: Path, out: Path) -> Path:
    """A copy of the run's checkpoint whose tokenizer stores CHAT_TEMPLATE, as fine-tuning's do."""
    checkpoint = resolve_checkpoint(run)
    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("trainer_state.pt"))
    tokenizer = load_checkpoint_tokenizer(checkpoint)
    tokenizer.chat_template = CHAT_TEMPLATE
    save_tokenizer(tokenizer, out / "tokenizer")
    return out


def _ismail_generate(capsys, checkpoint: Path, *args: str) -> str:
    """The text `ismail generate --temperature 0 --no-stream` prints, without its newline."""
    capsys.readouterr()
    flags = ["--temperature", "0", "--max-new-tokens", str(NEW_TOKENS), "--no-stream"]
    assert main(["generate", str(checkpoint), *flags, *args]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_pipeline_and_chat_template_match_ismail_generate(trained, tmp_path, capsys) -> None:
    chat_checkpoint = _with_chat_template(trained, tmp_path / "chat-ckpt")
    plain, chat = tmp_path / "plain", tmp_path / "chat"
    assert main(["export", str(trained), str(plain)]) == 0
    assert main(["export", str(chat_checkpoint), str(chat)]) == 0

    args = [plain, chat, json.dumps(PROMPTS), json.dumps(MESSAGES), str(NEW_TOKENS)]
    result = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_USER, *map(str, args)],
        capture_output=True,
        text=True,
        env=_transformers_env(tmp_path),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert not seen["ismail_imported"] and seen["tokenizer"] == "TrTokenizerHF"

    # `ismail generate` prints the prompt, then the continuation; the pipeline, with
    # return_full_text=False, the continuation alone. Repetition penalty 1.1 on both sides
    # (ismail's default, and generation_config.json's).
    expected = [_ismail_generate(capsys, trained, "--prompt", p)[len(p) :] for p in PROMPTS]
    assert seen["texts"] == expected
    assert any(text.strip() for text in expected)  # the comparison is not of empty strings

    tokenizer = load_checkpoint_tokenizer(chat_checkpoint)
    assert seen["chat_ids"] == render_chat(tokenizer, MESSAGES, add_generation_prompt=True).ids
    reply = _ismail_generate(
        capsys,
        chat_checkpoint,
        "--chat",
        "--system",
        MESSAGES[0]["content"],
        "--prompt",
        MESSAGES[1]["content"],
    )
    assert seen["reply"] == {"role": "assistant", "content": reply}


def test_without_tr_tokenizer_the_error_says_what_to_install(trained, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["export", str(trained), str(out)]) == 0
    # tr_tokenizer cannot be imported in this interpreter, as on a machine without it
    script = (
        "import sys; sys.modules['tr_tokenizer'] = None\n"
        "from transformers import AutoTokenizer\n"
        f"AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=_transformers_env(tmp_path),
        timeout=300,
    )
    assert result.returncode != 0
    assert "pip install 'tr-tokenizer[hf]'" in result.stderr
