"""Fine-tune a tiny model into a chat model and talk to it, as a user does (issue criterion:
"`uv run ismail-serve runs/tiny-chat`: the chat page and the openai client hold a conversation
that ends turns properly").

A tiny random base model with the shipped tr-tokenizer is saved at runs/tiny, with the tiny
preset's 256-token context. `ismail finetune` (the real command, in a subprocess) trains it on
a small chat JSONL written here until its replies end their turn; `ismail-serve runs/tiny-chat`
serves the result. The official `openai` client and the chat page in headless Chromium (Debian's
`chromium` through Playwright) then hold two-turn conversations with greedy decoding and a token
budget far above the replies, so a turn that ends does so because the model emitted its
end-of-turn token, not because it ran out of tokens. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py (see its docstring)
from _browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from _serve import base_url, free_port, start_serve, stop_serve  # noqa: E402
from _tiny import tiny_tr_checkpoint  # noqa: E402

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

API_KEY = "sk-finetune-serve-test"
MAX_SEQ_LEN = 256  # the tiny preset's context, which `ismail train` gives runs/tiny
MAX_TOKENS = 100  # far above the replies (a few tokens each): only a model that stops ends early
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Short Turkish requests (several wordings each) and the one short reply each should get: a
# pattern the tiny model learns in a few dozen steps, ending every reply with <|end|>.
INTENTS = [
    (["Merhaba", "Selam", "Merhaba!", "Selam, merhaba"], "Merhaba! Nasıl yardımcı olabilirim?"),
    (["Nasılsın?", "Nasılsınız?", "İyi misin?"], "İyiyim, teşekkürler."),
    (["Teşekkürler", "Teşekkür ederim", "Sağ ol"], "Rica ederim."),
    (["Bugün hava nasıl?", "Hava nasıl?", "Dışarıda hava güzel mi?"], "Güneşli ve ılık."),
    (["Türkiye'nin başkenti neresi?", "Başkent neresi?"], "Ankara."),
    (["Adın ne?", "Sen kimsin?"], "Benim adım İsmail."),
    (["Hoşça kal", "Görüşürüz", "İyi geceler"], "Görüşmek üzere!"),
    (["Bir kitap öner", "Ne okuyayım?"], "Çalıkuşu'nu okuyabilirsin."),
]
SYSTEM_PROMPTS = ["Kısa cevap ver.", "Sen yardımsever bir asistansın."]
CONVERSATIONS = 80
# The conversation both clients hold: two requests from the training intents.
TURNS = ["Merhaba", "Türkiye'nin başkenti neresi?"]

FINETUNE_FLAGS = {
    "train.steps": 60,
    "train.batch_size": 16,
    "train.device": "cpu",
    "train.precision": "fp32",
    "train.threads": 2,
    "optim.lr": 3e-3,
    "optim.warmup_steps": 5,
    # A fifth of the conversations held out, so the share of replies that end their turn is
    # measured on ~16 generated replies rather than the 4 of the default 5%.
    "finetune.val_fraction": 0.2,
    # Evaluate and save only at the start and the end: each costs seconds on a CPU.
    "eval.interval": 0,
    "checkpoint.interval": 0,
    "log.progress": "false",
}


def chat_jsonl(path: Path) -> Path:
    """Write CONVERSATIONS chats in the `{"messages": [...]}` format: one or two turns, every
    fourth with a system message."""
    rng = random.Random(0)

    def turn() -> list[dict[str, str]]:
        requests, reply = rng.choice(INTENTS)
        return [
            {"role": "user", "content": rng.choice(requests)},
            {"role": "assistant", "content": reply},
        ]

    with path.open("w", encoding="utf-8") as out:
        for i in range(CONVERSATIONS):
            messages = []
            if i % 4 == 0:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            messages += turn()
            if i % 3 == 0:
                messages += turn()
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------- fine-tune, then serve


@dataclass
class FinetuneRun:
    work: Path  # the user's working directory (runs/ and chat.jsonl are in it)
    run_dir: str  # as the summary names it: the argument for ismail-serve


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> FinetuneRun:
    """runs/tiny (a random base) fine-tuned into runs/tiny-chat by the `ismail` command."""
    work = tmp_path_factory.mktemp("finetune-serve")
    tiny_tr_checkpoint(work / "runs" / "tiny", max_seq_len=MAX_SEQ_LEN)
    chat_jsonl(work / "chat.jsonl")
    flags = [item for key, value in FINETUNE_FLAGS.items() for item in (f"--{key}", str(value))]
    command = [sys.executable, "-m", "ismail_core", "finetune", "--base", "runs/tiny"]
    command += ["--data", "chat.jsonl", "--run.out_dir", "runs/tiny-chat", *flags]
    # The fine-tune runs alone, so it may use both cores; more threads would only contend.
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"ismail finetune failed:\n{output}"

    # The summary's promise: the replies learnt to end their turn.
    ended = re.search(r"replies that end their turn ([\d.]+)% -> ([\d.]+)%", result.stdout)
    assert ended, f"no end-of-turn share in the summary:\n{output}"
    assert float(ended.group(2)) >= 95.0, f"replies still run on after fine-tuning:\n{output}"
    rows = [json.loads(line) for line in (work / "runs/tiny-chat/metrics.jsonl").open()]
    final = [row for row in rows if row["kind"] == "eval"][-1]
    assert final["step"] == FINETUNE_FLAGS["train.steps"] and final["ended"] >= 0.95, final

    serve = re.search(r"^serve it:\s+uv run ismail-serve (\S+)$", result.stdout, re.M)
    assert serve and serve.group(1) == "runs/tiny-chat", output
    return FinetuneRun(work, serve.group(1))


@pytest.fixture(scope="module")
def server(finetuned: FinetuneRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`ismail-serve runs/tiny-chat` (the command the summary printed), with an API key."""
    port = free_port()
    log = tmp_path_factory.mktemp("finetune-serve-log") / "serve.log"
    args = [finetuned.run_dir, "--port", str(port), "--device", "cpu", "--api-key", API_KEY]
    # One intra-op thread: requests are tiny, and the browser shares the two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = start_serve(args, port=port, log=log, cwd=finetuned.work, env=env, poll_s=0.25)
    try:
        client = openai.OpenAI(base_url=f"{base_url(port)}/v1", api_key=API_KEY, max_retries=0)
        model = client.models.list().data[0].id
        yield {"base": base_url(port), "model": model, "client": client, "log": log}
    finally:
        stop_serve(proc)


