"""The chat page, tokenizer playground and router view in headless Chromium against a real
ismail-serve.

A tiny randomly initialised model is saved as a checkpoint and served by the `ismail-serve`
command with an API key; Playwright drives Debian's `chromium` (never a downloaded browser).
Screenshots land in test-artifacts/ at the repository root.

The model's output rows for its stop tokens (<|end|>, </s>) are zeroed, so with temperature 0
(greedy) it never ends a reply early: replies run to max_tokens, which makes them long enough
to press Stop in the middle of one and makes a reply reproducible through the plain API.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py (see its docstring)
from _browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT  # noqa: E402
from _serve import base_url, free_port, start_serve, stop_serve  # noqa: E402

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

API_KEY = "sk-apps-test-key"
MAX_SEQ_LEN = 2048
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "Kitaplarımızdan birini okuyabilir misiniz? Güzel bir gün.",
    "Arkadaşlar, bu gece burada sizleri toplamaktan maksadım şudur.",
    "Türkiye Cumhuriyeti'nin temeli kültürdür; İstanbul'da ve Ankara'da okullar açıldı.",
    "Çocuklar öğretmenlerine çiçek getirdiler, ığdır ve şırnak'tan gelen öğrenciler de vardı.",
    "Hayatta en hakiki mürşit ilimdir, fendir. Ne mutlu Türküm diyene!",
]

LEXICON = ["kitap", "oku", "gün", "güzel", "bir", "çocuk", "öğretmen", "okul", "gece", "kültür"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]


# ---------------------------------------------------------------- server on a tiny checkpoint


def _tokenizers(directory: Path):
    """A small tr-tokenizer (roots, suffixes, BPE) and a plain BPE of the same size.

    Both are trained on a few Turkish sentences; the plain BPE (a Hugging Face tokenizer.json)
    is what the playground shows side by side with the model's tokenizer.
    """
    import tr_tokenizer
    from ismail_core.tokenizer import load_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tr = tr_tokenizer.train(CORPUS * 4, vocab_size=1024, lexicon=LEXICON)
    tr.save(directory / "tr")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tr.vocab_size,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    bpe.save(str(directory / "plain-bpe.json"))
    return load_tokenizer(directory / "tr"), directory / "plain-bpe.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint directory of a tiny random model, plain BPE tokenizer.json to compare)."""
    import torch
    from ismail_core import ModelConfig, Transformer
    from ismail_core.checkpoint import save_checkpoint

    work = tmp_path_factory.mktemp("apps-ckpt")
    tok, plain_bpe = _tokenizers(work)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(
        "tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=MAX_SEQ_LEN,
        dim=64,
        n_layers=2,
        inter_dim=128,
        moe_inter_dim=64,
        tie_embeddings=False,
    )
    model = Transformer(cfg)
    with torch.no_grad():
        for stop_id in (tok.token_to_id("<|end|>"), tok.eos_id):
            model.head.weight[stop_id] = 0.0
    return save_checkpoint(work / "tiny-ismail", model, tok), plain_bpe


@pytest.fixture(scope="module")
def server(
    checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """`ismail-serve` on the tiny checkpoint; yields its URL, model name and log file."""
    ckpt, plain_bpe = checkpoint
    port = free_port()
    base = base_url(port)
    log = tmp_path_factory.mktemp("apps-serve") / "serve.log"
    args = [
        str(ckpt),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--device",
        "cpu",
        "--max-batch",
        "4",
        "--compare-tokenizer",
        str(plain_bpe),
    ]
    proc = start_serve(args, port=port, log=log, cwd=ROOT, poll_s=0.25)
    try:
        models = httpx.get(f"{base}/v1/models", headers=_auth(), timeout=10).json()
        yield {"base": base, "model": models["data"][0]["id"], "log": log}
    finally:
        stop_serve(proc)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# ---------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, server) -> Iterator:
    """Open a page of the server in a fresh browser context; fails on any JavaScript error."""
    contexts, errors = [], []

    def open_(path: str, viewport: dict = DESKTOP, api_key: str | None = API_KEY):
        context = browser.new_context(viewport=viewport, locale="tr-TR")
        if api_key is not None:  # as if the user had typed it earlier (kept in localStorage)
            context.add_init_script(f"localStorage.setItem('ismail.apiKey', {json.dumps(api_key)})")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server["base"] + path)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _wait_for_model(page) -> None:
    page.wait_for_selector("#server-status .dot.ok")


