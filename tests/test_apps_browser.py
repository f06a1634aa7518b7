"""The chat page and tokenizer playground in headless Chromium against a real ismail-serve.

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
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "sk-apps-test-key"
MAX_SEQ_LEN = 2048
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "Arkadaşlar, bu gece burada sizleri toplamaktan maksadım şudur.",
    "Türkiye Cumhuriyeti'nin temeli kültürdür; İstanbul'da ve Ankara'da okullar açıldı.",
    "Çocuklar öğretmenlerine çiçek getirdiler, ığdır ve şırnak'tan gelen öğrenciler de vardı.",
    "Hayatta en hakiki mürşit ilimdir, fendir. Ne mutlu Türküm diyene!",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]


# ---------------------------------------------------------------- server on a tiny checkpoint


def _tokenizer(directory: Path):
    """A small byte-level BPE with the chat role tokens, trained on a few Turkish sentences."""
    from ismail_core.tokenizer import load_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>", *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(directory / "tokenizer.json"))
    return load_tokenizer(directory / "tokenizer.json")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from ismail_core import ModelConfig, Transformer
    from ismail_core.checkpoint import save_checkpoint

    work = tmp_path_factory.mktemp("apps-ckpt")
    tok = _tokenizer(work)
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
        for token in ("<|end|>", "</s>"):
            model.head.weight[tok.token_to_id(token)] = 0.0
    return save_checkpoint(work / "tiny-ismail", model, tok)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`ismail-serve` on the tiny checkpoint; yields its URL, key, model name and log file."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("apps-serve") / "serve.log"
    command = [
        str(Path(sys.executable).with_name("ismail-serve")),
        str(checkpoint),
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
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"ismail-serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"ismail-serve never got ready:\n{log.read_text()}"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        models = httpx.get(f"{base}/v1/models", headers=_auth(), timeout=10).json()
        yield {"base": base, "model": models["data"][0]["id"], "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


# ---------------------------------------------------------------- chat page


def test_chat_streams_a_reply_equal_to_the_plain_api(open_page, server) -> None:
    page = open_page("/")
    _wait_for_model(page)
    assert server["model"] in page.text_content("#server-status")
    _set_sampling(page, temperature="0", max_tokens="40")
    page.fill("#system-prompt", "Kısa ve öz cevap ver.")
    # Count the reply's text updates: a streamed reply grows in several steps.
    page.evaluate(
        """() => {
          window.__updates = 0;
          const options = {subtree: true, characterData: true, childList: true};
          new MutationObserver(() => window.__updates++).observe(
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


def test_stop_button_cancels_the_reply(open_page, server) -> None:
    page = open_page("/")
    _wait_for_model(page)
    _set_sampling(page, temperature="0", max_tokens=str(MAX_SEQ_LEN - 64))
    page.fill("#prompt", "Uzun bir hikâye anlat.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant.streaming .content:not(:empty)", timeout=60_000)
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])")
    stats = page.text_content(".message.assistant .stats")
    assert stats.endswith("stopped"), stats
    shown = int(re.match(r"~?(\d+) tokens", stats).group(1))
    assert 0 < shown < MAX_SEQ_LEN - 64
    _screenshot(page, "chat-stopped")

    # The conversation goes on after a stop: the next reply streams to its end.
    _set_sampling(page, temperature="0", max_tokens="8")
    page.fill("#prompt", "Peki, kısaca?")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant >> nth=1 >> .stats:text-matches('8 tokens')")


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


def test_playground_shows_each_token_with_its_id_kind_and_counts(open_page, server) -> None:
    page = open_page("/tokenizer")
    page.fill("#text", SAMPLE)
    expected = httpx.post(
        f"{server['base']}/v1/tokenize",
        json={"model": server["model"], "prompt": SAMPLE},
        headers=_auth(),
        timeout=30,
    ).json()
    count = expected["count"]
    page.wait_for_selector(f"#main-column [data-count='tokens']:text-is('{count}')")
    tokens = page.query_selector_all("#main-column .tok")
    assert [int(t.get_attribute("data-id")) for t in tokens] == expected["tokens"]
    kinds = expected["kinds"] or ["other"] * count
    assert [t.get_attribute("data-kind") for t in tokens] == kinds
    for token in tokens:  # coloured: every token box has a background of its own kind
        colour = token.evaluate("el => getComputedStyle(el).backgroundColor")
        assert colour not in ("rgba(0, 0, 0, 0)", "transparent")
    if expected["kinds"] is None:
        assert "does not label token kinds" in page.text_content("#legend")
    else:
        for kind in set(kinds):
            assert page.text_content(f"#legend .kind-{kind}").endswith(f" {kinds.count(kind)}")
    # The visible text of the tokens spells the input (whitespace drawn as signs).
    drawn = "".join(t.query_selector("span").text_content() for t in tokens)
    assert drawn.replace("␣", " ").replace("↵", "\n") == SAMPLE

    words = 8  # Kitaplarımızdan birini okuyabilir misiniz İstanbul'da güzel bir gün
    assert page.text_content("#main-column [data-count='tokens/word']") == f"{count / words:.2f}"
    assert page.text_content("#main-column [data-count='chars/token']") == (
        f"{len(SAMPLE) / count:.2f}"
    )
    tokens[3].hover()
    assert f"id {expected['tokens'][3]}" in page.text_content("#inspector")
    page.check("#show-ids")
    assert tokens[3].query_selector(".id").is_visible()
    _screenshot(page, "tokenizer-desktop")

    # Live: editing the text re-tokenizes without a button.
    page.fill("#text", "Merhaba")
    page.wait_for_function(
        "document.querySelectorAll('#main-column .tok').length > 0 && "
        "[...document.querySelectorAll('#main-column .tok span:first-child')]"
        ".map(s => s.textContent).join('') === 'Merhaba'"
    )


@pytest.mark.parametrize("path", ["/", "/tokenizer"])
def test_pages_fit_a_phone_screen(open_page, path: str) -> None:
    page = open_page(path, viewport=PHONE)
    _wait_for_model(page)
    if path == "/tokenizer":
        page.wait_for_selector("#main-column .tok")
    else:
        page.click("#settings-toggle")
        assert page.is_visible("#temperature")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"
    _screenshot(page, {"/": "phone-chat", "/tokenizer": "phone-tokenizer"}[path])
