"""The PyTorch reference path: error bounds of FP8 block quantization, GEMM semantics, input checks.

Error bounds come from the format: float8_e4m3fn keeps 3 mantissa bits, so rounding a normal
value y moves it by at most half a unit in the last place, 2^(e-4) <= |y| / 16; subnormals
(|y| < 2^-6) are spaced 2^-9 apart, so they move by at most 2^-10. With scale = amax / 448 every
scaled value is <= 448, whose half-ulp is 16, so dequantization error is <= 16 * scale =
amax / 28 in the input's units.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_kernels import FP8_MAX, act_quant, fp8_gemm, weight_dequant, weight_quant
from ismail_kernels.reference import expand_block_scales

FP32_SLACK = 1e-6  # relative fp32 rounding in x / s and y * s


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    """backend="auto" means the reference path here, even if TRITON_INTERPRET is set."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def random_blocks(shape, seed: int, log10_scale: float, zero_every: int = 3) -> torch.Tensor:
    """Values spanning ~4 decades per row (so subnormal fp8 codes occur), some rows zeroed."""
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(shape, generator=g)
        * torch.logspace(-3, 1, shape[-1])[torch.randperm(shape[-1], generator=g)]
    )
    x = x * 10**log10_scale
    flat = x.reshape(-1, shape[-1])
    flat[::zero_every] = 0.0
    return x


def elementwise_bound(x: torch.Tensor, scale_full: torch.Tensor) -> torch.Tensor:
    """Max |x - dequant(quant(x))| per element: half an fp8 ulp, in x's units."""
    return torch.maximum(x.abs() / 16, scale_full * 2.0**-10) * (1 + FP32_SLACK)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    block_size=st.sampled_from([16, 32]),
    log10_scale=st.floats(-6, 6),
    scale_fmt=st.sampled_from([None, "ue8m0"]),
    seed=st.integers(0, 2**16),
)
def test_act_quant_error_bounded_by_block_amax(
    rows, groups, block_size, log10_scale, scale_fmt, seed
):
    x = random_blocks((2, rows, groups * block_size), seed, log10_scale)
    y, s = act_quant(x, block_size, scale_fmt=scale_fmt, backend="reference")
    assert y.dtype == torch.float8_e4m3fn and y.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (2, rows, groups)

    amax = x.unflatten(-1, (groups, block_size)).abs().amax(-1)
    floor = amax.clamp_min(1e-4) / FP8_MAX
    if scale_fmt is None:
        assert torch.equal(s, floor)
    else:  # smallest power of two >= the plain scale
        assert torch.all(s >= floor) and torch.all(s < 2 * floor)
        assert torch.equal(torch.exp2(torch.log2(s).round()), s)

    s_full = s.repeat_interleave(block_size, -1)
    deq = y.float() * s_full
    assert not deq.isnan().any()
    err = (x - deq).abs()
    assert torch.all(err <= elementwise_bound(x, s_full))
    # 16 * scale, with scale = amax / 448 (or up to twice that for power-of-two scales)
    block_fraction = 1 / 28 if scale_fmt is None else 1 / 14
    block_bound = (amax.clamp_min(1e-4) * block_fraction).repeat_interleave(block_size, -1)
    assert torch.all(err <= block_bound * (1 + FP32_SLACK))


def test_act_quant_zero_blocks_give_zero_and_finite_scale():
    x = torch.zeros(3, 64)
    y, s = act_quant(x, 32, backend="reference")
    assert torch.all(y.float() == 0)
    assert torch.all(s == 1e-4 / FP8_MAX)


def test_act_quant_saturates_at_fp8_max():
    # The block max maps to +-448 exactly and nothing exceeds it (the format has no inf).
    x = torch.tensor([[3.0e38, -3.0e38] + [1.0] * 14])
    y, s = act_quant(x, 16, backend="reference")
    assert y.float().abs().max() == FP8_MAX
    assert torch.isfinite(y.float()).all()


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 80),
    cols=st.integers(1, 80),
    block_size=st.sampled_from([16, 32]),
    log10_scale=st.floats(-4, 4),
    seed=st.integers(0, 2**16),
)
def test_weight_quant_roundtrip_bounded_by_block_amax(rows, cols, block_size, log10_scale, seed):
    w = random_blocks((rows, cols), seed, log10_scale, zero_every=5)
    q, s = weight_quant(w, block_size, backend="reference")
    grid = (math.ceil(rows / block_size), math.ceil(cols / block_size))
    assert q.shape == w.shape and s.shape == grid

    deq = weight_dequant(q, s, block_size, out_dtype=torch.float32, backend="reference")
    s_full = expand_block_scales(s, w.shape, block_size)
    amax_full = expand_block_scales(s * FP8_MAX, w.shape, block_size)
    err = (w - deq).abs()
    assert torch.all(err <= elementwise_bound(w, s_full))
    assert torch.all(err <= amax_full / 28 * (1 + FP32_SLACK))
    # Scales really are per-block amax / 448 (padding outside the weight does not count).
    padded = torch.zeros(grid[0] * block_size, grid[1] * block_size)
    padded[:rows, :cols] = w.abs()
    amax = padded.reshape(grid[0], block_size, grid[1], block_size).amax(dim=(1, 3))
    assert torch.equal(s, amax.clamp_min(1e-4) / FP8_MAX)


