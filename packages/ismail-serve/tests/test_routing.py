"""POST /v1/routing and the engine's run_between_steps: the routing of a text is the model's own
(one pass, same decision as the gates), token texts decoded in context, dense models answered
plainly, and generation unaffected by routing calls."""

from __future__ import annotations

import threading

import pytest
import torch
from fastapi.testclient import TestClient
from ismail_core import Transformer
from ismail_serve.app import create_app
from ismail_serve.engine import EngineStoppedError
from ismail_serve.prompts import chat_prompt_ids, encode_prompt
from ismail_serve.protocol import ChatMessage
from ismail_serve.state import ServerState

MODEL = "tiny"
TEXT = "Kitaplarımızdan birini okudunuz mu? Çocuklar bahçede oynuyor."


@pytest.fixture
def serve(make_engine):
    """serve(**engine_overrides) -> a TestClient on a server attached to a new engine."""
    clients = []

    def make(**overrides):
        state = ServerState(model_name=MODEL)
        state.attach(make_engine(**{"max_model_len": 64, **overrides}))
        client = TestClient(create_app(state)).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_routing_of_a_prompt_is_the_models_own_decision(serve, model, tokenizer):
    r = serve().post("/v1/routing", json={"model": MODEL, "prompt": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = encode_prompt(tokenizer, TEXT)
    assert body["moe"] is True and body["message"] is None and body["tokens"] == ids
    assert "".join(body["token_texts"]) == tokenizer.decode(ids)  # decoded in context
    assert len(body["kinds"]) == len(ids)
    assert (body["n_experts"], body["top_k"]) == (4, 2)
    with torch.no_grad():
        expected = model(torch.tensor([ids]), return_routing=True).routing
    assert [layer["layer"] for layer in body["layers"]] == [r.layer for r in expected]
    assert len(body["layers"]) == len(model.moe_layers()) >= 1
    for layer, want in zip(body["layers"], expected):
        assert layer["experts"] == want.expert_ids[0].tolist()
        got = torch.tensor(layer["weights"])
        assert torch.allclose(got, want.weights[0], atol=1e-5)  # rounded to 5 decimals
        counts = torch.bincount(want.expert_ids.flatten(), minlength=4).tolist()
        assert layer["load"] == counts and sum(counts) == 2 * len(ids)
        assert layer["kept"] is None


def test_routing_of_messages_follows_the_chat_template(serve, tokenizer):
    messages = [{"role": "user", "content": "Merhaba, nasılsın?"}]
    body = serve().post("/v1/routing", json={"messages": messages}).json()
    assert body["tokens"] == chat_prompt_ids(tokenizer, [ChatMessage(**m) for m in messages])
    assert all(len(row) == 2 for row in body["layers"][0]["experts"])
    assert len(body["layers"][0]["experts"]) == len(body["tokens"])


@pytest.mark.parametrize("dense", [{"n_routed_experts": 0}, {"n_dense_layers": 2}])
def test_a_dense_model_gets_a_plain_answer(make_engine, make_config, tokenizer, dense):
    torch.manual_seed(0)
    cfg = make_config(tokenizer.vocab_size)
    for key, value in dense.items():
        setattr(cfg, key, value)
    dense = Transformer(cfg).eval()
    assert dense.moe_layers() == []
    state = ServerState(model_name=MODEL)
    state.attach(make_engine(model_override=dense, max_model_len=64))
    with TestClient(create_app(state)) as client:
        r = client.post("/v1/routing", json={"prompt": TEXT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["moe"] is False and body["layers"] == [] and body["n_experts"] == 0
    assert "dense model" in body["message"] and "no routing" in body["message"]
    assert "".join(body["token_texts"]) == tokenizer.decode(body["tokens"])


@pytest.mark.parametrize(
    "payload, param, words",
    [
        ({}, "prompt", "exactly one of"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt", "exactly one"),
        ({"prompt": "bir " * 200}, "prompt", "maximum context length is 64 tokens"),
        ({"prompt": "a", "model": "other"}, "model", "does not exist"),
    ],
)
def test_bad_routing_requests_get_clear_400s(serve, payload, param, words):
    r = serve().post("/v1/routing", json=payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_generation_is_the_same_with_routing_calls_in_between(serve):
    client = serve()
    ask = {"model": MODEL, "prompt": "Çocuklar bahçede", "max_tokens": 12, "temperature": 0}
    before = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
    for _ in range(3):
        assert client.post("/v1/routing", json={"prompt": TEXT}).status_code == 200
    after = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
    assert before == after


def test_jobs_run_on_the_engine_thread_before_a_step(make_engine, tokenizer):
    engine = make_engine(start=False)
    seen = []
    job = engine.run_between_steps(lambda: seen.append(threading.current_thread()) or 42)
    assert not job.done()  # nothing runs until the engine steps
    engine.step()
    assert job.result(timeout=1) == 42 and seen == [threading.current_thread()]
    failing = engine.run_between_steps(lambda: 1 / 0)
    assert engine.step() is True  # a job counts as work, and its failure is the caller's
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=1)

    started = make_engine()
    names = started.run_between_steps(lambda: threading.current_thread().name)
    assert names.result(timeout=10) == "ismail-engine"
    started.shutdown()
    with pytest.raises(EngineStoppedError):
        started.run_between_steps(lambda: None)


def test_jobs_queued_at_shutdown_fail_instead_of_hanging(make_engine):
    engine = make_engine(start=False)
    job = engine.run_between_steps(lambda: "never")
    engine.shutdown()
    with pytest.raises(EngineStoppedError):
        job.result(timeout=1)
