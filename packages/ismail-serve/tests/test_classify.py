"""POST /v1/classify (issue 16): a classifier checkpoint served next to the OpenAI routes.

A tiny classifier is built here the way `ismail finetune --task classify` builds one (a tiny
language model's weights, a new `score` head, classifier.json from save_checkpoint) and
trained for a few steps on labelled Turkish sentences read from a JSONL file. The route must
give exactly what `TextClassifier.predict` gives for the same texts; a classifier server
refuses the generation routes and a language-model server refuses /v1/classify, both with
OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from ismail_core import Transformer
from ismail_core.checkpoint import save_checkpoint
from ismail_core.classify.data import collate, encode_texts, label_names, load_labelled, pad_id
from ismail_core.classify.model import ClassifierInfo, from_language_model
from ismail_core.classify.predict import TextClassifier
from ismail_serve.app import create_app
from ismail_serve.classifier import ClassifierBusyError, ClassifierRunner
from ismail_serve.cli import main
from ismail_serve.protocol import MAX_CLASSIFY_INPUTS
from ismail_serve.server import ServeConfig, describe_classifier, load_classifier
from ismail_serve.state import ServerState

sys.path.insert(0, str(Path(__file__).parents[3] / "tests"))  # the repo's tests/_serve.py
from _serve import base_url, free_port, start_serve  # noqa: E402

CLASSIFIER = "tiny-classifier"
LM = "tiny-lm"
MAX_SEQ_LEN = 64
LABELLED = {
    "spor": [
        "Takımımız dün akşamki maçı iki golle kazandı.",
        "Kaleci son dakikada penaltıyı kurtardı.",
        "Basketbol takımı şampiyonluk kupasını kaldırdı.",
        "Koşucular maratonun son kilometresinde hızlandı.",
    ],
    "ekonomi": [
        "Merkez bankası faiz oranlarını yükseltti.",
        "Enflasyon geçen ay beklentilerin üzerinde çıktı.",
        "İhracat rakamları bu yıl rekor kırdı.",
        "Borsa günü yüzde iki düşüşle kapattı.",
    ],
    "hava": [
        "Yarın İstanbul'da sağanak yağış bekleniyor.",
        "Kar yağışı nedeniyle okullar tatil edildi.",
        "Güneşli ve ılık bir hafta sonu geçireceğiz.",
        "Rüzgar akşam saatlerinde kuvvetlenecek.",
    ],
}
TEXTS = [
    "Maçın ikinci yarısında iki gol geldi.",
    "Faiz kararı piyasaları hareketlendirdi.",
    "Bu gece şiddetli yağmur ve fırtına var.",
    "Çocuklar bahçede oynuyor.",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A tiny model gains nothing from more threads, and on a shared 2-core machine they thrash
    # (a training step takes a second instead of 40 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def train_classifier(base: Transformer, data: Path, tokenizer, steps: int = 30):
    """A classifier from `base` trained on the labelled JSONL file `data` (full fine-tuning,
    as `ismail finetune --task classify` does by default)."""
    records = load_labelled(str(data))
    labels = label_names(records)
    torch.manual_seed(0)
    model = from_language_model(base, ClassifierInfo(labels)).train()
    rows = encode_texts(tokenizer, [r.text for r in records], MAX_SEQ_LEN)
    ids, last = collate(rows, pad_id(tokenizer))
    targets = torch.tensor([labels.index(r.label) for r in records])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids, targets, last_index=last).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, make_config) -> dict[str, Path]:
    """{"lm": a tiny language model checkpoint, "classifier": the classifier made from it}."""
    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    base = Transformer(make_config(tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN)).eval()
    data = root / "labelled.jsonl"
    rows = [{"text": t, "label": label} for label, texts in LABELLED.items() for t in texts]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    classifier = train_classifier(base, data, tokenizer)
    return {
        "lm": save_checkpoint(root / LM, base, tokenizer),
        "classifier": save_checkpoint(root / CLASSIFIER, classifier, tokenizer),
    }


@pytest.fixture(scope="module")
def reference(checkpoints) -> TextClassifier:
    """The checkpoint loaded by the public API the route must agree with."""
    return TextClassifier.load(checkpoints["classifier"], device="cpu")


def classifier_state(checkpoint: Path, **config) -> ServerState:
    """A server's state for a classifier checkpoint, loaded as ismail-serve loads it."""
    state = ServerState(model_name=CLASSIFIER, is_classifier=True, checkpoint=str(checkpoint))
    # float32, as TextClassifier.predict loads it (--dtype auto: bf16 on a CPU with native bf16)
    config = {"dtype": "float32", **config}
    state.attach_classifier(load_classifier(ServeConfig(str(checkpoint), **config), state.metrics))
    return state


@pytest.fixture
def client(checkpoints):
    state = classifier_state(checkpoints["classifier"], max_batch=4, device="cpu")
    with TestClient(create_app(state)) as c:
        yield c
    state.classifier.shutdown()


