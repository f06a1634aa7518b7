"""Process tuning for CPU training: freed large blocks are reused, not faulted in again."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

BLOCK = 64 << 20  # above glibc's largest automatic mmap threshold (32 MiB on 64-bit)

# Reads glibc's own accounting (mallinfo2) around one large block; page-fault counts would
# depend on the machine, these do not.
SCRIPT = f"""
import ctypes, os, sys
if sys.argv[1] == "tuned":
    from ismail_core.runtime import tune_process
    tune_process()
FIELDS = ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost").split()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
block = bytearray({BLOCK})
live = libc.mallinfo2()
del block
freed = libc.mallinfo2()
block = bytearray({BLOCK})
again = libc.mallinfo2()
print(os.environ.get("OMP_WAIT_POLICY"), live.hblkhd, freed.fordblks, freed.arena, again.arena)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc 2.33 and newer
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc's mallopt and mallinfo2")
def test_tuned_process_reuses_large_blocks() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_WAIT", "MALLOC_"))}

    def run(mode: str) -> tuple[str, list[int]]:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        policy, *sizes = out.stdout.split()
        return policy, [int(s) for s in sizes]

    plain_policy, (mapped, kept, _, _) = run("plain")
    assert plain_policy == "None"
    assert mapped >= BLOCK  # by default the block is mapped on its own ...
    assert kept < BLOCK  # ... and unmapped when freed: the next one is faulted in again

    tuned_policy, (mapped, kept, heap, heap_again) = run("tuned")
    assert tuned_policy == "PASSIVE"
    assert mapped < BLOCK  # tuned, the block comes from the heap ...
    assert kept >= BLOCK  # ... stays there, free, once released ...
    assert heap_again == heap  # ... and the next block reuses it: the heap does not grow
