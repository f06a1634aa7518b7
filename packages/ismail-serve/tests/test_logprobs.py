"""Prompt scoring and token log-probabilities, checked against a direct forward pass.

The numbers must be the model's log-softmax of its unmodified logits (float32), whatever the
sampling parameters; the shapes are OpenAI's and vLLM's, read here by the `openai` client too.
"""

from __future__ import annotations

import json

import jinja2
import pytest
import torch
from fastapi.testclient import TestClient
from ismail_core.chat import render_chat
from ismail_serve.app import create_app
from ismail_serve.state import ServerState

MODEL = "tiny"
CONTEXT = 64
TOL = 1e-4


@pytest.fixture
def client(make_engine):
    state = ServerState(model_name=MODEL)
    state.attach(make_engine(max_model_len=CONTEXT))
    with TestClient(create_app(state)) as c:
        yield c


@torch.no_grad()
def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at every position of `ids`, float32."""
    return torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)


def complete(client, **fields) -> dict:
    r = client.post("/v1/completions", json={"model": MODEL, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def test_echo_scores_the_prompt_like_a_forward_pass(client, model, tokenizer):
    ids = tokenizer.encode("Kitaplarımızdan birini okudunuz mu? Çocuklar bahçede").ids
    body = complete(client, prompt=ids, echo=True, logprobs=3, max_tokens=0)
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) and body["usage"]["completion_tokens"] == 0
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    direct = direct_logprobs(model, ids)
    want = [float(direct[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=TOL)
    for i in range(1, len(ids)):
        top = lp["top_logprobs"][i]
        assert 1 <= len(top) <= 4  # three alternatives and the chosen token (texts may merge)
        assert max(top.values()) == pytest.approx(float(direct[i - 1].max()), abs=TOL)
    # the texts of the tokens make up the echoed prompt, and offsets point into it
    assert choice["text"] == tokenizer.decode(ids) == "".join(lp["tokens"])
    assert all(choice["text"][o:].startswith(t) for o, t in zip(lp["text_offset"], lp["tokens"]))


def test_generated_logprobs_ignore_sampling_parameters(client, model, tokenizer):
    prompt = tokenizer.encode("Ağaçların gölgesinde").ids
    body = complete(
        client,
        prompt=prompt,
        max_tokens=6,
        logprobs=2,
        temperature=1.7,
        top_k=5,
        top_p=0.9,
        repetition_penalty=1.5,
        seed=4,
        ignore_eos=True,
        return_tokens_as_token_ids=True,
    )
    lp = body["choices"][0]["logprobs"]
    generated = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    assert len(generated) == 6
    direct = direct_logprobs(model, prompt + generated)
    want = [float(direct[len(prompt) - 1 + i, t]) for i, t in enumerate(generated)]
    assert lp["token_logprobs"] == pytest.approx(want, abs=TOL)
    for i, top in enumerate(lp["top_logprobs"]):
        best = direct[len(prompt) - 1 + i].topk(2)
        for idx, value in zip(best.indices.tolist(), best.values.tolist()):
            assert top[f"token_id:{idx}"] == pytest.approx(value, abs=TOL)
    assert body["choices"][0]["text"] == tokenizer.decode(generated)


def test_batched_prompts_are_scored_like_single_ones(client):
    prompts = [[5, 17, 42, 9], [100, 3], [7] * 20, [250, 251, 252, 253, 254]]
    batch = complete(client, prompt=prompts, echo=True, logprobs=1, max_tokens=1, temperature=0)
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    for prompt, choice in zip(prompts, batch["choices"]):
        single = complete(client, prompt=prompt, echo=True, logprobs=1, max_tokens=1, temperature=0)
        got, want = choice["logprobs"], single["choices"][0]["logprobs"]
        assert len(got["token_logprobs"]) == len(prompt) + 1  # the prompt, then one new token
        assert got["tokens"] == want["tokens"]
        assert got["token_logprobs"][1:] == pytest.approx(want["token_logprobs"][1:], abs=TOL)


def test_streamed_logprobs_equal_the_one_shot_ones(client):
    fields = {"prompt": [5, 17, 42, 9], "max_tokens": 8, "logprobs": 2, "seed": 1, "echo": True}
    one_shot = complete(client, **fields)["choices"][0]
    with client.stream(
        "POST", "/v1/completions", json={"model": MODEL, "stream": True, **fields}
    ) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line)["choices"][0] for line in lines[:-1]]
    text = "".join(c["text"] for c in chunks)
    merged: dict[str, list] = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for c in chunks:
        for key in merged:
            merged[key] += (c["logprobs"] or {}).get(key, [])
    assert text == one_shot["text"]
    assert merged["tokens"] == one_shot["logprobs"]["tokens"]
    assert merged["text_offset"] == one_shot["logprobs"]["text_offset"]
    assert merged["token_logprobs"][1:] == pytest.approx(
        one_shot["logprobs"]["token_logprobs"][1:], abs=TOL
    )


def test_chat_logprobs_through_the_openai_client(client, model, tokenizer):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    messages = [{"role": "user", "content": "Merhaba"}]
    reply = api.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 3 for t in content)
    generated = [int(t.token.removeprefix("token_id:")) for t in content]
    prompt = render_chat(tokenizer, messages, add_generation_prompt=True).ids
    direct = direct_logprobs(model, prompt + generated)
    for i, t in enumerate(content):
        assert t.logprob == pytest.approx(float(direct[len(prompt) - 1 + i].max()), abs=TOL)
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=TOL)  # greedy
    completion = api.completions.create(
        model=MODEL, prompt="Merhaba", max_tokens=0, echo=True, logprobs=0
    )
    lp = completion.choices[0].logprobs
    assert completion.choices[0].text == "Merhaba" == "".join(lp.tokens)
    assert lp.token_logprobs[0] is None and all(len(t) == 1 for t in lp.top_logprobs[1:])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"echo": True, "max_tokens": 0, "prompt": [5] * (CONTEXT + 1)}, "prompt"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_scoring_requests_get_400(client, fields, param):
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "Merhaba", **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_prompt_that_fills_the_context_can_be_scored(client):
    body = complete(client, prompt=[5] * CONTEXT, echo=True, logprobs=0, max_tokens=0)
    assert len(body["choices"][0]["logprobs"]["tokens"]) == CONTEXT


def test_chat_request_checks(client):
    def chat(**fields):
        messages = fields.pop("messages", [{"role": "user", "content": "Merhaba"}])
        return client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": 2, **fields},
        )

    r = chat(top_logprobs=2)
    assert r.status_code == 400 and "needs 'logprobs': true" in r.json()["error"]["message"]
    assert chat(logprobs=True, top_logprobs=21).status_code == 400
    assert chat(response_format={"type": "text"}).status_code == 200  # OpenAI's default
    history = [
        {"role": "user", "content": "Merhaba"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Nasılsın?"},
    ]
    r = chat(messages=history)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "messages.1.content" and "content null" in error["message"]


def test_root_tokenizer_routes_for_lm_eval(client, tokenizer):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["eos_token_id"] == tokenizer.eos_id
    # lm-eval's RemoteTokenizer: eos_token_id = encode(eos_token)[0], no special tokens added
    r = client.post("/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False})
    assert r.json()["tokens"] == [tokenizer.eos_id]
    text = "Çocuklar bahçede oynuyor."
    ids = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert ids["tokens"] == tokenizer.encode(text).ids and ids["max_model_len"] == CONTEXT
    with_sep = client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    assert with_sep == [tokenizer.eos_id, *ids["tokens"]]  # as a completion prompt gets it
    back = client.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert back == text
    # the Jinja chat template renders to the ids ismail_core.chat gives
    messages = [{"role": "system", "content": "Kısa yaz."}, {"role": "user", "content": "Selam"}]
    rendered = jinja2.Template(info["chat_template"]).render(
        messages=messages, add_generation_prompt=True, eos_token=info["eos_token"]
    )
    r = client.post("/tokenize", json={"prompt": rendered, "add_special_tokens": False})
    want = render_chat(tokenizer, messages, add_generation_prompt=True).ids
    assert r.json()["tokens"] == want
    via_messages = client.post("/tokenize", json={"messages": messages}).json()["tokens"]
    assert via_messages == want
