"""Process settings that make CPU training fast on small, shared machines, and the device
and precision policy.

`tune_process` is called by the `ismail` command before torch is imported:
- OpenMP threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE). With other
  jobs on the same cores, spinning threads starve each other: a tiny-model step measured
  3-5x slower.
- glibc keeps large freed blocks for reuse instead of unmapping them (mallopt). Every training
  step allocates and frees the same few hundred MB (logits, activations); returning them to the
  kernel and faulting them back in cost as much system time as the step's compute (a tiny bf16
  step: 4.0 s -> 2.5 s wall, 2.6 s -> 0.3 s system time).
Both respect explicit user settings (an existing OMP_WAIT_POLICY / MALLOC_* variable).

Devices and precisions, one policy for training, evaluation and serving:
- `resolve_device` checks a device name before a model is moved there; "auto" is this
  process's CUDA GPU, else Apple's GPU (MPS), else the CPU.
- `resolve_precision` turns a precision name into the one that runs on a device: "auto" is
  bf16 where the device runs it natively, else fp16 on a GPU, else fp32 (`auto_precision`);
  a precision the device cannot run is a PrecisionError naming the fix.
torch is imported inside the functions, so importing this module does not load torch before
`tune_process` runs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import Any

from ismail_core.errors import IsmailError

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


class DeviceError(IsmailError, ValueError):
    """A device name that is unknown or not available on this machine."""


class PrecisionError(IsmailError, RuntimeError):
    """The requested precision cannot run on the device."""


# Device types that are GPUs: without bf16 they still run fp16 fast, where a CPU emulates it.
GPU_TYPES = ("cuda", "mps")
# What each GPU type needs to run bf16 natively (for the error when it does not).
_BF16_NEEDS = {
    "cuda": "a GPU of compute capability 8.0 (Ampere) or newer",
    "mps": "macOS 14 or newer",
}


def auto_device_name(cuda: bool, mps: bool, local_rank: int = 0) -> str:
    """The device "auto" stands for, given which backends are available: this process's CUDA
    GPU (cuda:<local_rank>), else Apple's GPU (mps), else the CPU."""
    if cuda:
        return f"cuda:{local_rank}"
    return "mps" if mps else "cpu"


def probe_device(device: Any) -> None:
    """Allocate an empty tensor on `device`: the cheapest way to ask its backend whether it is
    usable (raises what the backend raises)."""
    import torch

    torch.empty(0, device=device)


def _missing_backend(device: Any) -> str | None:
    """Why the backend of `device` is missing on this machine, or None when torch reports it
    available (an index beyond the device count is left to `probe_device`)."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_available():
        return "torch finds no CUDA GPU: no GPU, no driver, or a CPU-only torch build"
    if device.type == "mps" and not torch.backends.mps.is_available():
        if torch.backends.mps.is_built():
            return "this torch has MPS, but this machine cannot run it"
        return "this torch build has no MPS"
    return None


def resolve_device(name: Any = None, flag: str = "--device", local_rank: int = 0) -> Any:
    """The torch.device for `name` (None: cpu; "auto": `auto_device_name`; "cuda":
    cuda:<local_rank>).

    Raises DeviceError naming the device, the `flag` it came from and the fix, instead of
    torch's error from deep inside the first `.to(device)` (an unknown name, no driver, a GPU
    index beyond the count, a backend this build or machine lacks).
    """
    import torch

    if name is None:
        return torch.device("cpu")
    if str(name) == "auto":
        available = torch.cuda.is_available(), torch.backends.mps.is_available()
        return torch.device(auto_device_name(*available, local_rank=local_rank))
    hint = f"use {flag} auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's message lists two dozen device types
        raise DeviceError(f"unknown device {str(name)!r} ({flag}); {hint}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    missing = _missing_backend(device)
    if missing is not None:
        fix = hint
        if device.type == "mps":
            fix = (
                "MPS needs Apple silicon, macOS 12.3 or newer and a torch build with MPS; "
                f"use {flag} auto or cpu"
            )
        raise DeviceError(
            f"device {name} ({flag}) is not available on this machine ({missing}); {fix}"
        )
    try:
        probe_device(device)
    except Exception as exc:  # RuntimeError, AssertionError, ImportError: pages of detail
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DeviceError(
            f"device {name} ({flag}) is not available on this machine ({reason}); {hint}"
        ) from None
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); Linux only.

    Without it, bf16 autocast on CPU is emulated and slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mps_has_bf16() -> bool:
    """Whether Apple's GPU runs bf16 (macOS 14 and newer). torch has no query for it, so a
    one-element bf16 tensor is made and added to; older systems refuse it."""
    import torch

    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps").add_(1)
    except Exception:  # RuntimeError or TypeError, depending on the torch and macOS versions
        return False
    return True


def mps_has_fp8() -> bool:
    """Whether torch's MPS backend has the float8 dtype FP8 weights use (float8_e4m3fn; newer
    torch releases add it). Probed like `mps_has_bf16`."""
    import torch

    try:
        torch.ones(1, device="mps").to(torch.float8_e4m3fn).float()
    except Exception:  # TypeError: "... MPS backend ... does not have support for that dtype"
        return False
    return True


def native_bf16(device: Any) -> bool:
    """Whether `device` runs bf16 natively rather than emulated: CUDA GPUs from Ampere on,
    Apple GPUs from macOS 14 on, CPUs with AVX512-BF16 or AMX."""
    import torch

    if device.type == "cuda":
        # torch's default also says yes for older GPUs, which emulate bf16 slowly
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        return mps_has_bf16()
    return device.type == "cpu" and cpu_has_native_bf16()


def auto_precision(device_type: str, bf16: bool) -> str:
    """The precision "auto" means on a device of `device_type` that does (`bf16`) or does not
    run bf16 natively: bf16; else fp16 on a GPU (training adds a gradient scaler); else fp32,
    as a CPU emulates both 16-bit formats more slowly than it computes fp32."""
    if bf16:
        return "bf16"
    return "fp16" if device_type in GPU_TYPES else "fp32"


def resolve_precision(
    name: str,
    device: Any,
    flag: str = "--train.precision",
    names: Mapping[str, str] | None = None,
) -> str:
    """The precision (fp32, bf16, fp16 or fp8) that `name` means on `device`, checked.

    "auto" follows `auto_precision`. Raises PrecisionError, naming `flag` and the fix, for bf16
    on a GPU without native bf16 and for fp8 on MPS without float8 dtypes. fp8 on a CPU is
    allowed: ismail-kernels runs its exact (slow) PyTorch reference there. `names` maps the
    precisions to how `flag` spells them (ismail-serve's --dtype says bfloat16 for bf16).
    """

    def spell(precision: str) -> str:
        return (names or {}).get(precision, precision)

    if name == "auto":
        return auto_precision(device.type, native_bf16(device))
    if name == "bf16" and device.type in GPU_TYPES and not native_bf16(device):
        raise PrecisionError(
            f"{flag} {spell('bf16')}: {device} does not run bf16 (it needs "
            f"{_BF16_NEEDS[device.type]}); use {flag} {spell('fp16')} or {spell('fp32')}"
        )
    if name == "fp8" and device.type == "mps" and not mps_has_fp8():
        raise PrecisionError(
            f"{flag} fp8: FP8 does not run on {device} (this torch's MPS backend has no float8 "
            "dtypes); use a CUDA GPU, or the CPU for ismail-kernels' (slow) reference path"
        )
    return name