def _set_sampling(page, *, temperature: str, max_tokens: str) -> None:
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def test_startup_message_links_the_pages(server) -> None:
    # The message is printed right after the model is attached; allow it a moment to flush.
    deadline = time.monotonic() + 10
    while "/tokenizer" not in server["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = server["log"].read_text().splitlines()
    pages = [line for line in lines if f"{server['base']}/tokenizer" in line]
    assert pages, "\n".join(lines)
    assert f"{server['base']}/ " in pages[0] or pages[0].endswith(f"{server['base']}/")


# ---------------------------------------------------------------- chat page


def test_chat_streams_a_reply_equal_to_the_plain_api(open_page, server) -> None:
    page = open_page("/")
    _wait_for_model(page)
    assert server["model"] in page.text_content("#server-status")
    _set_sampling(page, temperature="0", max_tokens="40")
    page.fill("#system-prompt", "Kısa ve öz cevap ver.")
    # Count the reply's text updates: a streamed reply grows in several steps. Count mutation
    # records, not observer callbacks: events that arrive in one network chunk are rendered in
    # one task, so their mutations reach a single callback.
    page.evaluate(
        """() => {
          window.__updates = 0;
          const options = {subtree: true, characterData: true, childList: true};
          new MutationObserver((records) => window.__updates += records.length).observe(
            document.getElementById('messages'), options);
        }"""
    )
    question = "Merhaba! İstanbul'da hava nasıl? Çok güzel mi, ılık mı?"
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant .stats:not(:empty)", timeout=60_000)
    _screenshot(page, "chat-desktop")

    assert page.text_content(".message.user .content") == question
    reply = page.text_content(".message.assistant .content")
    stats = page.text_content(".message.assistant .stats")
    assert re.fullmatch(r"40 tokens · [\d.]+ tok/s · first token \d+ ms · hit max tokens", stats), (
        stats
    )
    assert page.evaluate("window.__updates") > 5, "the reply did not arrive in pieces"

    # Greedy decoding is reproducible: the streamed, browser-decoded text must equal the
    # server's non-streamed answer to the same request, character for character.
    body = {
        "model": server["model"],
        "messages": [
            {"role": "system", "content": "Kısa ve öz cevap ver."},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "top_p": 0.95,
        "top_k": 50,
        "max_tokens": 40,
    }
    plain = httpx.post(
        f"{server['base']}/v1/chat/completions", json=body, headers=_auth(), timeout=60
    ).json()
    assert reply == plain["choices"][0]["message"]["content"]


# Clicks Stop in the page as soon as the streaming reply shows text, and resolves to whether Stop
# was shown and Send hidden then. In the page, not from the test: the tiny model's whole reply
# (64 tokens) can stream in less time than a round trip from the test to the browser.
_STOP_AT_FIRST_TEXT = """() => { window.stoppedAtFirstText = new Promise(resolve => {
  const observer = new MutationObserver(() => {
    const content = document.querySelector(".message.assistant.streaming .content");
    if (!content || !content.textContent) return;
    observer.disconnect();
    const stop = document.getElementById("stop"), send = document.getElementById("send");
    const busy = !stop.hidden && send.hidden;
    stop.click();
    resolve(busy);
  });
  observer.observe(document.body, { subtree: true, childList: true, characterData: true });
}); }"""


def _ignoring_eos(route, request) -> None:
    """Send the page's chat request with ignore_eos: the tiny model may end a reply after one
    token (greedy picks can flip between a cached and an uncached prefix), so nothing to stop."""
    route.continue_(post_data=json.dumps(json.loads(request.post_data) | {"ignore_eos": True}))


def test_stop_button_cancels_the_reply(open_page, server) -> None:
    page = open_page("/")
    page.route("**/v1/chat/completions", _ignoring_eos)
    _wait_for_model(page)
    _set_sampling(page, temperature="0", max_tokens=str(MAX_SEQ_LEN - 64))
    page.fill("#prompt", "Uzun bir hikâye anlat.")
    page.evaluate(_STOP_AT_FIRST_TEXT)
    page.press("#prompt", "Enter")
    assert page.evaluate("() => window.stoppedAtFirstText")  # Stop shown, Send hidden
    page.wait_for_selector("#send:not([hidden])")
    stats = page.text_content(".message.assistant .stats")
    assert stats.endswith("stopped"), stats
    shown = int(re.match(r"~?(\d+) tokens?\b", stats).group(1))  # "1 token" when stopped early
    assert 0 < shown < MAX_SEQ_LEN - 64
    _screenshot(page, "chat-stopped")

    # The conversation goes on after a stop: the next reply streams to its end.
    _set_sampling(page, temperature="0", max_tokens="8")
    page.fill("#prompt", "Peki, kısaca?")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant >> nth=1 >> .stats:text-matches('8 tokens')")


def test_sse_reader_joins_characters_split_across_network_chunks(open_page) -> None:
    # Network chunks can end inside a UTF-8 character or between "\r" and "\n". Feed the
    # page's SSE reader a stream cut into single bytes and check every event arrives whole.
    page = open_page("/")
    events = ["Çağrı ışığı söndü, İzmir'e gidiyoruz.", '{"ğ": "ş\\nü"}', "iki\nsatır", "[DONE]"]
    wire = (
        "".join(f"data: {e}\r\n\r\n" for e in events[:2])
        + ": a comment\r\ndata: iki\r\ndata: satır\r\n\r\n"  # one event, two data lines
        + f"data:{events[3]}\n\n"
    )
    received = page.evaluate(
        """async (wire) => {
          const bytes = new TextEncoder().encode(wire);
          const body = new ReadableStream({
            start(controller) {
              for (const b of bytes) controller.enqueue(new Uint8Array([b]));
              controller.close();
            },
          });
          const got = [];
          await Ismail.readSSE(new Response(body), (data) => got.push(data));
          return got;
        }""",
        wire,
    )
    assert received == events


def test_server_errors_are_shown_in_plain_words(open_page, server) -> None:
    page = open_page("/", api_key=None)
    # Without the key the status badge and a send both say what to do.
    page.wait_for_selector("#server-status .dot.bad")
    assert "API key" in page.text_content("#server-status")
    page.fill("#prompt", "Merhaba")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".error")
    assert "needs a valid API key" in page.text_content(".error")

    # A key HTTP cannot carry is refused in words, not with a browser exception.
    page.fill("#api-key", "anahtarım")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector(".error >> nth=1")
    assert "printable ASCII" in page.text_content(".error >> nth=1")

    # With the key, a request beyond the context gets the server's own explanation.
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    _wait_for_model(page)
    _set_sampling(page, temperature="1", max_tokens=str(MAX_SEQ_LEN * 2))
    page.fill("#prompt", "Çok uzun bir cevap yaz.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".error >> nth=2")
    text = page.text_content(".error >> nth=2")
    assert text.startswith("The server rejected the request (HTTP 400).")
    assert f"maximum context length is {MAX_SEQ_LEN} tokens" in text
    _screenshot(page, "chat-errors")


# ---------------------------------------------------------------- tokenizer playground

SAMPLE = "Kitaplarımızdan birini okuyabilir misiniz?\nİstanbul'da güzel bir gün."


WHITESPACE_SIGNS = {" ": "␣", "\n": "↵"}


def _ask(server: dict, endpoint: str, text: str) -> dict:
    """The server's answer to POST /v1/`endpoint` (tokenize, routing) for `text`, as the page
    asks it."""
    response = httpx.post(
        f"{server['base']}/v1/{endpoint}",
        json={"model": server["model"], "prompt": text},
        headers=_auth(),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _check_column(page, column: str, result: dict, text: str) -> list:
    """The column shows exactly the server's tokens, kinds and counts for `text`."""
    count = result["count"]
    page.wait_for_selector(f"{column} [data-count='tokens']:text-is('{count}')")
    tokens = page.query_selector_all(f"{column} .tok")
    assert [int(t.get_attribute("data-id")) for t in tokens] == result["tokens"]
    assert [t.get_attribute("data-kind") for t in tokens] == (result["kinds"] or [""] * count)
    words = len(text.split())
    assert page.text_content(f"{column} [data-count='tokens/word']") == f"{count / words:.2f}"
    assert page.text_content(f"{column} [data-count='chars/token']") == f"{len(text) / count:.2f}"
    return tokens


def test_playground_shows_tokens_by_kind_with_ids_and_counts(open_page, server) -> None:
    page = open_page("/tokenizer")
    page.fill("#text", SAMPLE)
    expected = _ask(server, "tokenize", SAMPLE)
    kinds = expected["kinds"]
    assert kinds and {"root", "suffix", "case", "space"} <= set(kinds), kinds
    tokens = _check_column(page, "#main-column", expected, SAMPLE)

    # Each token is drawn as the text it covers (whitespace as a sign, a case marker as ⇧),
    # and together they spell the input.
    assert "".join(t.get_attribute("data-text") for t in tokens) == SAMPLE
    for token, (start, end), kind in zip(tokens, expected["offsets"], kinds):
        label = token.query_selector(".text").text_content()
        covered = SAMPLE[start:end]
        if kind == "case":
            assert label == "⇧"
        elif covered.isspace():
            assert label == "".join(WHITESPACE_SIGNS[c] for c in covered)
        elif covered:
            assert label == covered

    # Coloured by kind: one background colour per kind, a different one for each kind.
    colours: dict[str, set[str]] = {}
    for token, kind in zip(tokens, kinds):
        colour = token.evaluate("el => getComputedStyle(el).backgroundColor")
        colours.setdefault(kind, set()).add(colour)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({c.pop() for c in colours.values()}) == len(colours), colours
    for kind in set(kinds):
        shown = "whitespace" if kind == "space" else kind
        assert page.text_content(f"#legend .kind-{shown}").endswith(f" {kinds.count(kind)}")

    # IDs on hover (and on tap/focus), and all at once with "Show IDs".
    tokens[3].hover()
    assert f"id {expected['tokens'][3]} " in page.text_content("#inspector")
    assert tokens[3].get_attribute("title").startswith(f"id {expected['tokens'][3]} ")
    page.check("#show-ids")
    assert tokens[3].query_selector(".id").is_visible()

    # Side by side: the plain BPE configured with --compare-tokenizer.
    comparison = expected["comparison"]
    assert comparison is not None and comparison["count"] > 0
    assert page.is_visible("#compare-column")
    _check_column(page, "#compare-column", comparison, SAMPLE)
    _screenshot(page, "tokenizer-desktop")

    # Live: editing the text re-tokenizes it, no button needed.
    page.fill("#text", "Güzel bir gün")
    _check_column(page, "#main-column", _ask(server, "tokenize", "Güzel bir gün"), "Güzel bir gün")


@pytest.mark.parametrize("path", ["/", "/tokenizer", "/router"])
def test_pages_fit_a_phone_screen(open_page, path: str) -> None:
    page = open_page(path, viewport=PHONE)
    _wait_for_model(page)
    if path == "/tokenizer":
        page.wait_for_selector("#main-column .tok")
    elif path == "/router":
        page.wait_for_selector("#grid .cell")  # the grid scrolls inside its card
    else:
        page.click("#settings-toggle")
        assert page.is_visible("#temperature")
        page.fill("#max-tokens", "12")
        page.fill("#prompt", "Günaydın! Bugün ne yapalım?")
        page.click("#send")  # sending folds the settings away to make room for the reply
        page.wait_for_selector(".message.assistant .stats:text-matches('12 tokens')")
        assert not page.is_visible("#temperature")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"
    names = {"/": "phone-chat", "/tokenizer": "phone-tokenizer", "/router": "phone-router"}
    _screenshot(page, names[path])


# ---------------------------------------------------------------- router view


def _check_grid(page, result: dict) -> list:
    """The grid shows the server's experts for every token and MoE layer, and its load bars."""
    n_tokens, layers = len(result["tokens"]), result["layers"]
    page.wait_for_function(
        "n => document.querySelectorAll('#grid .cell').length === n", arg=n_tokens * len(layers)
    )
    heads = page.query_selector_all("#grid .tok-head")
    assert len(heads) == n_tokens
    cells = page.query_selector_all("#grid .cell")
    for i, cell in enumerate(cells):
        layer, token = layers[i // n_tokens], i % n_tokens
        assert cell.get_attribute("data-layer") == str(layer["layer"])
        assert cell.get_attribute("data-experts") == ",".join(map(str, layer["experts"][token]))
    for layer in layers:
        counts = page.query_selector_all(f"#loads [data-layer='{layer['layer']}'] .load-count")
        assert [int(c.text_content()) for c in counts] == layer["load"]
    return cells


def test_router_shows_each_tokens_experts_per_layer(open_page, server) -> None:
    page = open_page("/tokenizer")
    page.click("nav a[href='router']")  # linked from the other pages
    page.wait_for_url("**/router")
    _wait_for_model(page)
    page.fill("#text", SAMPLE)
    result = _ask(server, "routing", SAMPLE)
    assert result["moe"] and result["layers"], result
    cells = _check_grid(page, result)

    # Each cell holds one bar per routed expert, coloured by expert (the same expert has the
    # same colour everywhere), tallest for the largest combine weight.
    colours: dict[str, set[str]] = {}
    for bar in page.query_selector_all("#grid .cell .bar"):
        colour = bar.evaluate("el => getComputedStyle(el).backgroundColor")
        colours.setdefault(bar.text_content(), set()).add(colour)
    assert all(len(c) == 1 for c in colours.values()) and len(colours) > 1, colours
    layer, token = result["layers"][0], 3
    heights = cells[token].evaluate(
        "el => [...el.querySelectorAll('.bar')].map(b => b.getBoundingClientRect().height)"
    )
    weights = layer["weights"][token]
    assert heights.index(max(heights)) == weights.index(max(weights))

    # Hover: the token's experts with their weights.
    cells[token].hover()
    shown = page.text_content("#inspector")
    for expert, weight in zip(layer["experts"][token], weights):
        assert f"expert {expert}: {weight:.3f}" in shown
    # Column heads: each token's text decoded in context (a suffix as it is spelled here).
    texts = [h.text_content() for h in page.query_selector_all("#grid .tok-head")]
    for head, text in zip(texts, result["token_texts"], strict=True):
        if text.strip():
            assert head == text.strip()
    _screenshot(page, "router-desktop")

    # Generate: the model continues the text and the grid follows the longer text.
    page.click("#generate")
    page.wait_for_function(
        "n => document.querySelectorAll('#grid .tok-head').length > n", arg=len(texts)
    )
    longer = page.input_value("#text")
    assert longer.startswith(SAMPLE) and len(longer) > len(SAMPLE)
    _check_grid(page, _ask(server, "routing", longer))


def test_router_tells_a_dense_model_apart(open_page) -> None:
    # A dense model's answer, as ismail-serve gives it (tested in packages/ismail-serve/tests).
    dense = {
        "object": "routing", "model": "dense", "moe": False, "n_layers": 2, "n_experts": 0,
        "top_k": 0, "tokens": [1, 2], "token_texts": ["Merhaba", "!"], "kinds": ["bpe", "bpe"],
        "layers": [],
        "message": "'dense' is a dense model: every token goes through the same feed-forward "
        "layers, so there is no routing to show.",
    }  # fmt: skip
    page = open_page("/router")
    page.route(
        "**/v1/routing",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(dense)
        ),
    )
    page.fill("#text", "Merhaba!")
    page.wait_for_selector("#dense-message:has-text('dense model')")
    assert not page.is_visible("#routing-card") and not page.is_visible("#load-card")
    assert page.query_selector_all("#grid .cell") == []
    _screenshot(page, "router-dense")
