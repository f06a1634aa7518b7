"""Process tuning for CPU training: freed large blocks are reused, not faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
if sys.argv[1] == "tuned":
    from ismail_core.runtime import tune_process
    tune_process()
import os
print(os.environ.get("OMP_WAIT_POLICY"))
def faults_of_touching(n=64 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(n)  # calloc: touching it faults pages unless they were kept
    block[::4096] = b"x" * len(block[::4096])
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_touching()
print(faults_of_touching())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_process_reuses_large_blocks() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_WAIT", "MALLOC_"))}

    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        policy, faults = out.stdout.split()
        return policy, int(faults)

    plain_policy, plain_faults = run("plain")
    tuned_policy, tuned_faults = run("tuned")
    assert (plain_policy, tuned_policy) == ("None", "PASSIVE")
    pages = (64 << 20) // 4096
    assert plain_faults > pages // 2  # the default allocator unmapped and re-faulted the block
    assert tuned_faults < pages // 10
