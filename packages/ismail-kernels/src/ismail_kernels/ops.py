"""Public FP8 operations: input checks plus a dispatcher between Triton and the reference path.

Backends:
- "triton": the compiled Triton kernels; CUDA tensors on a GPU with FP8 support (sm_89+).
- "interpret": the same Triton kernels run by Triton's CPU interpreter (slow; for tests).
- "reference": the PyTorch implementations in `ismail_kernels.reference`; any device.
- "auto" (default): "interpret" when TRITON_INTERPRET=1 is set, "triton" for CUDA tensors on a
  capable GPU, otherwise "reference". The variable is read at each call, so tests can set it
  without re-importing anything.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from . import reference
from .formats import DEFAULT_BLOCK_SIZE, FP8_DTYPE, SCALE_FORMATS

BACKENDS = ("auto", "triton", "interpret", "reference")
_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)
_OUTPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# FP8 tensor-core instructions (and Triton's float8e4nv) need Ada (8.9) or Hopper (9.0) and up.
_MIN_FP8_CAPABILITY = (8, 9)


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package can be imported (Linux wheels only)."""
    return importlib.util.find_spec("triton") is not None


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def _gpu_supports_fp8(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= _MIN_FP8_CAPABILITY


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("triton", "interpret" or "reference") for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("triton", "interpret") and not triton_available():
        raise RuntimeError(
            f"backend {backend!r} needs the `triton` package (Linux: pip install triton); "
            "use backend='reference' instead"
        )
    if backend == "triton" and not _gpu_supports_fp8(device):
        raise ValueError(
            f"backend 'triton' needs CUDA tensors on a GPU with compute capability >= 8.9, got "
            f"device {device}; use 'interpret' (Triton's CPU interpreter) or 'reference'"
        )
    if backend != "auto":
        return backend
    if _interpret_requested() and triton_available():
        return "interpret"
    if triton_available() and _gpu_supports_fp8(device):
        return "triton"
    return "reference"


def _triton_kernels():
    # Imported on first use: importing triton costs time and it is absent off Linux.
    from . import triton_kernels

    return triton_kernels


def _check_block_size(block_size: int) -> None:
    # Triton tiles are powers of two and tl.dot needs at least 16 along K; the reference path
    # enforces the same so results never depend on the device.
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")


def _check_scale_fmt(scale_fmt: str | None) -> None:
    if scale_fmt not in SCALE_FORMATS:
        raise ValueError(f"scale_fmt must be None or 'ue8m0', got {scale_fmt!r}")


def _check_dtype(name: str, dtype: torch.dtype, allowed: tuple[torch.dtype, ...]) -> None:
    if dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} must have dtype {names}; got {dtype}")


