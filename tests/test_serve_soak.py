"""Issue 13's soak test: 32 streams for 60 s while one client keeps sending oversized prompts.

Loopback only, a real `ismail-serve` on a tiny random checkpoint with the shipped tr-tokenizer.
Done when: no 5xx, no stream stalls more than 1 s beyond its normal inter-token time (the
median gap of that request's events), /health always answers within 1 s, and every oversized
prompt gets 413 (body over --max-request-bytes) or 400 (cannot fit the context). Before the
fix a 3 MB one-word prompt was tokenized on the event loop for seconds, freezing every stream
and /health; a 10 MB one for ~18 s.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py (see its docstring)
from _serve import base_url, free_port, gaps, start_serve, stop_serve, stream_event_times  # noqa: E402
from _tiny import tiny_tr_checkpoint  # noqa: E402

MODEL = "tiny-ismail"
LOAD_S = 60.0  # the number
STREAMS = 32
OVERSIZED_EVERY_S = 3.0
HEALTH_EVERY_S = 0.2
MAX_STALL_S = 1.0  # beyond the stream's normal inter-token time
MAX_HEALTH_S = 1.0


def oversized_bodies() -> list[tuple[str, str, bytes]]:
    """Requests no server should spend seconds on: over the body limit, and a one-word prompt
    far past what the context can hold (text and chat)."""
    word = "kitap" * 600_000  # 3 MB, one word
    chat = {"model": MODEL, "messages": [{"role": "user", "content": word}]}
    bodies = [
        ("10 MB prompt", "completions", {"model": MODEL, "prompt": "a" * 10_000_000}),
        ("3 MB word", "completions", {"model": MODEL, "prompt": word}),
        ("3 MB chat", "chat/completions", chat),
    ]
    return [(name, route, json.dumps(body).encode()) for name, route, body in bodies]


def near_limit_body(rng: random.Random) -> tuple[str, str, bytes]:
    """A new 35,000-letter word each time (the tokenizer caches words it has seen): just under
    the character bound for a 2048-token context (2048 x 18), so it is tokenized, off the event
    loop, and then refused as too long."""
    word = "".join(rng.choices("abcçdefgğhıijklmnoöprsştuüvyz", k=35_000))
    return "35k-letter word", "completions", json.dumps({"model": MODEL, "prompt": word}).encode()


@dataclass
class Soak:
    """What the clients saw."""

    stream_statuses: Counter = field(default_factory=Counter)
    stalls: list[float] = field(default_factory=list)  # per request: max gap - median gap
    normal_gaps: list[float] = field(default_factory=list)
    events: int = 0
    health_statuses: Counter = field(default_factory=Counter)
    health_latencies: list[float] = field(default_factory=list)
    oversized: list[tuple[str, int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def streamer(base: str, stop_at: float, seed: int, soak: Soak) -> None:
    """Streams one completion after another until `stop_at`."""
    body = {
        "model": MODEL,
        "prompt": "Kitaplarımızdan birini okudunuz mu?",
        "max_tokens": 48,
        "ignore_eos": True,
        "stream": True,
        "seed": seed,
    }
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < stop_at:
            try:
                status, times = stream_event_times(client, f"{base}/v1/completions", body)
            except httpx.HTTPError as exc:
                with soak.lock:
                    soak.errors.append(f"stream: {type(exc).__name__}: {exc}")
                continue
            between = gaps(times)
            with soak.lock:
                soak.stream_statuses[status] += 1
                soak.events += len(times)
                if len(between) >= 3:
                    normal = statistics.median(between)
                    soak.normal_gaps.append(normal)
                    soak.stalls.append(max(between) - normal)


def health_poller(base: str, stop_at: float, soak: Soak) -> None:
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                status = client.get(f"{base}/health").status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with soak.lock:
                soak.health_statuses[status] += 1
                soak.health_latencies.append(time.monotonic() - start)
            time.sleep(HEALTH_EVERY_S)


def oversized_sender(base: str, stop_at: float, soak: Soak) -> None:
    bodies, rng = oversized_bodies(), random.Random(0)
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        i = 0
        while time.monotonic() + OVERSIZED_EVERY_S < stop_at:
            time.sleep(OVERSIZED_EVERY_S)
            choice = i % (len(bodies) + 1)
            name, route, content = bodies[choice] if choice < len(bodies) else near_limit_body(rng)
            i += 1
            start = time.monotonic()
            try:
                response = client.post(f"{base}/v1/{route}", content=content, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with soak.lock:
                soak.oversized.append((name, status, time.monotonic() - start))


@pytest.mark.slow
def test_32_streams_and_oversized_prompts_for_60_s(tmp_path):
    checkpoint = tiny_tr_checkpoint(tmp_path / MODEL, max_seq_len=2048)
    port = free_port()
    base = base_url(port)
    # One intra-op thread: on a shared 2-core machine more threads only spin against each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(checkpoint), "--port", str(port), "--device", "cpu", "--max-batch", str(STREAMS)]
    proc = start_serve(args, port=port, log=tmp_path / "serve.log", env=env)
    soak = Soak()
    # The clients measure stalls, so they must not stall themselves: late in a full test run this
    # process holds millions of objects, and one full garbage collection of them (about a second
    # on a small CPU) pauses every client thread at once. Frozen objects are not scanned.
    gc.collect()
    gc.freeze()
    try:
        stop_at = time.monotonic() + LOAD_S
        threads = [
            threading.Thread(target=streamer, args=(base, stop_at, seed, soak))
            for seed in range(STREAMS)
        ]
        threads.append(threading.Thread(target=health_poller, args=(base, stop_at, soak)))
        threads.append(threading.Thread(target=oversized_sender, args=(base, stop_at, soak)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.unfreeze()
        stop_serve(proc)

    worst = max(soak.stalls, default=0.0)
    print(
        f"\nsoak: {sum(soak.stream_statuses.values())} streamed requests "
        f"{dict(soak.stream_statuses)}, {soak.events} events, median normal gap "
        f"{statistics.median(soak.normal_gaps or [0]) * 1000:.1f} ms, max stall beyond normal "
        f"{worst * 1000:.0f} ms; /health {dict(soak.health_statuses)} max "
        f"{max(soak.health_latencies, default=0) * 1000:.0f} ms; oversized "
        f"{[(n, s, round(t, 2)) for n, s, t in soak.oversized]}; errors {soak.errors[:3]}"
    )
    assert not soak.errors
    assert set(soak.stream_statuses) == {200}, soak.stream_statuses
    assert len(soak.stalls) >= STREAMS, "too few streams finished to judge"
    assert worst <= MAX_STALL_S, f"a stream stalled {worst:.2f} s beyond its normal gap"
    assert set(soak.health_statuses) == {200}, soak.health_statuses
    assert max(soak.health_latencies) <= MAX_HEALTH_S
    assert len(soak.oversized) >= LOAD_S // OVERSIZED_EVERY_S - 2
    assert {status for _, status, _ in soak.oversized} <= {400, 413}, soak.oversized