def classify(client, payload) -> dict:
    r = client.post("/v1/classify", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def assert_same(data: list[dict], predictions) -> None:
    assert [d["index"] for d in data] == list(range(len(predictions)))
    for item, expected in zip(data, predictions):
        assert item["label"] == expected.label
        assert item["scores"] == pytest.approx(expected.scores, abs=1e-6)


# ---- the route on a classifier server ----


def test_single_and_list_input_equal_predict(client, reference, tokenizer):
    one = classify(client, {"model": CLASSIFIER, "input": TEXTS[0]})
    assert one["object"] == "list" and one["model"] == CLASSIFIER
    assert_same(one["data"], reference.predict(TEXTS[:1]))
    many = classify(client, {"input": TEXTS})
    assert_same(many["data"], reference.predict(TEXTS))
    for item in many["data"]:
        assert list(item["scores"]) == reference.labels == sorted(LABELLED)
        assert sum(item["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["label"] == max(item["scores"], key=item["scores"].get)
    tokens = sum(map(len, encode_texts(tokenizer, TEXTS, MAX_SEQ_LEN)))
    assert many["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_the_trained_classifier_learned_its_training_texts(client):
    texts = [t for label in sorted(LABELLED) for t in LABELLED[label]]
    data = classify(client, {"input": texts})["data"]
    assert [d["label"] for d in data] == [label for label in sorted(LABELLED) for _ in range(4)]


def test_a_request_is_one_predict_call_off_the_event_loop(client, monkeypatch):
    runner = client.app.state.serve.classifier
    calls = []
    original = runner.classifier.predict

    def spy(texts, batch_size=32):
        calls.append((list(texts), batch_size, threading.current_thread().name))
        return original(texts, batch_size=batch_size)

    monkeypatch.setattr(runner.classifier, "predict", spy)
    classify(client, {"input": TEXTS})
    assert len(calls) == 1
    texts, batch_size, thread = calls[0]
    assert texts == TEXTS and batch_size == 4  # --max-batch texts per forward pass
    assert thread.startswith("ismail-classify")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"input": []}, "the list is empty"),
        ({"input": ""}, "the text is empty"),
        ({"input": "   \n"}, "the text is empty"),
        ({"input": ["Merhaba", " "]}, "input[1] is empty"),
        ({"input": ["Merhaba", 5]}, "input[1] is a number, not a string"),
        ({"input": 5}, "send a text or a list of texts, not a number"),
        ({"input": None}, "not null"),
        ({"input": {"text": "Merhaba"}}, "not an object"),
        ({"input": ["a"] * (MAX_CLASSIFY_INPUTS + 1)}, f"at most {MAX_CLASSIFY_INPUTS} texts"),
        ({}, "Missing required parameter 'input'"),
    ],
)
def test_bad_input_gets_400(client, payload, words):
    err = assert_openai_error(client.post("/v1/classify", json=payload), 400)
    assert words in err["message"] and err["param"] == "input"
    assert err["type"] == "invalid_request_error"


def test_wrong_model_lone_surrogate_and_non_object_bodies_get_400(client):
    err = assert_openai_error(client.post("/v1/classify", json={"model": "x", "input": "a"}), 400)
    assert err["code"] == "model_not_found" and CLASSIFIER in err["message"]
    headers = {"content-type": "application/json"}
    r = client.post("/v1/classify", content=b'{"input": "a\\ud800"}', headers=headers)
    assert "surrogate" in assert_openai_error(r, 400)["message"]
    r = client.post("/v1/classify", content=b"[1, 2]", headers=headers)
    assert "'input' for /v1/classify" in assert_openai_error(r, 400)["message"]


def test_models_health_and_metrics_keep_working(client):
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [CLASSIFIER] and models[0]["max_model_len"] == 64
    assert client.get("/health").json() == {"status": "ok"}
    classify(client, {"input": TEXTS})
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["ismail_classify_texts"].samples[0].value == len(TEXTS)
    assert families["ismail_prompt_tokens"].samples[0].value > len(TEXTS)
    latency = families["ismail_classify_request_latency_seconds"]
    assert any(s.name.endswith("_count") and s.value == 1 for s in latency.samples)


def test_openapi_documents_the_route(client):
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/classify"]["post"]["responses"]
    assert "422" not in responses and {"200", "400", "429", "503"} <= set(responses)
    assert "ClassifyResponse" in schema["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("POST", "/v1/completions", {"model": CLASSIFIER, "prompt": "Merhaba"}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": CLASSIFIER, "messages": [{"role": "user", "content": "Merhaba"}]},
        ),
        ("POST", "/v1/tokenize", {"prompt": "Merhaba"}),
        ("POST", "/v1/detokenize", {"tokens": [1, 2]}),
        ("POST", "/tokenize", {"prompt": "Merhaba"}),
        ("GET", "/tokenizer_info", None),
    ],
)
def test_generation_routes_name_the_classify_route(client, method, route, body):
    err = assert_openai_error(client.request(method, route, json=body), 400)
    assert err["message"].startswith(f"'{CLASSIFIER}' is a classifier: use POST /v1/classify")
    assert err["code"] == "model_is_classifier"