def act_quant(
    x: torch.Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    scale_fmt: str | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations per 1 x block_size group along the last dimension.

    Args:
        x: (..., K) float32/bfloat16/float16 tensor, K a multiple of block_size.
        block_size: group width (a power of two >= 16).
        scale_fmt: None for scale = max(amax, 1e-4) / 448, or "ue8m0" to round scales up to
            powers of two.
    Returns:
        (y, s): y (..., K) float8_e4m3fn with y * s ~= x (saturating at +-448), and
        s (..., K / block_size) float32.
    """
    _check_dtype("act_quant input", x.dtype, _FLOAT_INPUTS)
    _check_block_size(block_size)
    _check_scale_fmt(scale_fmt)
    if x.dim() == 0 or x.shape[-1] % block_size:
        raise ValueError(
            f"act_quant needs a last dimension that is a multiple of block_size={block_size}; "
            f"got shape {tuple(x.shape)} (pad the features or choose a smaller block_size)"
        )
    chosen = resolve_backend(backend, x.device)
    if chosen == "reference" or x.numel() == 0:
        return reference.act_quant_ref(x, block_size, scale_fmt)
    return _triton_kernels().act_quant(
        x.contiguous(), block_size, scale_fmt, interpret=chosen == "interpret"
    )


def weight_quant(
    w: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight per block_size x block_size block; ragged edge blocks are fine.

    Returns (w_fp8, s): w_fp8 float8_e4m3fn of w's shape and s float32 of shape
    (ceil(rows / bs), ceil(cols / bs)), with w_fp8 * s ~= w blockwise.
    """
    _check_dtype("weight_quant input", w.dtype, _FLOAT_INPUTS)
    _check_block_size(block_size)
    if w.dim() != 2:
        raise ValueError(f"weight_quant needs a 2-D weight, got shape {tuple(w.shape)}")
    chosen = resolve_backend(backend, w.device)
    if chosen == "reference" or w.numel() == 0:
        return reference.weight_quant_ref(w, block_size)
    return _triton_kernels().weight_quant(
        w.contiguous(), block_size, interpret=chosen == "interpret"
    )


def _expected_weight_scale_shape(shape: tuple[int, ...], block_size: int) -> tuple[int, int]:
    """Block-scale grid of a 2-D weight of `shape`: (ceil(rows / bs), ceil(cols / bs))."""
    return (-(-shape[0] // block_size), -(-shape[1] // block_size))


def weight_dequant(
    w_fp8: torch.Tensor,
    scale: torch.Tensor,
    block_size: int = DEFAULT_BLOCK_SIZE,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
) -> torch.Tensor:
    """Dequantize a block-quantized 2-D FP8 weight: each block times its fp32 scale."""
    _check_dtype("weight_dequant weight", w_fp8.dtype, (FP8_DTYPE,))
    _check_dtype("weight_dequant scale", scale.dtype, (torch.float32,))
    _check_dtype("weight_dequant out_dtype", out_dtype, _OUTPUT_DTYPES)
    _check_block_size(block_size)
    if w_fp8.dim() != 2:
        raise ValueError(f"weight_dequant needs a 2-D weight, got shape {tuple(w_fp8.shape)}")
    expected = _expected_weight_scale_shape(w_fp8.shape, block_size)
    if tuple(scale.shape) != expected:
        raise ValueError(
            f"scale shape {tuple(scale.shape)} does not match weight {tuple(w_fp8.shape)} with "
            f"block_size={block_size} (expected {expected}); pass the block_size it was made with"
        )
    chosen = resolve_backend(backend, w_fp8.device)
    if chosen == "reference" or w_fp8.numel() == 0:
        return reference.weight_dequant_ref(w_fp8, scale, block_size, out_dtype)
    return _triton_kernels().weight_dequant(
        w_fp8.contiguous(),
        scale.contiguous(),
        block_size,
        out_dtype,
        interpret=chosen == "interpret",
    )


def fp8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-scaled FP8 matrix product a @ b.T with fp32 accumulation.

    Args:
        a: (..., K) float8_e4m3fn activations and a_scale (..., K / bs) float32, as act_quant
            returns them; any number of rows.
        b: (N, K) float8_e4m3fn weight and b_scale (ceil(N / bs), K / bs) float32, as
            weight_quant returns them. K must be a multiple of the block size bs (inferred from
            the scale shapes); N may be ragged, as in DeepSeek-V3's checkpoints.
    Returns:
        (..., N) tensor of out_dtype (bfloat16, float16 or float32).
    """
    _check_dtype("fp8_gemm a", a.dtype, (FP8_DTYPE,))
    _check_dtype("fp8_gemm b", b.dtype, (FP8_DTYPE,))
    _check_dtype("fp8_gemm a_scale", a_scale.dtype, (torch.float32,))
    _check_dtype("fp8_gemm b_scale", b_scale.dtype, (torch.float32,))
    _check_dtype("fp8_gemm out_dtype", out_dtype, _OUTPUT_DTYPES)
    if b.dim() != 2 or a.dim() == 0 or a.shape[-1] != b.shape[1]:
        raise ValueError(
            f"fp8_gemm computes a @ b.T and needs a (..., K) and b (N, K); "
            f"got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    k, n = b.shape[1], b.shape[0]
    if a_scale.shape[:-1] != a.shape[:-1] or a_scale.shape[-1] == 0:
        raise ValueError(f"a_scale {tuple(a_scale.shape)} does not match a {tuple(a.shape)}")
    block_size = k // a_scale.shape[-1]
    _check_block_size(block_size)
    if k % block_size:
        raise ValueError(
            f"fp8_gemm needs K={k} to be a multiple of the block size {block_size} "
            f"(inferred from a_scale {tuple(a_scale.shape)}); quantize with a block size dividing K"
        )
    expected = _expected_weight_scale_shape(b.shape, block_size)
    if tuple(b_scale.shape) != expected:
        raise ValueError(
            f"b_scale {tuple(b_scale.shape)} does not match b {tuple(b.shape)} with block size "
            f"{block_size} (expected {expected}); quantize a and b with the same block_size"
        )
    if len({a.device, a_scale.device, b.device, b_scale.device}) != 1:
        raise ValueError("fp8_gemm inputs must all be on the same device")
    chosen = resolve_backend(backend, a.device)
    if chosen == "reference" or a.numel() == 0:
        return reference.fp8_gemm_ref(a, a_scale, b, b_scale, block_size, out_dtype)
    out = _triton_kernels().fp8_gemm(
        a.reshape(-1, k).contiguous(),
        a_scale.reshape(-1, k // block_size).contiguous(),
        b.contiguous(),
        b_scale.contiguous(),
        block_size,
        out_dtype,
        interpret=chosen == "interpret",
    )
    return out.reshape(*a.shape[:-1], n)
