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

`resolve_device` checks a device name before a model is moved there. torch is imported inside
it, so importing this module does not load torch before `tune_process` runs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

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


class DeviceError(ValueError):
    """A device name that is unknown or not available on this machine."""


def resolve_device(name: Any = None, flag: str = "--device", local_rank: int = 0) -> Any:
    """The torch.device for `name` (None: cpu; "auto": cuda:<local_rank> when CUDA is
    available, else cpu; "cuda": cuda:<local_rank>).

    Raises DeviceError naming the device, the `flag` it came from and the fix, instead of
    torch's error from deep inside the first `.to(device)` (an unknown name, no driver, a GPU
    index beyond the count, a backend this build lacks).
    """
    import torch

    if name is None:
        return torch.device("cpu")
    if str(name) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    hint = f"use {flag} auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's message lists two dozen device types
        raise DeviceError(f"unknown device {str(name)!r} ({flag}); {hint}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    try:
        torch.empty(0, device=device)  # the cheapest way to ask the backend if it is usable
    except Exception as exc:  # RuntimeError, AssertionError, ImportError: pages of detail
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DeviceError(
            f"device {name} ({flag}) is not available on this machine ({reason}); {hint}"
        ) from None
    return device
