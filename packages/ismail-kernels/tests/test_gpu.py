"""Compiled Triton kernels on a CUDA GPU against the PyTorch reference (marker `gpu`).

Quantization is exact on the GPU too (IEEE division, rounding done in fp32 integer arithmetic,
then an exact cast), so act_quant and weight_quant must match the reference bit for bit. The GEMM
differs in summation order and, on Hopper, in the tensor cores' reduced-precision FP8
accumulation within each 128-wide K block (about 14 bits, DeepSeek-V3 section 3.3.2), so it is
held to 2^-12 of sum |a||b| (plus bf16 rounding, 2^-8 relative).
"""

from __future__ import annotations

import pytest
import torch
from ismail_kernels import (
    FP8Config,
    act_quant,
    fp8_gemm,
    quantize_model,
    resolve_backend,
    weight_dequant,
    weight_quant,
)

pytestmark = pytest.mark.gpu


def _needs_fp8_gpu():
    if resolve_backend("auto", torch.device("cuda")) != "triton":
        pytest.skip("needs a GPU with compute capability >= 8.9 and triton")


@pytest.mark.parametrize("shape", [(3, 5, 512), (1, 128), (4097, 256)])
@pytest.mark.parametrize("scale_fmt", [None, "ue8m0"])
def test_act_quant_gpu_matches_reference(shape, scale_fmt):
    _needs_fp8_gpu()
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
    x.view(-1, shape[-1])[0, :128] = 0
    x.view(-1, shape[-1])[-1, 7] = 1e4
    y, s = act_quant(x, scale_fmt=scale_fmt, backend="triton")
    y_ref, s_ref = act_quant(x, scale_fmt=scale_fmt, backend="reference")
    assert torch.equal(s, s_ref)
    assert torch.equal(y.float(), y_ref.float())


def test_weight_quant_and_dequant_gpu_match_reference():
    _needs_fp8_gpu()
    w = torch.randn(300, 700, device="cuda")  # ragged against 128 x 128 blocks
    w[:128, :128] = 0
    q, s = weight_quant(w, backend="triton")
    q_ref, s_ref = weight_quant(w, backend="reference")
    assert torch.equal(s, s_ref) and torch.equal(q.float(), q_ref.float())
    for dtype in (torch.float32, torch.bfloat16):
        out = weight_dequant(q, s, out_dtype=dtype, backend="triton")
        assert torch.equal(out, weight_dequant(q, s, out_dtype=dtype, backend="reference"))


@pytest.mark.parametrize(("m", "n", "k"), [(1, 512, 256), (37, 384, 512), (1024, 1024, 1024)])
def test_fp8_gemm_gpu_matches_reference(m, n, k):
    _needs_fp8_gpu()
    a, a_s = act_quant(torch.randn(m, k, device="cuda"))
    b, b_s = weight_quant(torch.randn(n, k, device="cuda"))
    ref = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="reference")
    magnitude = fp8_gemm(
        a.float().abs().to(a.dtype), a_s, b.float().abs().to(b.dtype), b_s,
        out_dtype=torch.float32, backend="reference",
    )  # fmt: skip
    for dtype in (torch.float32, torch.bfloat16):
        out = fp8_gemm(a, a_s, b, b_s, out_dtype=dtype, backend="triton")
        tol = magnitude * 2.0**-12 + (ref.abs() * 2.0**-8 if dtype == torch.bfloat16 else 0)
        assert torch.all((out.float() - ref).abs() <= tol)


def test_quantized_mlp_on_gpu_close_to_bf16():
    _needs_fp8_gpu()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
    mlp = mlp.cuda().to(torch.bfloat16)
    x = torch.randn(2, 9, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        exact = mlp(x).float()
        out = quantize_model(mlp, FP8Config())(x)
    assert out.dtype == torch.bfloat16
    # Each FP8 layer's relative RMS error stays below 2^-4 (see test_modules); two layers.
    assert (out.float() - exact).norm() / exact.norm() < 2 * 2.0**-4
