"""Run the `ismail-serve` command for the end-to-end tests: free port, start, wait, stop.

Imported by tests/test_serve_http.py, tests/test_apps_browser.py and others (ismail-serve's
test_classify.py too). pytest runs with --import-mode=importlib, which does not put tests/ on
sys.path, so they add it themselves.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def start_serve(
    args: Sequence[str],
    *,
    port: int,
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    poll_s: float = 0.1,
    ready_timeout_s: float = 120.0,
) -> subprocess.Popen:
    """Run `ismail-serve *args` (which must make it listen on `port`) with its output in `log`,
    and return once /health answers 200. Fails the test, showing the log, if the server exits
    or is not ready within `ready_timeout_s`; `cwd` and `env` go to subprocess.Popen."""
    command = [str(Path(sys.executable).with_name("ismail-serve")), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        wait_healthy(proc, base_url(port), log, ready_timeout_s, poll_s)
    except BaseException:
        stop_serve(proc)
        raise
    return proc


def wait_healthy(
    proc: subprocess.Popen, base: str, log: Path, timeout_s: float = 120.0, poll_s: float = 0.1
) -> None:
    """Return once `base`/health answers 200; fail the test, showing the server's `log`, if the
    process exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"ismail-serve exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"ismail-serve never got ready:\n{log.read_text()}"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)


def stop_serve(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it is still running after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_event_times(
    client: httpx.Client, url: str, body: dict, headers: dict[str, str] | None = None
) -> tuple[int, list[float]]:
    """POST a streaming request; returns its status and the time.monotonic() at which each
    Server-Sent Events `data:` line arrived (none for an error status)."""
    times = []
    with client.stream("POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, []
        for line in r.iter_lines():
            if line.startswith("data: "):
                times.append(time.monotonic())
    return r.status_code, times


def gaps(times: list[float]) -> list[float]:
    """Seconds between consecutive times."""
    return [b - a for a, b in zip(times, times[1:])]
