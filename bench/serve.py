"""ismail-serve under load: continuous batching against one-at-a-time serving of the same model.

Starts `ismail-serve` twice on the same checkpoint, once with many KV slots (continuous
batching) and once with a single slot (requests served one at a time, the rest queued), and
drives each with an asyncio client at fixed concurrency, like vLLM's `bench serve`: every
request streams (SSE) a fixed number of tokens (ignore_eos). Measured per level: time to first
token, inter-token latency (per request: (last - first token time) / (tokens - 1)), end-to-end
latency, output tokens/s over the level's wall time, and failed requests.

    uv run python bench/serve.py                      # tiny preset, random weights, CPU
    uv run python bench/serve.py --checkpoint runs/x  # a trained checkpoint
    uv run python bench/serve.py --device cuda --preset ismail-512

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
    """(attention kind, cache bytes/token, bytes/token of standard MHA of the same shape)."""
    from ismail_core.checkpoint import load_config
    from ismail_core.model.cache import new_cache

    cfg = load_config(checkpoint)
    mha_cfg = type(cfg).from_dict({**cfg.to_dict(), "attention": "mha", "n_kv_heads": None})
    own = new_cache(cfg, 1, 1).bytes_per_token()
    return cfg.attention, own, new_cache(mha_cfg, 1, 1).bytes_per_token()


class Server:
    """An `ismail-serve` subprocess."""

    def __init__(self, checkpoint: Path, max_batch: int, args: argparse.Namespace, log: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            str(Path(sys.executable).with_name("ismail-serve")),
            str(checkpoint),
            "--port", str(self.port),
            "--device", args.device,
            "--max-batch", str(max_batch),
            "--max-model-len", str(args.max_model_len),
            "--max-waiting", "1024",
            "--log-level", "warning",
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


async def one_request(
    client: httpx.AsyncClient, server: Server, i: int, max_tokens: int, temperature: float
) -> RequestResult:
    body = {
        "model": server.model,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": i,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", f"{server.base}/v1/completions", json=body) as r:
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
                elif event["choices"] and event["choices"][0]["text"]:
                    last = time.perf_counter()
                    first = first or last
    except httpx.HTTPError as exc:
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if first is None:
        return RequestResult(False, error="no text streamed")
    itl = (last - first) / (tokens - 1) if tokens > 1 else None
    return RequestResult(True, tokens, first - start, end - start, itl)


async def run_level(
    server: Server, mode: str, concurrency: int, n: int, max_tokens: int, temperature: float
) -> LevelResult:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> RequestResult:
            async with gate:
                return await one_request(client, server, i, max_tokens, temperature)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(i) for i in range(n)))
        return LevelResult(mode, concurrency, time.perf_counter() - start, list(results))


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.0f}"


def print_table(levels: list[LevelResult]) -> None:
    head = (
        f"{'mode':<16}{'conc':>5}{'reqs':>6}{'fail':>6}{'TTFT p50':>10}{'TTFT p90':>10}"
        f"{'ITL mean':>10}{'E2E p50':>9}{'out tok/s':>11}"
    )
    print(head)
    print("-" * len(head))
    for lv in levels:
        done = lv.done
        itls = [r.itl for r in done if r.itl is not None]
        itl = f"{1000 * statistics.fmean(itls):.1f}" if itls else "-"
        e2e = f"{statistics.median([r.e2e for r in done]):.2f}" if done else "-"
        print(
            f"{lv.mode:<16}{lv.concurrency:>5}{len(lv.results):>6}"
            f"{len(lv.results) - len(done):>6}{_ms([r.ttft for r in done], 0.5):>10}"
            f"{_ms([r.ttft for r in done], 0.9):>10}{itl:>10}{e2e:>9}{lv.output_tps:>11.1f}"
        )
    print("(TTFT, ITL in ms; E2E in s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="default: a random model of --preset")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
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
    p.add_argument("--max-model-len", type=int, default=256)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    checkpoint = args.checkpoint or make_checkpoint(args.preset, args.max_model_len, work)
    kind, own, mha = kv_bytes_per_token(checkpoint)
    print(
        f"checkpoint: {checkpoint}   device: {args.device}   torch threads: "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(f"KV cache per token: {kind} {own} B vs standard MHA {mha} B ({mha / own:.1f}x smaller)")
    print(
        f"each request streams {args.max_tokens} tokens (ignore_eos, temperature "
        f"{args.temperature}); prompts ~15-25 tokens\n"
    )

    levels: list[LevelResult] = []
    plans = [
        ("batched", max(args.concurrency), args.concurrency),
        ("one-at-a-time", 1, args.sequential_concurrency),
    ]
    for mode, max_batch, concurrencies in plans:
        server = Server(checkpoint, max_batch, args, work / f"{mode}.log")
        try:
            asyncio.run(run_level(server, mode, 2, 2, 8, args.temperature))  # warm-up
            for conc in concurrencies:
                n = args.requests or max(8, 2 * conc)
                level = asyncio.run(
                    run_level(server, mode, conc, n, args.max_tokens, args.temperature)
                )
                levels.append(level)
                tps = level.output_tps
                print(f"  {mode} concurrency {conc}: {tps:.1f} output tok/s", flush=True)
                for r in level.results:
                    if not r.ok:
                        print(f"    failed: {r.error}")
        finally:
            server.stop()
    print()
    print_table(levels)
    by = {(lv.mode, lv.concurrency): lv for lv in levels}
    if ("batched", 16) in by and ("one-at-a-time", 16) in by:
        ratio = by["batched", 16].output_tps / by["one-at-a-time", 16].output_tps
        print(
            f"\nconcurrency 16: continuous batching delivers {ratio:.1f}x the output tokens/s "
            "of one-at-a-time serving (target >= 4x)"
        )


if __name__ == "__main__":
    main()