def test_the_openai_client_gets_a_bad_request_error(client):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    with pytest.raises(openai.BadRequestError, match="is a classifier: use POST /v1/classify"):
        api.chat.completions.create(
            model=CLASSIFIER, messages=[{"role": "user", "content": "Merhaba"}]
        )


# ---- other servers and states ----


def test_a_language_model_server_refuses_classify(make_engine, checkpoints):
    state = ServerState(model_name=LM, checkpoint=str(checkpoints["lm"]))
    state.attach(make_engine(max_model_len=64))
    with TestClient(create_app(state)) as c:
        err = assert_openai_error(c.post("/v1/classify", json={"input": "Merhaba"}), 400)
        assert err["code"] == "model_not_classifier"
        assert f"{checkpoints['lm']} is a causal language model, not a classifier" in err["message"]
        assert "ismail finetune --task classify" in err["message"]


def test_503_while_loading_and_draining(checkpoints):
    state = ServerState(model_name=CLASSIFIER, is_classifier=True)
    with TestClient(create_app(state)) as c:
        assert assert_openai_error(c.post("/v1/classify", json={"input": "a"}), 503)["code"] == (
            "loading"
        )
        # the kind of model is known before it loads: generation routes still say why not
        r = c.post("/v1/completions", json={"model": CLASSIFIER, "prompt": "a"})
        assert assert_openai_error(r, 400)["code"] == "model_is_classifier"
    state = classifier_state(checkpoints["classifier"], device="cpu")
    state.classifier.stop_accepting()
    with TestClient(create_app(state)) as c:
        assert assert_openai_error(c.post("/v1/classify", json={"input": "a"}), 503)["code"] == (
            "draining"
        )
    assert state.classifier.wait_idle(1.0)
    state.classifier.shutdown()


def test_more_texts_than_may_wait_get_busy(reference):
    """A request is refused while the texts accepted before it fill --max-waiting."""
    release = threading.Event()

    class Slow:
        tokenizer, max_len, labels = reference.tokenizer, reference.max_len, reference.labels

        def predict(self, texts, batch_size=32):
            release.wait(10)
            return reference.predict(texts, batch_size)

    runner = ClassifierRunner(Slow(), batch_size=2, max_waiting=3)

    async def scenario():
        first = asyncio.ensure_future(runner.classify(TEXTS[:2]))
        await asyncio.sleep(0.05)
        assert runner.pending == 2
        with pytest.raises(ClassifierBusyError, match=r"at most 3 \(--max-waiting\)"):
            await runner.classify(TEXTS[:2])
        release.set()
        return await first

    result = asyncio.run(scenario())
    assert [p.label for p in result.predictions] == [p.label for p in reference.predict(TEXTS[:2])]
    assert runner.pending == 0 and runner.wait_idle(1.0)
    runner.shutdown()


def test_load_options_and_start_up_message(checkpoints, reference):
    state = classifier_state(checkpoints["classifier"], max_model_len=8, max_batch=2)
    runner = state.classifier
    assert runner.max_len == 8 and runner.batch_size == 2 and state.max_model_len == 8
    message = describe_classifier(runner, ServeConfig(str(checkpoints["classifier"])))
    assert "serving the classifier" in message and "3 labels: ekonomi, hava, spor" in message
    assert "texts cut to 8 tokens, 2 per forward pass" in message
    assert "POST http://127.0.0.1:8000/v1/classify" in message
    runner.shutdown()
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        load_classifier(ServeConfig(str(checkpoints["classifier"]), max_model_len=65), None)


@pytest.mark.parametrize("flag", [["--quantize", "fp8"], ["--kv-cache-memory", "10"]])
def test_cli_refuses_language_model_flags_for_a_classifier(checkpoints, capsys, flag):
    assert main([str(checkpoints["classifier"]), "--device", "cpu", *flag]) == 2
    err = capsys.readouterr().err
    assert "is a text classifier" in err and f"{flag[0]} is for language models" in err


# ---- the real command ----


@pytest.mark.slow
def test_ismail_serve_command_serves_a_classifier(checkpoints, reference, tmp_path):
    """`ismail-serve CKPT` in a process of its own: loads the classifier, answers
    /v1/classify as predict does and the openai client's chat with a 400, drains on SIGTERM."""
    openai = pytest.importorskip("openai")
    port, log = free_port(), tmp_path / "serve.log"
    args = [str(checkpoints["classifier"]), "--port", str(port), "--device", "cpu"]
    args += ["--dtype", "float32"]  # as TextClassifier.predict loads it (auto: bf16 on some CPUs)
    proc = start_serve([*args, "--max-batch", "2"], port=port, log=log)
    base = base_url(port)
    try:
        r = httpx.post(f"{base}/v1/classify", json={"input": TEXTS}, timeout=30)
        assert r.status_code == 200, r.text
        assert_same(r.json()["data"], reference.predict(TEXTS))
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="is a classifier: use POST /v1/classify"):
            api.chat.completions.create(
                model=CLASSIFIER, messages=[{"role": "user", "content": "Merhaba"}]
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "serving the classifier 'tiny-classifier'" in log.read_text()
