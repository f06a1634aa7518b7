"""Continuations are decoded with their prompt as context, everywhere text is generated.

tr-tokenizer gives a suffix's allomorphs one id, so a continuation's text depends on the prompt
before it. For a prompt P and generated ids G, the text shown after P must be what G adds to
decode(P) in decode(P + G): checked for ismail-serve (completions and chat, streamed and not),
the Python API and `ismail generate`, with the tokenizer's one-shot decode as the oracle.
A tiny random model with the shipped tr-tokenizer emits plenty of bare suffix ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ismail_core.checkpoint import save_checkpoint
from ismail_core.cli import main as ismail_main
from ismail_core.generate import generate_ids, generate_text, prompt_ids
from ismail_core.model.runner import ModelRunner
from ismail_core.sampling import SamplingParams
from ismail_serve.app import create_app
from ismail_serve.engine import EngineConfig, LLMEngine
from ismail_serve.state import ServerState

sys.path.insert(0, str(Path(__file__).parent))  # tests/_tiny.py
from _tiny import tiny_tr_model  # noqa: E402

MODEL = "tiny-tr"
PROMPTS = [
    "Türkiye Cumhuriyeti",
    "Ankara'",
    "İstanbul’",
    "Meclis-i Mebusan'ın kararları ağaç",
    "Kitaplarımızdan birini",
    "ÖĞRETMENLER",
    "Çocuk",
]
# Consonants that voice before a vowel (ağaç + ı -> ağacı): the one letter of the prompt that a
# continuation may change in the whole decode, which text already shown cannot follow.
VOICED = {("p", "b"), ("ç", "c"), ("t", "d"), ("k", "ğ"), ("k", "g")}
VOICED |= {(a.upper(), b.upper()) for a, b in VOICED}


@pytest.fixture(scope="module")
def model_and_tok():
    return tiny_tr_model(max_seq_len=128)


@pytest.fixture(scope="module")
def model(model_and_tok):
    return model_and_tok[0]


@pytest.fixture(scope="module")
def tok(model_and_tok):
    return model_and_tok[1]


@pytest.fixture(scope="module")
def client(model, tok):
    config = EngineConfig(max_batch=4, max_model_len=128)
    engine = LLMEngine(ModelRunner(model, num_blocks=4 * 128 // 16), tok, config)
    engine.start()
    state = ServerState(model_name=MODEL)
    state.attach(engine)
    with TestClient(create_app(state)) as c:
        yield c
    engine.shutdown()


def assert_continues(tok, prompt: list[int], generated: list[int], text: str) -> None:
    """`text` is what `generated` adds after decode(prompt) in decode(prompt + generated)."""
    before = tok.decode(prompt, skip_special_tokens=True)
    full = tok.decode(prompt + generated, skip_special_tokens=True)
    if full.startswith(before):
        assert before + text == full
    else:  # the continuation voiced the prompt's last letter; the rest must still match
        assert full.endswith(text) and len(full) == len(before) + len(text)
        assert (before[-1], full[len(before) - 1]) in VOICED


def ids_of(logprobs_tokens: list[str]) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprobs_tokens]


def sse_texts(client, path: str, body: dict, chat: bool) -> str:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    if chat:
        return "".join(c["delta"].get("content", "") for c in choices)
    return "".join(c["text"] for c in choices)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.sampled_from(PROMPTS), seed=st.integers(0, 2**16))
def test_serve_completions_streamed_and_not(client, tok, prompt: str, seed: int) -> None:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 12,
        "seed": seed,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
        "ignore_eos": True,
    }
    reply = client.post("/v1/completions", json=body).json()["choices"][0]
    context = client.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert context == prompt_ids(tok, prompt)  # the separator, then the prompt
    assert_continues(tok, context, ids_of(reply["logprobs"]["tokens"]), reply["text"])
    assert sse_texts(client, "/v1/completions", body, chat=False) == reply["text"]


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.sampled_from(PROMPTS), seed=st.integers(0, 2**16))
def test_serve_chat_streamed_and_not(client, tok, prompt: str, seed: int) -> None:
    messages = [{"role": "user", "content": prompt}]
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 12,
        "seed": seed,
        "logprobs": True,
        "return_tokens_as_token_ids": True,
        "ignore_eos": True,
    }
    reply = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    context = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    generated = ids_of([t["token"] for t in reply["logprobs"]["content"]])
    assert_continues(tok, context, generated, reply["message"]["content"])
    assert sse_texts(client, "/v1/chat/completions", body, chat=True) == reply["message"]["content"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_python_api(model, tok, prompt: str) -> None:
    params = SamplingParams(temperature=1.0, seed=7)
    context = prompt_ids(tok, prompt)
    generated = list(generate_ids(model, context, 10, params, stop_id=tok.eos_id))
    generated = generated[: generated.index(tok.eos_id)] if tok.eos_id in generated else generated
    text = generate_text(model, tok, prompt, 10, SamplingParams(temperature=1.0, seed=7))
    assert_continues(tok, context, generated, text)


def test_ismail_generate(model, tok, tmp_path, capsys) -> None:
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, tok)
    prompt = "Türkiye Cumhuriyeti"
    args = ["generate", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "10"]
    args += ["--temperature", "0", "--repetition-penalty", "1"]
    assert ismail_main(args) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    context = prompt_ids(tok, prompt)
    greedy = SamplingParams(temperature=0)
    generated = list(generate_ids(model, context, 10, greedy, stop_id=tok.eos_id))
    generated = generated[: generated.index(tok.eos_id)] if tok.eos_id in generated else generated
    assert printed.startswith(prompt)
    assert_continues(tok, context, generated, printed[len(prompt) :])
