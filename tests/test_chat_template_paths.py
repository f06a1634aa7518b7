"""One chat template on every path: the ids a conversation becomes are the same everywhere.

For a tiny checkpoint with the shipped tr-tokenizer, once with the default template and once
with a custom (but compatible) template stored with its tokenizer, these agree:

(a) `ismail_core.chat.render_chat(..., add_generation_prompt=True)`,
(b) what `chat_reply` / `ismail generate --chat` feed the model (seen by a forward hook),
(c) ismail-serve's /tokenize and /v1/tokenize with messages, and the prompt of the request a
    chat completion submits to the engine (and its `usage.prompt_tokens`),
(d) transformers' `apply_chat_template` on `TrTokenizerHF` with the template /tokenizer_info
    hands out.

Also: replies end at the end-of-turn ids, `ismail generate --chat` runs one-shot and as an
interactive loop over stdin, and a model without a chat template is refused with a pointer to
`ismail finetune`.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ismail_core import Transformer, checkpoint
from ismail_core.chat import DEFAULT_CHAT_TEMPLATE, END_TOKEN, end_of_turn_ids, render_chat
from ismail_core.checkpoint import load_model, save_checkpoint
from ismail_core.cli import main
from ismail_core.generate import chat_reply
from ismail_core.sampling import SamplingParams
from ismail_core.tokenizer import CHAT_TEMPLATE_FILE, HFTokenizer, load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # tests/_tiny.py (see tests/_serve.py)
from _tiny import tiny_tr_model  # noqa: E402

MODEL = "tiny-chat"
CONTEXT = 256
GREEDY = SamplingParams(temperature=0)
GREEDY_FLAGS = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "4"]

# The default template's turns, one a line, with a system message put in when none is given.
STORED_TEMPLATE = (
    "{{ eos_token }}"
    "{% if messages[0]['role'] not in ['system', 'developer'] %}"
    "<|system|>Sen yardımsever bir asistansın.<|end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'system' if message['role'] == 'developer' else message['role'] %}"
    "{{ '<|' + role + '|>' + message['content'] + '<|end|>' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Kısa ve öz yaz."},
    {"role": "user", "content": "Kitaplarımızdan birini okudunuz mu?"},
    {"role": "assistant", "content": "Evet, Cumhuriyete dair olanı okuduk."},
    {"role": "user", "content": "İstanbul'da güneşli bir gün; öğretmenler ışığı söndürdü mü?"},
]


@pytest.fixture(scope="module", params=["default", "stored"])
def chat_checkpoint(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """A tiny tr-tokenizer checkpoint: without a stored template, or with STORED_TEMPLATE."""
    model, tok = tiny_tr_model(CONTEXT)
    tok.chat_template = STORED_TEMPLATE if request.param == "stored" else None
    return save_checkpoint(tmp_path_factory.mktemp(request.param) / MODEL, model, tok)


@pytest.fixture(scope="module")
def served(chat_checkpoint: Path) -> Iterator[tuple]:
    """(test client, engine) of ismail-serve on the checkpoint, in process."""
    from fastapi.testclient import TestClient
    from ismail_serve.app import create_app
    from ismail_serve.metrics import ServeMetrics
    from ismail_serve.server import ServeConfig, load_engine
    from ismail_serve.state import ServerState

    engine = load_engine(ServeConfig(str(chat_checkpoint), device="cpu"), ServeMetrics())
    state = ServerState(model_name=MODEL)
    state.attach(engine)
    engine.start()
    try:
        with TestClient(create_app(state)) as client:
            yield client, engine
    finally:
        engine.shutdown()


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The prompts fed whole (prefilled) to the models `load_model` loads during the test."""
    prompts: list[list[int]] = []
    real = checkpoint.load_model

    def load_and_watch(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        watch_prefills(model, prompts)
        return model, tok

    monkeypatch.setattr(checkpoint, "load_model", load_and_watch)
    return prompts


def watch_prefills(model: torch.nn.Module, prompts: list[list[int]]) -> None:
    """Append to `prompts` each prompt the model is fed whole (decode steps feed one id)."""

    def hook(_module, inputs):
        if inputs[0].shape[1] > 1:
            prompts.extend(inputs[0].tolist())

    model.register_forward_pre_hook(hook)


def force_token(model: torch.nn.Module, token_id: int) -> torch.utils.hooks.RemovableHandle:
    """Make the model predict `token_id` everywhere (until the returned handle is removed)."""

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., token_id] = 1e4
        return logits

    return model.register_forward_hook(hook)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`ismail *argv` in process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def engine_prompts(monkeypatch: pytest.MonkeyPatch, engine) -> list[list[int]]:
    """The prompt ids of the sequences submitted to `engine` during the test."""
    prompts: list[list[int]] = []
    submit = engine.submit

    def record(requests, sink):
        prompts.extend(list(r.prompt_ids) for r in requests)
        submit(requests, sink)

    monkeypatch.setattr(engine, "submit", record)
    return prompts


def hf_ids(chat_checkpoint: Path, template: str, add_generation_prompt: bool) -> list[int]:
    """transformers' apply_chat_template on the checkpoint's tokenizer files."""
    pytest.importorskip("transformers")
    from tr_tokenizer.hf import TrTokenizerHF

    hf = TrTokenizerHF(vocab_file=str(chat_checkpoint / "tokenizer"))
    return list(
        hf.apply_chat_template(
            MESSAGES,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
        )
    )


