"""The Triton kernels themselves, run by Triton's CPU interpreter, against the PyTorch reference.

No TRITON_INTERPRET needed at import: backend="interpret" runs the kernels' source through the
interpreter whatever the variable was when triton was imported, so these tests coexist with
other packages in one pytest session. Shapes are tiny (the interpreter costs ~1 ms and more per
program instance) but cover ragged edges, zero blocks, saturation, subnormal fp8 codes and 3-D
inputs.

Tolerances. act_quant and weight_quant must match the reference exactly: the kernel rounds to the
e4m3 grid itself (IEEE division, integer exponent arithmetic), so its final fp32 -> fp8 cast is
exact and sidesteps the interpreter's faulty cast (dropped rounding carries, no saturation, wrong
subnormals). fp8_gemm sums the same exact fp8 products in a different order: fp32 outputs agree
to K * 2^-23 of sum |a||b|. The interpreter converts fp32 -> bf16 by truncation instead of
rounding, so bf16 outputs may differ by one bf16 unit in the last place (2^-7 relative).
"""

from __future__ import annotations

import pytest
import torch
from ismail_kernels import act_quant, fp8_gemm, resolve_backend, weight_dequant, weight_quant
from ismail_kernels.reference import expand_block_scales

pytestmark = pytest.mark.skipif(
    not __import__("ismail_kernels").triton_available(), reason="triton is not installed"
)


def hard_activations(shape, seed=0) -> torch.Tensor:
    """Zero groups, an outlier far above the rest (most values land on subnormal fp8 codes),
    values that round up across a power of two, and ordinary Gaussian rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    flat = x.view(-1, shape[-1])
    rows = flat.shape[0]
    flat[0, :32] = 0.0  # a whole zero group
    if rows > 1:
        flat[1, 5] = 1.0e4  # outlier: its group's other values become tiny after scaling
    if rows > 2:
        flat[2, :16] = torch.linspace(-1.0, 1.0, 16) * 124.0 / 448.0 * 0.999  # 124 rounds to 128
        flat[2, 16] = 1.0
    if rows > 3:
        flat[3] *= 1e-7  # whole row below the 1e-4 amax floor
    return x


def assert_same_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal as numbers (a signed zero may come out unsigned)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(a.float(), b.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale_fmt", [None, "ue8m0"])
def test_act_quant_matches_reference_exactly(dtype, scale_fmt):
    # (2, 37, 64) with 32-wide groups: 74 rows over 32-row programs leaves a ragged last program.
    x = hard_activations((2, 37, 64)).to(dtype)
    y, s = act_quant(x, 32, scale_fmt=scale_fmt, backend="interpret")
    y_ref, s_ref = act_quant(x, 32, scale_fmt=scale_fmt, backend="reference")
    assert_same_values(y, y_ref)
    assert torch.equal(s, s_ref)
    assert not y.float().isnan().any()


def test_act_quant_saturates_under_interpreter():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 3.0e38, -3.0e38, 1.0
    y, _ = act_quant(x, 32, backend="interpret")
    assert y.float()[0, :2].tolist() == [448.0, -448.0]


def test_weight_quant_and_dequant_match_reference():
    # 70 x 45 with 32 x 32 blocks: ragged in both directions; one zero block; one outlier.
    w = torch.randn(70, 45, generator=torch.Generator().manual_seed(1))
    w[:32, :32] = 0.0
    w[40, 40] = -5.0e3
    q, s = weight_quant(w, 32, backend="interpret")
    q_ref, s_ref = weight_quant(w, 32, backend="reference")
    assert_same_values(q, q_ref)
    assert torch.equal(s, s_ref)

    for dtype in (torch.float32, torch.float16):
        out = weight_dequant(q, s, 32, out_dtype=dtype, backend="interpret")
        assert torch.equal(out, weight_dequant(q, s, 32, out_dtype=dtype, backend="reference"))
    out = weight_dequant(q, s, 32, out_dtype=torch.bfloat16, backend="interpret")
    ref = weight_dequant(q, s, 32, out_dtype=torch.float32, backend="reference")
    assert torch.all((out.float() - ref).abs() <= ref.abs() * 2.0**-7)


def gemm_tolerance(a, a_s, b, b_s) -> torch.Tensor:
    a_abs = a.float().abs() * a_s.repeat_interleave(a.shape[-1] // a_s.shape[-1], -1)
    bs = b.shape[1] // b_s.shape[1]
    b_abs = b.float().abs() * expand_block_scales(b_s, b.shape, bs)
    return a.shape[-1] * 2.0**-23 * (a_abs @ b_abs.T)


@pytest.mark.parametrize(
    ("a_shape", "n"),
    [
        ((2, 9, 64), 96),  # 3-D activations, 18 rows over 16-row tiles
        ((1, 64), 80),  # one row (decode); N ragged against the 32-wide blocks and tiles
        ((33, 32), 32),  # one K block
    ],
)
def test_fp8_gemm_matches_reference(a_shape, n):
    g = torch.Generator().manual_seed(2)
    a, a_s = act_quant(hard_activations(a_shape), 32, backend="reference")
    b, b_s = weight_quant(torch.randn(n, a_shape[-1], generator=g), 32, backend="reference")
    out = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="interpret")
    ref = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="reference")
    assert out.shape == (*a_shape[:-1], n)
    assert torch.all((out - ref).abs() <= gemm_tolerance(a, a_s, b, b_s) + 1e-30)

    out16 = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, backend="interpret")
    assert torch.all((out16.float() - ref).abs() <= ref.abs() * 2.0**-7 + 1e-6)


def test_fp8_gemm_of_zeros_is_zero():
    a, a_s = act_quant(torch.zeros(5, 32), 32, backend="interpret")
    b, b_s = weight_quant(torch.zeros(32, 32), 32, backend="interpret")
    out = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="interpret")
    assert torch.equal(out, torch.zeros(5, 32))


def test_triton_interpret_env_selects_interpreter(monkeypatch):
    x = hard_activations((3, 64))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", x.device) == "interpret"
    y, s = act_quant(x, 32)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert resolve_backend("auto", x.device) == "reference"
    y_ref, s_ref = act_quant(x, 32)
    assert_same_values(y, y_ref)
    assert torch.equal(s, s_ref)