def blockwise_gemm_float64(a, a_s, b, b_s, block_size):
    """The kernel's loop, spelled out: per K block, partial product times both scales."""
    k_blocks = a.shape[-1] // block_size
    a2, a_s2 = a.reshape(-1, a.shape[-1]).double(), a_s.reshape(-1, k_blocks).double()
    b_s_rows = b_s.double().repeat_interleave(block_size, 0)[: b.shape[0]]
    out = torch.zeros(a2.shape[0], b.shape[0], dtype=torch.float64)
    for k in range(k_blocks):
        cols = slice(k * block_size, (k + 1) * block_size)
        partial = a2[:, cols] @ b.double()[:, cols].T
        out += partial * a_s2[:, k, None] * b_s_rows[None, :, k]
    return out.reshape(*a.shape[:-1], b.shape[0])


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 20),
    n=st.integers(1, 70),
    k_blocks=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_fp8_gemm_ref_matches_blockwise_definition(m, n, k_blocks, seed):
    block_size = 16
    g = torch.Generator().manual_seed(seed)
    a, a_s = act_quant(torch.randn(2, m, k_blocks * block_size, generator=g), block_size)
    b, b_s = weight_quant(torch.randn(n, k_blocks * block_size, generator=g), block_size)
    out = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="reference")
    assert out.shape == (2, m, n)
    exact = blockwise_gemm_float64(a, a_s, b, b_s, block_size)
    # fp32 accumulation of K terms: relative error of each dot product <= K * 2^-24 of sum |ab|.
    magnitude = blockwise_gemm_float64(
        a.float().abs().to(a.dtype), a_s, b.float().abs().to(b.dtype), b_s, block_size
    )
    tol = k_blocks * block_size * 2.0**-23 * magnitude + 1e-30
    assert torch.all((out.double() - exact).abs() <= tol)


def test_fp8_gemm_output_dtypes():
    a, a_s = act_quant(torch.randn(3, 32), 16)
    b, b_s = weight_quant(torch.randn(16, 32), 16)
    ref = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        out = fp8_gemm(a, a_s, b, b_s, out_dtype=dtype)
        assert out.dtype == dtype
        assert torch.equal(out, ref.to(dtype))


def test_empty_inputs():
    a, a_s = act_quant(torch.randn(0, 32), 16)
    assert a.shape == (0, 32) and a_s.shape == (0, 2)
    b, b_s = weight_quant(torch.randn(16, 32), 16)
    assert fp8_gemm(a, a_s, b, b_s).shape == (0, 16)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: act_quant(torch.randn(2, 48), 32), ValueError, "multiple of block_size=32"),
        (lambda: act_quant(torch.randn(2, 48), 24), ValueError, "power of two"),
        (lambda: act_quant(torch.randn(2, 32).double(), 32), TypeError, "float32, bfloat16"),
        (lambda: act_quant(torch.randn(2, 32), 32, scale_fmt="e8"), ValueError, "ue8m0"),
        (lambda: act_quant(torch.randn(2, 32), 32, backend="cuda"), ValueError, "unknown backend"),
        (lambda: weight_quant(torch.randn(2, 3, 32), 16), ValueError, "2-D"),
        (
            lambda: weight_dequant(*weight_quant(torch.randn(40, 32), 16), block_size=32),
            ValueError,
            "pass the block_size",
        ),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fp8_gemm_checks_shapes():
    a, a_s = act_quant(torch.randn(3, 64), 32)
    b, b_s = weight_quant(torch.randn(32, 64), 32)
    with pytest.raises(ValueError, match=r"a @ b.T"):
        fp8_gemm(a, a_s, b.T.contiguous(), b_s)
    with pytest.raises(ValueError, match="same block_size"):
        fp8_gemm(a, a_s, *weight_quant(torch.randn(32, 64), 16))
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        fp8_gemm(a.float(), a_s, b, b_s)
    with pytest.raises(ValueError, match="does not match a"):
        fp8_gemm(a, a_s[:2], b, b_s)


def test_triton_backend_refuses_cpu_tensors():
    from ismail_kernels import triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    with pytest.raises(ValueError, match="interpret"):
        act_quant(torch.randn(2, 32), 32, backend="triton")
