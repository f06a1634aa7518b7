"""The HTTP layer in process (Starlette's TestClient): errors, auth, health, metrics, shapes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from ismail_serve.app import create_app
from ismail_serve.state import ServerState

MODEL = "tiny"


@pytest.fixture
def client(make_engine):
    state = ServerState(model_name=MODEL)
    state.attach(make_engine(max_model_len=64))
    with TestClient(create_app(state)) as c:
        yield c


def assert_openai_error(response, status: int, param: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param != "any":
        assert body["error"]["param"] == param
    return body["error"]


def completion(client, **fields):
    return client.post("/v1/completions", json={"model": MODEL, "prompt": "Merhaba", **fields})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"n": 100}, "n"),
        ({"prompt": ""}, None),
        ({"prompt": []}, None),
        ({"model": "gpt-4"}, "model"),
        ({"logprobs": 21}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [10**6]}, "prompt"),
        ({"stop": 5}, None),
    ],
)
def test_invalid_completion_requests_get_400(client, fields, param):
    err = assert_openai_error(completion(client, **fields), 400)
    if param is not None:
        assert err["param"] is not None and err["param"].split(".")[0] == param


def test_context_overflow_is_worded_like_vllm(client):
    err = assert_openai_error(completion(client, max_tokens=1000), 400)
    assert err["message"].startswith("This model's maximum context length is 64 tokens.")
    assert "in the completion" in err["message"]
    long_prompt = " ".join(["kitap"] * 200)
    err = assert_openai_error(completion(client, prompt=long_prompt), 400)
    assert "input tokens" in err["message"]


def test_malformed_json_and_missing_body_get_400(client):
    headers = {"content-type": "application/json"}
    r = client.post("/v1/completions", content=b'{"model": "tiny", ', headers=headers)
    assert "not valid JSON" in assert_openai_error(r, 400)["message"]
    assert_openai_error(client.post("/v1/chat/completions"), 400)
    assert_openai_error(client.post("/v1/chat/completions", json=[1, 2]), 400)


def test_chat_validation(client):
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert_openai_error(r, 400, "messages")
    tool_message = {"role": "tool", "content": "x"}
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [tool_message]})
    assert_openai_error(r, 400)


def test_unknown_route_is_an_openai_404(client):
    assert_openai_error(client.get("/v1/nothing"), 404)


def test_completion_shape_and_usage(client):
    r = completion(client, max_tokens=5, temperature=0, n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["usage"]["completion_tokens"] <= 10


def test_stream_equals_one_shot_and_ends_with_done(client):
    fields = {"max_tokens": 20, "temperature": 1.0, "seed": 7}
    one_shot = completion(client, **fields).json()["choices"][0]["text"]
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Merhaba",
            "stream": True,
            **fields,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == one_shot


def test_chat_completion(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Kısa cevap ver."},
                {"role": "user", "content": [{"type": "text", "text": "Nasılsın?"}]},
            ],
            "max_completion_tokens": 6,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_api_key(make_engine):
    state = ServerState(model_name=MODEL, api_key="s3cret")
    state.attach(make_engine())
    with TestClient(create_app(state)) as c:
        assert_openai_error(c.get("/v1/models"), 401)
        assert_openai_error(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
        assert c.get("/health").status_code == 200  # health needs no key


def test_health_is_503_while_loading():
    with TestClient(create_app(ServerState(model_name=MODEL))) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        assert_openai_error(completion(c), 503)


def test_metrics_in_prometheus_format(client):
    completion(client, max_tokens=3)
    text = client.get("/metrics").text
    for name in (
        "ismail_requests_running",
        "ismail_requests_waiting",
        "ismail_prompt_tokens_total",
        "ismail_generation_tokens_total",
        "ismail_time_to_first_token_seconds_bucket",
        "ismail_inter_token_latency_seconds_bucket",
        "ismail_kv_cache_usage_perc",
        "ismail_prefix_cache_hits_total",
        "ismail_num_preemptions_total",
    ):
        assert name in text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    generated = families["ismail_generation_tokens"].samples[0].value
    assert generated >= 3


def test_tokenize_round_trip(client):
    text = "Kitaplarımızdan birini okudunuz mu?"
    r = client.post("/v1/tokenize", json={"prompt": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) == len(body["offsets"])
    back = client.post("/v1/detokenize", json={"tokens": body["tokens"]}).json()["prompt"]
    assert back == text
    assert_openai_error(client.post("/v1/detokenize", json={"tokens": [10**6]}), 400, "tokens")
    chat = client.post("/v1/tokenize", json={"messages": [{"role": "user", "content": "selam"}]})
    strs = chat.json()["token_strs"]
    assert strs[:2] == ["<|endoftext|>", "<|user|>"] and strs[-2:] == ["<|end|>", "<|assistant|>"]


def test_openapi_documents_400_not_422(client):
    schema = client.get("/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/tokenize"):
        responses = schema["paths"][path]["post"]["responses"]
        assert "422" not in responses and "400" in responses


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_is_a_408_or_an_error_event(make_engine, stream):
    # A 1 microsecond timeout has always passed by the engine's next step.
    state = ServerState(model_name=MODEL)
    state.attach(make_engine(request_timeout=1e-6))
    with TestClient(create_app(state)) as c:
        if not stream:
            assert assert_openai_error(completion(c, max_tokens=20), 408)["code"] == "timeout"
            return
        body = {"model": MODEL, "prompt": "Merhaba", "max_tokens": 20, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[0])["error"]["code"] == "timeout"
        assert events[-1] == "[DONE]"