def test_the_stored_template_is_the_one_used(chat_checkpoint: Path, served) -> None:
    client, _ = served
    _, tok = load_model(chat_checkpoint)
    stored = (chat_checkpoint / "tokenizer" / CHAT_TEMPLATE_FILE).is_file()
    want = STORED_TEMPLATE if stored else DEFAULT_CHAT_TEMPLATE
    assert client.get("/tokenizer_info").json()["chat_template"] == want
    default_ids = render_chat(load_tokenizer("tr"), MESSAGES).ids
    assert (render_chat(tok, MESSAGES).ids != default_ids) == stored


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendered_ids_agree_on_every_path(chat_checkpoint, served, add_generation_prompt):
    client, _ = served
    _, tok = load_model(chat_checkpoint)
    want = render_chat(tok, MESSAGES, add_generation_prompt).ids
    body = {"messages": MESSAGES, "add_generation_prompt": add_generation_prompt}
    assert client.post("/tokenize", json=body).json()["tokens"] == want
    assert client.post("/v1/tokenize", json=body).json()["tokens"] == want
    template = client.get("/tokenizer_info").json()["chat_template"]
    assert hf_ids(chat_checkpoint, template, add_generation_prompt) == want


def test_generation_prompts_agree(chat_checkpoint, served, monkeypatch, fed, capsys) -> None:
    client, engine = served
    model, tok = load_model(chat_checkpoint)
    want = render_chat(tok, MESSAGES, add_generation_prompt=True).ids
    prompts: list[list[int]] = []
    watch_prefills(model, prompts)
    chat_reply(model, tok, MESSAGES, 2, GREEDY)
    assert prompts == [want]
    submitted = engine_prompts(monkeypatch, engine)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert submitted == [want] and reply["usage"]["prompt_tokens"] == len(want)
    system, user = MESSAGES[0]["content"], MESSAGES[1]["content"]
    args = ["--chat", "--system", system, "--prompt", user, *GREEDY_FLAGS]
    assert run(capsys, "generate", str(chat_checkpoint), *args)[0] == 0
    assert fed == [render_chat(tok, MESSAGES[:2], add_generation_prompt=True).ids]


def test_replies_end_at_the_end_of_the_turn(chat_checkpoint: Path, served) -> None:
    client, engine = served
    model, tok = load_model(chat_checkpoint)
    end = tok.token_to_id(END_TOKEN)
    assert end in end_of_turn_ids(tok)
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    force_token(model, end)
    assert chat_reply(model, tok, MESSAGES, 8, GREEDY) == "" and len(forwards) == 1
    handle = force_token(engine.runner.model, end)
    try:
        body = {"model": MODEL, "max_tokens": 3, "temperature": 0}
        chat = client.post("/v1/chat/completions", json={**body, "messages": MESSAGES}).json()
        text = client.post("/v1/completions", json={**body, "prompt": "Merhaba"}).json()
    finally:
        handle.remove()
    assert chat["choices"][0]["finish_reason"] == "stop" and chat["usage"]["completion_tokens"] == 1
    assert text["choices"][0]["finish_reason"] == "length"  # <|end|> ends turns, not documents


def test_generate_chat_prints_a_reply(chat_checkpoint: Path) -> None:
    command = [str(Path(sys.executable).with_name("ismail")), "generate", str(chat_checkpoint)]
    command += ["--chat", "--prompt", "Merhaba, nasılsın?", "--seed", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "Traceback" not in done.stderr


def test_interactive_chat_keeps_the_conversation(chat_checkpoint, monkeypatch, fed, capsys):
    model, tok = load_model(chat_checkpoint)
    first = [{"role": "user", "content": "Merhaba!"}]
    reply = chat_reply(model, tok, first, 4, GREEDY)
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Ya?"}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Merhaba!\nYa?\n"))
    code, out, _ = run(capsys, "generate", str(chat_checkpoint), "--chat", *GREEDY_FLAGS)
    assert code == 0
    assert out == f"{reply}\n{chat_reply(model, tok, second, 4, GREEDY)}\n"
    assert fed == [render_chat(tok, m, add_generation_prompt=True).ids for m in (first, second)]


def test_a_conversation_past_the_context_is_refused(chat_checkpoint, monkeypatch, capsys):
    line = " ".join(["kitap"] * 60)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{line}\n{line}\n{line}\n"))
    argv = ["generate", str(chat_checkpoint), "--chat", "--max-new-tokens", "100"]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out.count("\n") >= 1
    assert "the conversation does not fit the model's context" in err
    assert err.count("\n") == 1


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint whose byte-level BPE has an end-of-sequence token but no chat
    markers, so no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([m["content"] for m in MESSAGES], trainer)
    tok = HFTokenizer(bpe)
    tiny, _ = tiny_tr_model(CONTEXT)
    model = Transformer(dataclasses.replace(tiny.cfg, vocab_size=tok.vocab_size))
    return save_checkpoint(tmp_path_factory.mktemp("plain") / MODEL, model, tok)


def test_a_model_without_a_chat_template_is_refused(plain_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("okunmamalı\n"))
    for extra in (["--prompt", "Merhaba"], []):
        code, out, err = run(capsys, "generate", str(plain_checkpoint), "--chat", *extra)
        assert code == 1 and out == ""
        assert "has no chat template" in err and "`ismail finetune`" in err
        assert err.count("\n") == 1
    assert sys.stdin.read() == "okunmamalı\n"  # refused before reading any input