def _api_reply(server: dict, messages: list[dict[str, str]]):
    """The non-streamed greedy reply to `messages`."""
    return server["client"].chat.completions.create(
        model=server["model"], messages=messages, temperature=0, max_tokens=MAX_TOKENS
    )


def _check_ended(content: str, finish_reason: str, completion_tokens: int) -> None:
    """A reply that ended its turn: stopped by the model, well inside the budget, with text and
    no chat marker leaking into it."""
    assert finish_reason == "stop", (finish_reason, content)
    assert 0 < completion_tokens < MAX_TOKENS, (completion_tokens, content)
    assert content.strip(), "the model ended its turn without saying anything"
    assert not any(marker in content for marker in CHAT_MARKERS), content


def test_the_served_model_is_the_finetuned_run(server) -> None:
    assert server["model"] == "tiny-chat"


def test_openai_client_holds_a_conversation_that_ends_turns(server) -> None:
    client, messages = server["client"], []
    for text in TURNS:
        messages.append({"role": "user", "content": text})
        reply = _api_reply(server, messages)
        choice = reply.choices[0]
        content = choice.message.content
        _check_ended(content, choice.finish_reason, reply.usage.completion_tokens)

        # Streamed, the same request gives the same reply in pieces, ended the same way.
        stream = client.chat.completions.create(
            model=server["model"],
            messages=messages,
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        # include_usage adds one last chunk with the usage and no choices.
        assert not chunks[-1].choices and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
        with_choices = [c for c in chunks if c.choices]
        assert with_choices[-1].choices[0].finish_reason == "stop"
        assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
        streamed = "".join(c.choices[0].delta.content or "" for c in with_choices)
        assert streamed == content

        messages.append({"role": "assistant", "content": content})


# ---------------------------------------------------------------- the chat page


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install -y chromium)")
    playwright_sync = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed"
    )
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_chat_page_holds_a_conversation_that_ends_turns(browser, server) -> None:
    """Two turns typed into the chat page, with the page's settings as a user finds them except
    for temperature 0 (so the replies can be compared with the API's): each reply completes on
    its own, without hitting the token limit, and equals the API's reply to the same chat."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="tr-TR")
    # As if the user had typed the key under Settings earlier (the page keeps it there).
    context.add_init_script(f"localStorage.setItem('ismail.apiKey', {json.dumps(API_KEY)})")
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server["base"] + "/")
        page.wait_for_selector("#server-status .dot.ok")
        page.fill("#temperature", "0")
        page_max_tokens = int(page.input_value("#max-tokens"))

        messages: list[dict[str, str]] = []
        for turn, text in enumerate(TURNS):
            page.fill("#prompt", text)
            page.press("#prompt", "Enter")
            # Done: the reply's stats are written (after its stream ended) and Send is back;
            # or the page showed an error instead, which fails the test at once.
            reply = page.locator(".message.assistant").nth(turn)
            done = reply.locator(".stats:not(:empty)").or_(page.locator(".error"))
            done.first.wait_for(timeout=60_000)
            shown_errors = page.locator(".error").all_text_contents()
            assert not shown_errors, f"the page showed errors: {shown_errors}"
            page.wait_for_selector("#send:not([hidden])")
            assert "streaming" not in (reply.get_attribute("class") or "")
            content = reply.locator(".content").text_content()
            stats = reply.locator(".stats").text_content()
            # "N tokens · ... tok/s · first token ... ms", plus "hit max tokens" had the reply
            # been cut at the budget rather than ended by the model.
            match = re.match(r"(\d+) tokens? · ", stats)
            assert match and "hit max tokens" not in stats and "stopped" not in stats, stats
            assert int(match.group(1)) < page_max_tokens, stats

            # The page sends temperature 0 with its own top-p/top-k, which greedy ignores: the
            # reply must be the API's, character for character, and end the same way.
            messages.append({"role": "user", "content": text})
            api = _api_reply(server, messages)
            _check_ended(content, api.choices[0].finish_reason, api.usage.completion_tokens)
            assert content == api.choices[0].message.content
            assert int(match.group(1)) == api.usage.completion_tokens
            messages.append({"role": "assistant", "content": content})

        assert page.locator(".message.user .content").all_text_contents() == TURNS
        assert page.locator(".message.assistant").count() == len(TURNS)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "finetune-chat.png"), full_page=True)
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
