"""PyTorch reference implementations of the FP8 kernels.

Same semantics as the Triton kernels in `ismail_kernels.triton_kernels` (which the tests compare
against these), written for clarity; they run on any device. Inputs are assumed validated by
`ismail_kernels.ops`, which is the public entry point.
"""

from __future__ import annotations

import torch

from .formats import AMAX_EPS, FP8_DTYPE, FP8_MAX


def round_scale_to_pow2(scale: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to the next power of two ("ue8m0"), exactly.

    Works on the bit pattern instead of `exp2(ceil(log2(s)))` so every backend agrees even where
    log2 of a value just above a power of two rounds down to an integer.
    """
    bits = scale.view(torch.int32)
    has_mantissa = (bits & 0x7FFFFF) != 0
    bits = torch.where(has_mantissa, (bits + 0x800000) & 0x7F800000, bits)
    return bits.view(torch.float32)


def _to_fp8(y: torch.Tensor) -> torch.Tensor:
    """Saturating round-to-nearest-even cast of fp32 values to float8_e4m3fn."""
    return y.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _block_scale(amax: torch.Tensor, scale_fmt: str | None) -> torch.Tensor:
    scale = amax.clamp_min(AMAX_EPS) / FP8_MAX
    return round_scale_to_pow2(scale) if scale_fmt == "ue8m0" else scale


def act_quant_ref(
    x: torch.Tensor, block_size: int, scale_fmt: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x per 1 x block_size group of its last dim; returns (fp8 values, fp32 scales)."""
    groups = x.float().unflatten(-1, (-1, block_size))  # (..., K / bs, bs)
    scale = _block_scale(groups.abs().amax(dim=-1), scale_fmt)  # (..., K / bs)
    y = _to_fp8(groups / scale.unsqueeze(-1))
    return y.flatten(-2), scale


def _pad_to_blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor so both dims are multiples of block_size (zeros do not change amax)."""
    rows, cols = w.shape
    pad_rows, pad_cols = -rows % block_size, -cols % block_size
    return torch.nn.functional.pad(w, (0, pad_cols, 0, pad_rows))


def _blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """View a block-aligned (R, C) tensor as (R / bs, C / bs, bs, bs) tiles."""
    rows, cols = w.shape
    tiles = w.reshape(rows // block_size, block_size, cols // block_size, block_size)
    return tiles.permute(0, 2, 1, 3)


def weight_quant_ref(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight per block_size x block_size block (ragged edge blocks allowed)."""
    rows, cols = w.shape
    tiles = _blocks(_pad_to_blocks(w.float(), block_size), block_size)
    scale = _block_scale(tiles.abs().amax(dim=(-2, -1)), None)  # (R / bs, C / bs)
    y = _to_fp8(tiles / scale[..., None, None])
    y = y.permute(0, 2, 1, 3).reshape(scale.shape[0] * block_size, scale.shape[1] * block_size)
    return y[:rows, :cols].contiguous(), scale


def expand_block_scales(scale: torch.Tensor, shape: torch.Size, block_size: int) -> torch.Tensor:
    """Repeat (R / bs, C / bs) block scales to a full (R, C) tensor (cropping ragged edges)."""
    full = scale.repeat_interleave(block_size, dim=0).repeat_interleave(block_size, dim=1)
    return full[: shape[0], : shape[1]]


def weight_dequant_ref(
    w_fp8: torch.Tensor, scale: torch.Tensor, block_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """Multiply each block of an FP8 weight by its scale; returns out_dtype."""
    full = expand_block_scales(scale, w_fp8.shape, block_size)
    return (w_fp8.float() * full).to(out_dtype)


def fp8_gemm_ref(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    block_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """a @ b.T with 1 x bs scales on a (..., K) and bs x bs scales on b (N, K), fp32 accumulation.

    Dequantizes both operands to fp32 and multiplies once. This is the same sum as the kernel's
    per-K-block `acc += (a_k @ b_k.T) * a_s[:, k] * b_s[:, k]`: products of two fp8 values are
    exact in fp32, so only the fp32 summation order differs.
    """
    a_full = a.float() * a_scale.repeat_interleave(block_size, dim=-1)
    b_full = b.float() * expand_block_scales(b_scale, b.shape, block_size)
    # Autocast would run this matmul in bf16; the semantics are fp32 accumulation.
    with torch.autocast(a.device.type, enabled=False):
        return (a_full @ b_full.T).to(out_dtype)
