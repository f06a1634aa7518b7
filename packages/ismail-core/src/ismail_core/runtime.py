"""Process settings that make CPU training fast on small, shared machines.

Called by the `ismail` command before torch is imported:
- OpenMP threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE). With other
  jobs on the same cores, spinning threads starve each other: a tiny-model step measured
  3-5x slower.
- glibc keeps large freed blocks for reuse instead of unmapping them (mallopt). Every training
  step allocates and frees the same few hundred MB (logits, activations); returning them to the
  kernel and faulting them back in cost as much system time as the step's compute (a tiny bf16
  step: 4.0 s -> 2.5 s wall, 2.6 s -> 0.3 s system time).
Both respect explicit user settings (an existing OMP_WAIT_POLICY / MALLOC_* variable).
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def tune_process() -> None:
    """Apply the settings above to this process (no-op where they do not apply)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not sys.platform.startswith("linux"):
        return
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc without glibc's mallopt parameters
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
