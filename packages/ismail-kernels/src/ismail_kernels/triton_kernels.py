"""Triton kernels for block-scaled FP8: quantization, dequantization and GEMM.

Semantics follow DeepSeek-V3's inference/kernel.py (1 x 128 activation blocks, 128 x 128 weight
blocks, scale = max(amax, 1e-4) / 448, per-K-block scaling inside the GEMM); the code is our own.
Every launcher takes `interpret`: True runs the same kernel source through Triton's CPU
interpreter (for tests on machines without a GPU) with fixed tile sizes instead of autotuning,
which the interpreter cannot launch. Inputs are validated by `ismail_kernels.ops`.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .formats import AMAX_EPS, FP8_DTYPE, FP8_MAX

# Rows of activations one act_quant program handles: 32 x 128 values keeps a program's memory
# traffic large enough to approach bandwidth on a GPU and keeps interpreter runs short.
ACT_QUANT_ROWS = 32
# Globals a kernel reads must be constexpr.
_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_EPS = tl.constexpr(AMAX_EPS)
# fp32 bit patterns used to round onto the e4m3 grid (see _block_quant_kernel).
_EXP_MASK = tl.constexpr(0x7F800000)
_MANTISSA_MASK = tl.constexpr(0x7FFFFF)
_MIN_NORMAL_EXP_BITS = tl.constexpr((127 - 6) << 23)  # exponent field of 2^-6 (smallest normal)
_E4M3_MANTISSA_SHIFT = tl.constexpr(3 << 23)  # 3 mantissa bits: quantum = 2^(exponent - 3)
_INV_EXP_BITS = tl.constexpr(254 << 23)  # bits(2^-e) = _INV_EXP_BITS - bits(2^e)
_RINT_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + M) - M rounds |v| < 2^22, ties to even


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _block_quant_kernel(
    x_ptr,
    y_ptr,
    s_ptr,
    M,
    N,
    s_cols,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ROW_SCALES: tl.constexpr,
    POW2_SCALES: tl.constexpr,
):
    """Quantize one BLOCK_M x BLOCK_N tile of a row-major (M, N) tensor to float8_e4m3fn.

    ROW_SCALES: one scale per row of the tile (act_quant's 1 x BLOCK_N groups), stored at
    s[row, pid_n]; otherwise one scale for the whole tile (weight blocks), stored at
    s[pid_m, pid_n]. Out-of-range rows and columns are masked, so ragged edges are fine.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    # tl.reduce with our own combine function rather than tl.max: tl.max is a @triton.jit
    # library function, which the interpreter can only call if TRITON_INTERPRET was set before
    # triton was imported; a combine function it calls directly, whenever it was set.
    if ROW_SCALES:
        amax = tl.reduce(tl.abs(x), 1, _max_combine, keep_dims=True)  # (BLOCK_M, 1)
    else:
        amax = tl.reduce(tl.abs(x), None, _max_combine)  # scalar
    scale = tl.math.div_rn(tl.maximum(amax, _AMAX_EPS), _FP8_MAX)
    if POW2_SCALES:
        bits = scale.to(tl.int32, bitcast=True)
        bits = tl.where((bits & _MANTISSA_MASK) != 0, (bits + (1 << 23)) & _EXP_MASK, bits)
        scale = bits.to(tl.float32, bitcast=True)

    # IEEE division so every backend computes the same fp32 quotient.
    y = tl.math.div_rn(x, scale)
    y = tl.minimum(tl.maximum(y, -_FP8_MAX), _FP8_MAX)
    # Round to the e4m3 grid here, in fp32, so the cast below is exact. Triton's interpreter
    # casts fp32 -> fp8 wrongly when rounding carries into the exponent (124 -> 64), below the
    # normal range and above 448; an exact cast is right on every backend. The grid spacing is
    # 2^(e - 3) for a value's exponent e, never finer than 2^-9 (e4m3 subnormals).
    y_bits = y.to(tl.int32, bitcast=True)
    quantum_exp_bits = tl.maximum(y_bits & _EXP_MASK, _MIN_NORMAL_EXP_BITS) - _E4M3_MANTISSA_SHIFT
    quantum = quantum_exp_bits.to(tl.float32, bitcast=True)
    inv_quantum = (-quantum_exp_bits + _INV_EXP_BITS).to(tl.float32, bitcast=True)
    y = ((y * inv_quantum + _RINT_MAGIC) - _RINT_MAGIC) * quantum
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    if ROW_SCALES:
        tl.store(s_ptr + offs_m[:, None] * s_cols + pid_n, scale, mask=offs_m[:, None] < M)
    else:
        tl.store(s_ptr + pid_m * s_cols + pid_n, scale)


@triton.jit
def _weight_dequant_kernel(x_ptr, s_ptr, y_ptr, M, N, s_cols, BLOCK: tl.constexpr):
    """y = x * s for one BLOCK x BLOCK block of a row-major (M, N) FP8 tensor, edges masked."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + pid_m * s_cols + pid_n)
    tl.store(y_ptr + offs, (x * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fp8_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    a_s_ptr,
    b_s_ptr,
    M,
    N,
    K,
    M_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """c = a @ b.T for a (M, K) and b (N, K) in FP8, with per-block scales applied every K step.

    BLOCK_K equals the quantization block size: a_s is (M, K / BLOCK_K) and b_s is
    (ceil(N / BLOCK_K), K / BLOCK_K). K is a multiple of BLOCK_K (checked by the caller); M and N
    may be ragged.
    M_BUCKET only keys the autotuning cache (decode-sized M wants small tiles).
    """
    # Grouped program order: GROUP_M consecutive programs walk down M over the same B tiles,
    # so those tiles are reused from L2.
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M  # not tl.cdiv, a library @jit function (see above)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    programs_per_group = GROUP_M * num_n
    first_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % programs_per_group) % group_rows
    pid_n = (pid % programs_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows/cols load a valid row instead (masked at the store): unmasked loads
    # pipeline better.
    rows_a = offs_m % M
    rows_b = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    k_blocks = K // BLOCK_K
    a_ptrs = a_ptr + rows_a[:, None].to(tl.int64) * K + offs_k[None, :]
    b_ptrs = b_ptr + rows_b[None, :].to(tl.int64) * K + offs_k[:, None]
    a_s_ptrs = a_s_ptr + rows_a * k_blocks
    b_s_ptrs = b_s_ptr + (rows_b // BLOCK_K) * k_blocks

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # not tl.zeros, a library @jit function
    for _ in range(k_blocks):
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
        a_s = tl.load(a_s_ptrs)
        b_s = tl.load(b_s_ptrs)
        # Scaling each K block's partial product in fp32 also bounds the error of the tensor
        # cores' reduced-precision FP8 accumulation to one block (DeepSeek-V3, section 3.3).
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
        a_s_ptrs += 1
        b_s_ptrs += 1

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


def _gemm_configs() -> list[triton.Config]:
    """Tiles from decode (M <= 16) to large square GEMMs; pruned by M below."""
    configs = []
    for block_m in (16, 32, 64, 128):
        for block_n in (64, 128, 256):
            for stages in (3, 4):
                if block_m * block_n > 128 * 256:
                    continue
                warps = 8 if block_m * block_n >= 128 * 128 else 4
                configs.append(
                    triton.Config(
                        {"BLOCK_M": block_m, "BLOCK_N": block_n, "GROUP_M": 8},
                        num_stages=stages,
                        num_warps=warps,
                    )
                )
    return configs


def _prune_gemm_configs(configs, named_args, **kwargs):
    """Drop tiles much taller than M: they only multiply padding rows."""
    max_block_m = max(16, named_args["M_BUCKET"])
    return [c for c in configs if c.kwargs["BLOCK_M"] <= max_block_m]


_fp8_gemm_autotuned = triton.autotune(
    configs=_gemm_configs(),
    key=["N", "K", "M_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_gemm_configs},
)(_fp8_gemm_kernel)

# Fixed tiles under the interpreter: small, so ragged M and several N tiles get exercised.
_INTERPRET_GEMM_TILE = {"BLOCK_M": 16, "BLOCK_N": 32, "GROUP_M": 2}


@functools.cache
def _interpreted(kernel):
    """The interpreter version of a @triton.jit kernel, whatever TRITON_INTERPRET was at import."""
    return InterpretedFunction(kernel.fn)


def _kernel(kernel, interpret: bool):
    return _interpreted(kernel) if interpret else kernel


def act_quant(
    x: torch.Tensor, block_size: int, scale_fmt: str | None, interpret: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a contiguous (..., K) tensor per 1 x block_size group."""
    k = x.shape[-1]
    m = x.numel() // k
    y = torch.empty_like(x, dtype=FP8_DTYPE)
    s = torch.empty(*x.shape[:-1], k // block_size, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, ACT_QUANT_ROWS), k // block_size)
    _kernel(_block_quant_kernel, interpret)[grid](
        x,
        y,
        s,
        m,
        k,
        k // block_size,
        BLOCK_M=ACT_QUANT_ROWS,
        BLOCK_N=block_size,
        ROW_SCALES=True,
        POW2_SCALES=scale_fmt == "ue8m0",
    )
    return y, s


def weight_quant(
    w: torch.Tensor, block_size: int, interpret: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a contiguous 2-D weight per block_size x block_size block."""
    rows, cols = w.shape
    y = torch.empty_like(w, dtype=FP8_DTYPE)
    grid = (triton.cdiv(rows, block_size), triton.cdiv(cols, block_size))
    s = torch.empty(*grid, dtype=torch.float32, device=w.device)
    _kernel(_block_quant_kernel, interpret)[grid](
        w,
        y,
        s,
        rows,
        cols,
        grid[1],
        BLOCK_M=block_size,
        BLOCK_N=block_size,
        ROW_SCALES=False,
        POW2_SCALES=False,
    )
    return y, s


def weight_dequant(
    w: torch.Tensor, s: torch.Tensor, block_size: int, out_dtype: torch.dtype, interpret: bool
) -> torch.Tensor:
    """Multiply each block of a contiguous 2-D FP8 weight by its scale."""
    rows, cols = w.shape
    y = torch.empty(rows, cols, dtype=out_dtype, device=w.device)
    grid = (triton.cdiv(rows, block_size), triton.cdiv(cols, block_size))
    _kernel(_weight_dequant_kernel, interpret)[grid](w, s, y, rows, cols, grid[1], BLOCK=block_size)
    return y


def fp8_gemm(
    a: torch.Tensor,
    a_s: torch.Tensor,
    b: torch.Tensor,
    b_s: torch.Tensor,
    block_size: int,
    out_dtype: torch.dtype,
    interpret: bool,
) -> torch.Tensor:
    """a (M, K) @ b (N, K).T with block scales; contiguous inputs, fp32 accumulation."""
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    m_bucket = min(triton.next_power_of_2(m), 256)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if interpret:
        _interpreted(_fp8_gemm_kernel)[grid](
            a, b, c, a_s, b_s, m, n, k, m_bucket, BLOCK_K=block_size, **_INTERPRET_GEMM_TILE
        )
    else:
        _fp8_gemm_autotuned[grid](a, b, c, a_s, b_s, m, n, k, m_bucket, BLOCK_K=block_size)
    return c
