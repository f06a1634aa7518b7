"""Stopping ismail-serve with signals the way systemd and container runtimes do.

They signal the whole process group of `uv run ismail-serve`, so the server gets each signal
twice: once directly and once forwarded by uv. The duplicate must not cut the drain short.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from ismail_serve.server import REPEAT_WINDOW_S, DrainingServer
from ismail_serve.state import ServerState

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py (see its docstring)
from _serve import base_url, free_port, wait_healthy  # noqa: E402
from _tiny import tiny_tr_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-ismail"
UV = shutil.which("uv")


def test_repeated_sigterm_never_stops_the_drain_a_later_sigint_does():
    server = DrainingServer(uvicorn.Config(app=None), ServerState(model_name=MODEL), 1.0)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGTERM, None)  # uv's forwarded copy
    server.handle_exit(signal.SIGINT, None)  # one Ctrl-C through uv arrives twice as well
    assert not server.force_exit
    server._first_signal_at -= REPEAT_WINDOW_S  # the window has passed
    server.handle_exit(signal.SIGTERM, None)
    assert not server.force_exit
    server.handle_exit(signal.SIGINT, None)  # a second Ctrl-C: stop now
    assert server.force_exit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tr_checkpoint(tmp_path_factory.mktemp("signals") / MODEL, max_seq_len=2048)


def _data_lines(lines) -> list[str]:
    return [line for line in lines if line.startswith("data: ")]


@pytest.mark.slow
@pytest.mark.skipif(UV is None, reason="uv is not on PATH (the test runs `uv run ismail-serve`)")
def test_sigterm_to_uv_process_group_drains_two_streams_then_exits_0(checkpoint, tmp_path):
    port = free_port()
    base = base_url(port)
    log = tmp_path / "serve.log"
    # --no-sync: run the environment as it is, never install into it in the middle of a test.
    command = [UV, "run", "--no-sync", "ismail-serve", str(checkpoint), "--port", str(port)]
    command += ["--device", "cpu", "--max-batch", "2", "--drain-timeout", "60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine
    with log.open("w") as out:
        # A session (and process group) of its own, as under systemd or in a container: uv is
        # the group leader and forwards what it gets to the server, which also gets it directly.
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    body = {
        "model": MODEL,
        "prompt": "Merhaba",
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    try:
        wait_healthy(proc, base, log, timeout_s=60.0)
        with httpx.Client(base_url=base, timeout=60) as client, contextlib.ExitStack() as stack:
            streams = [
                stack.enter_context(client.stream("POST", "/v1/completions", json=body))
                for _ in range(2)
            ]
            lines = [r.iter_lines() for r in streams]  # keep references: a collected one closes
            first = [next(line for line in it if line.startswith("data: ")) for it in lines]
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.get("/health").status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.post("/v1/completions", json=body).status_code == 503
            # uv's copy can merge with the direct one when both arrive before the server runs
            # (signals do not queue), so repeat it now that the drain has surely begun.
            os.killpg(proc.pid, signal.SIGTERM)
            events = [[head, *_data_lines(it)] for head, it in zip(first, lines, strict=True)]
        for stream in events:
            assert stream[-1] == "data: [DONE]"
            assert json.loads(stream[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "SIGTERM while draining: ignored" in log.read_text(), log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
