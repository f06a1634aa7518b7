"""ismail-serve under load: scenarios measured side by side in one run, like vLLM's `bench serve`.

Every request streams (SSE) a fixed number of tokens (ignore_eos) from an `ismail-serve`
subprocess driven by an asyncio client at fixed concurrency. Measured per level: time to first
token, inter-token latency (per request: (last - first token time) / (tokens - 1)), end-to-end
latency, output tokens/s over the level's wall time, failed requests, and the most sequences
running at once (sampled from /metrics).

throughput  continuous batching at concurrency 1..64 against one-at-a-time serving (one
            sequence at a time, the rest queued); with --baseline-serve also that server
            (e.g. the whole-row KV cache design before issue 17) at concurrency 1 and 16
prefix      32 chat requests sharing a ~1,000-token system prompt, concurrency 8: prefix
            caching on against --no-enable-prefix-caching (time to first token)
capacity    mixed prompt lengths (most short, a few near the context limit) all at once, at one
            --kv-cache-memory: how many run at once, against --baseline-serve

    uv run python bench/serve.py                      # tiny preset, random weights, CPU
    uv run python bench/serve.py --scenario prefix capacity \
        --baseline-serve /tmp/old/.venv/bin/ismail-serve
    uv run python bench/serve.py --device cuda --preset ismail-512

(To build a baseline: `git worktree add /tmp/old <commit>` and `uv sync --all-packages` there.)
It also prints the KV-cache bytes per token of the model's attention against standard
multi-head attention of the same shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SCENARIOS = ("throughput", "prefix", "capacity")
PROMPTS = [
    "Kitaplarımızdan birini okudunuz mu? Bu akşam kütüphanede buluşalım.",
    "İstanbul'da güneşli bir gün; öğretmenler öğrencileriyle bahçede ders yaptı.",
    "Türkiye'nin en yüksek dağı Ağrı Dağı'dır ve doğu sınırına yakındır.",
    "Çocuklar parkta oynarken yaşlılar çay içip sohbet ediyordu.",
    "Yarınki toplantıda bütçe, takvim ve yeni projeler konuşulacak.",
    "Anneannemin bahçesinde domates, biber ve patlıcan yetişiyor.",
]


@dataclass
class RequestResult:
    ok: bool
    tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: float | None = None
    error: str = ""


@dataclass
class LevelResult:
    mode: str
    concurrency: int
    wall: float
    results: list[RequestResult] = field(default_factory=list)
    peak_running: int = 0

    @property
    def done(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    @property
    def output_tps(self) -> float:
        return sum(r.tokens for r in self.done) / self.wall


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(preset: str, max_seq_len: int, directory: Path) -> Path:
    """A randomly initialised model of `preset` with the shipped tr-tokenizer."""
    import torch
    from ismail_core import ModelConfig, Transformer
    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.tokenizer import load_tokenizer

    tok = load_tokenizer("tr")
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    return save_checkpoint(directory / f"random-{preset}", Transformer(cfg), tok)


def kv_bytes_per_token(checkpoint: Path) -> tuple[str, int, int]:
    """(attention kind, float32 cache bytes/token, the same for standard MHA of its shape)."""
    import torch
    from ismail_core.checkpoint import load_config
    from ismail_core.model.cache import new_cache

    cfg = load_config(checkpoint)
    # standard MHA: every head caches a key and a value of the model's head size
    head_dim = cfg.dim // cfg.n_heads if cfg.dim % cfg.n_heads == 0 else cfg.qk_head_dim
    mha = {"attention": "mha", "n_kv_heads": None, "head_dim": head_dim}
    mha_cfg = type(cfg).from_dict({**cfg.to_dict(), **mha})
    own = new_cache(cfg, 1, 1, dtype=torch.float32).bytes_per_token()
    return cfg.attention, own, new_cache(mha_cfg, 1, 1, dtype=torch.float32).bytes_per_token()


class Server:
    """An `ismail-serve` subprocess (`executable`: another build of it, e.g. a baseline)."""

    def __init__(
        self,
        checkpoint: Path,
        args: argparse.Namespace,
        log: Path,
        flags: list[str],
        executable: str | None = None,
    ):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            executable or str(Path(sys.executable).with_name("ismail-serve")),
            str(checkpoint),
            "--port", str(self.port),
            "--device", args.device,
            "--max-model-len", str(args.max_model_len),
            "--max-waiting", "1024",
            "--log-level", "warning",
            *flags,
        ]  # fmt: skip
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ismail-serve exited:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ismail-serve never got ready:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.model = httpx.get(f"{self.base}/v1/models").json()["data"][0]["id"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(client: httpx.AsyncClient, server: Server, body: dict) -> RequestResult:
    """Stream one request (a chat one when the body has messages); time its tokens."""
    chat = "messages" in body
    path = "/v1/chat/completions" if chat else "/v1/completions"
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", f"{server.base}{path}", json=body) as r:
            if r.status_code != 200:
                return RequestResult(False, error=f"HTTP {r.status_code}: {await r.aread()!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return RequestResult(False, error=event["error"]["message"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif event["choices"] and _text(event["choices"][0], chat):
                    last = time.perf_counter()
                    first = first or last
    except httpx.HTTPError as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if first is None:
        return RequestResult(False, error="no text streamed")
    itl = (last - first) / (tokens - 1) if tokens > 1 else None
    return RequestResult(True, tokens, first - start, end - start, itl)


def _text(choice: dict, chat: bool) -> str:
    return (choice.get("delta", {}).get("content") or "") if chat else choice["text"]


async def _watch_running(client: httpx.AsyncClient, server: Server, peak: list[int]) -> None:
    """Keep the most sequences /metrics reported running at once in peak[0]."""
    while True:
        text = (await client.get(f"{server.base}/metrics")).text
        for line in text.splitlines():
            if line.startswith("ismail_requests_running "):
                peak[0] = max(peak[0], int(float(line.split()[1])))
        await asyncio.sleep(0.05)


async def run_level(server: Server, mode: str, concurrency: int, bodies: list[dict]) -> LevelResult:
    """Send `bodies` with at most `concurrency` in flight; watch how many run at once."""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=1200, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def gated(body: dict) -> RequestResult:
            async with gate:
                return await one_request(client, server, body)

        peak = [0]
        watcher = asyncio.create_task(_watch_running(client, server, peak))
        start = time.perf_counter()
        results = await asyncio.gather(*(gated(b) for b in bodies))
        wall = time.perf_counter() - start
        watcher.cancel()
        return LevelResult(mode, concurrency, wall, list(results), peak[0])


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.0f}"


def print_table(levels: list[LevelResult]) -> None:
    head = (
        f"{'mode':<26}{'conc':>5}{'reqs':>6}{'fail':>6}{'TTFT p50':>10}{'TTFT p90':>10}"
        f"{'ITL mean':>10}{'E2E p50':>9}{'out tok/s':>11}{'peak run':>10}"
    )
    print(head)
    print("-" * len(head))
    for lv in levels:
        done = lv.done
        itls = [r.itl for r in done if r.itl is not None]
        itl = f"{1000 * statistics.fmean(itls):.1f}" if itls else "-"
        e2e = f"{statistics.median([r.e2e for r in done]):.2f}" if done else "-"
        print(
            f"{lv.mode:<26}{lv.concurrency:>5}{len(lv.results):>6}"
            f"{len(lv.results) - len(done):>6}{_ms([r.ttft for r in done], 0.5):>10}"
            f"{_ms([r.ttft for r in done], 0.9):>10}{itl:>10}{e2e:>9}{lv.output_tps:>11.1f}"
            f"{lv.peak_running:>10}"
        )
    print("(TTFT, ITL in ms; E2E in s; peak run: most sequences running at once)")


def serve_levels(
    server_args: tuple, mode: str, levels: list[tuple[int, list[dict]]]
) -> list[LevelResult]:
    """Start a server, warm it up, run each (concurrency, bodies) level, stop it."""
    checkpoint, args, work, flags, executable = server_args
    server = Server(checkpoint, args, work / f"{mode}.log", flags, executable)
    out = []
    try:
        warm = [{"prompt": PROMPTS[i], "max_tokens": 8, **_stream_options(i, 0.0)} for i in (0, 1)]
        asyncio.run(run_level(server, mode, 2, [{**b, "model": server.model} for b in warm]))
        for conc, bodies in levels:
            for body in bodies:
                body["model"] = server.model
            level = asyncio.run(run_level(server, mode, conc, bodies))
            out.append(level)
            print(f"  {mode} concurrency {conc}: {level.output_tps:.1f} output tok/s", flush=True)
            for r in level.results:
                if not r.ok:
                    print(f"    failed: {r.error}")
    finally:
        server.stop()
    return out


def text_of_tokens(n_tokens: int, seed: int) -> str:
    """Turkish text of about n_tokens tr-tokenizer tokens, different for each seed."""
    import random

    from ismail_core.tokenizer import load_tokenizer

    tok, rng = load_tokenizer("tr"), random.Random(seed)
    parts = [f"Belge {seed}."]
    while len(tok.encode(" ".join(parts)).ids) < n_tokens:
        parts.append(rng.choice(PROMPTS))
    return " ".join(parts)


def _bodies(n: int, make) -> list[dict]:
    return [make(i) for i in range(n)]


def run_throughput(ctx: tuple, args: argparse.Namespace) -> list[LevelResult]:
    """Continuous batching vs one at a time (and the baseline server at 1 and 16)."""

    def levels(concurrencies: list[int]) -> list[tuple[int, list[dict]]]:
        """(concurrency, requests) per level: --requests, or twice the concurrency (>= 8)."""
        out = []
        for c in concurrencies:
            n = args.requests or max(8, 2 * c)
            out.append((c, _bodies(n, lambda i: completion_body_for(i, args))))
        return out

    checkpoint, work = ctx
    plans = [("batched", max(args.concurrency), args.concurrency, None)]
    plans.append(("one-at-a-time", 1, args.sequential_concurrency, None))
    if args.baseline_serve:
        plans.append(("baseline batched", 16, [1, 16], args.baseline_serve))
    out = []
    for mode, max_batch, concurrencies, exe in plans:
        flags = ["--max-batch", str(max_batch)]
        out += serve_levels((checkpoint, args, work, flags, exe), mode, levels(concurrencies))
    by = {(lv.mode, lv.concurrency): lv for lv in out}
    if ("batched", 16) in by and ("one-at-a-time", 16) in by:
        ratio = by["batched", 16].output_tps / by["one-at-a-time", 16].output_tps
        print(f"concurrency 16: {ratio:.1f}x the output tokens/s of one at a time (target >= 6x)")
    if ("batched", 1) in by and ("baseline batched", 1) in by:
        ratio = by["batched", 1].output_tps / by["baseline batched", 1].output_tps
        print(f"batch-1 decode: {ratio:.2f}x the baseline's output tokens/s (target >= 0.9x)")
    return out


def completion_body_for(i: int, args: argparse.Namespace) -> dict:
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens}
    return {**body, **_stream_options(i, args.temperature)}


def _stream_options(i: int, temperature: float) -> dict:
    return {
        "temperature": temperature,
        "seed": i,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def run_prefix(ctx: tuple, args: argparse.Namespace) -> list[LevelResult]:
    """32 chat requests with one ~1,000-token system prompt, caching on vs off."""
    system = text_of_tokens(args.system_tokens, seed=0)

    def chat(i: int) -> dict:
        user = f"{i}. soru: {PROMPTS[i % len(PROMPTS)]} Bunu özetler misin?"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return {"messages": messages, "max_tokens": 16, **_stream_options(i, 0.0)}

    checkpoint, work = ctx
    out = []
    for mode, flags in [
        ("prefix caching", ["--max-batch", "8"]),
        ("no prefix caching", ["--max-batch", "8", "--no-enable-prefix-caching"]),
    ]:
        out += serve_levels((checkpoint, args, work, flags, None), mode, [(8, _bodies(32, chat))])
    p50 = [sorted(r.ttft for r in lv.done)[len(lv.done) // 2] for lv in out]
    print(f"shared system prompt: TTFT p50 {p50[1] / p50[0]:.1f}x lower with prefix caching "
          "(target >= 5x)")  # fmt: skip
    return out


def run_capacity(ctx: tuple, args: argparse.Namespace) -> list[LevelResult]:
    """Mixed prompt lengths, all at once, at one --kv-cache-memory: how many run together."""
    checkpoint, work = ctx
    _, per_token, _ = kv_bytes_per_token(checkpoint)
    budget_mib = args.capacity_rows * args.max_model_len * per_token / 2**20
    long_prompts = [text_of_tokens(args.max_model_len - 200, seed=s) for s in range(1, 5)]

    def mixed(i: int) -> dict:
        prompt = long_prompts[i // 12] if i % 12 == 11 else PROMPTS[i % len(PROMPTS)]
        return {"prompt": prompt, "max_tokens": 64, **_stream_options(i, 0.0)}

    flags = ["--kv-cache-memory", f"{budget_mib:.3f}", "--dtype", "float32"]
    plans = [("paged", flags + ["--max-batch", "256"], None)]
    if args.baseline_serve:
        plans.append(("baseline (whole rows)", flags, args.baseline_serve))
    out = []
    for mode, mode_flags, exe in plans:
        ctx_args = (checkpoint, args, work, mode_flags, exe)
        out += serve_levels(ctx_args, mode, [(48, _bodies(48, mixed))])
    print(f"--kv-cache-memory {budget_mib:.1f} MiB (= {args.capacity_rows} whole rows of "
          f"{args.max_model_len} tokens), 44 short prompts and 4 of ~{args.max_model_len - 200} "
          "tokens sent at once")  # fmt: skip
    if len(out) == 2 and out[1].peak_running:
        ratio = out[0].peak_running / out[1].peak_running
        print(f"requests running at once: {ratio:.1f}x the whole-row design's (target >= 3x)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="default: a random model of --preset")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--baseline-serve", help="another ismail-serve executable to compare with")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--sequential-concurrency", type=int, nargs="+", default=[1, 16],
        help="levels for the one-at-a-time server (its queue serialises them)",
    )  # fmt: skip
    p.add_argument("--requests", type=int, default=0, help="per level (default: 2 x conc, >= 8)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--temperature", type=float, default=0.0,
        help="0 = greedy, as vLLM's bench serve sends; > 0 samples (seeded per request)",
    )  # fmt: skip
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--system-tokens", type=int, default=1000, help="prefix scenario")
    p.add_argument(
        "--capacity-rows", type=int, default=4,
        help="capacity scenario: the KV budget in whole rows of --max-model-len",
    )  # fmt: skip
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    checkpoint = args.checkpoint or make_checkpoint(args.preset, args.max_model_len, work)
    kind, own, mha = kv_bytes_per_token(checkpoint)
    print(
        f"checkpoint: {checkpoint}   device: {args.device}   torch threads: "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"KV cache per token: {kind} {own} B vs standard MHA {mha} B ({mha / own:.1f}x smaller)")
    runs = {"throughput": run_throughput, "prefix": run_prefix, "capacity": run_capacity}
    levels = []
    for name in args.scenario:
        print(f"\n== {name}", flush=True)
        levels += runs[name]((checkpoint, work), args)
    print()
    print_table(levels)


if __name__ == "__main__":
    main()
