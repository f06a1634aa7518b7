"""The GPU code path compiles to a cubin for Hopper and Ada without a GPU (Triton's AOT compiler).

This is what CI without a GPU can check of the compiled kernels: they lower through Triton's
pipeline and the bundled ptxas, use FP8 tensor-core instructions for the GEMM and the hardware's
saturating fp32 -> e4m3 conversion, and fit in shared memory.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from ismail_kernels.aot import compilable, compile_kernels  # noqa: E402

H100_SHARED_MEMORY = 227 * 1024
pytestmark = pytest.mark.skipif(
    not compilable(), reason="TRITON_INTERPRET=1 at import: kernels are interpreter objects"
)


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    kernels = compile_kernels(arch=90, block_size=128)
    assert set(kernels) == {"act_quant", "weight_quant", "weight_dequant", "fp8_gemm"}
    for name, kernel in kernels.items():
        assert kernel.asm["cubin"], name
        assert kernel.metadata.shared <= H100_SHARED_MEMORY, name
    for name in ("act_quant", "weight_quant"):
        assert "cvt.rn.satfinite.e4m3x2.f32" in kernels[name].asm["ptx"]
        assert "div.rn.f32" in kernels[name].asm["ptx"]  # IEEE division, as the reference
    gemm = kernels["fp8_gemm"]
    assert "wgmma.mma_async" in gemm.asm["ptx"] and "e4m3" in gemm.asm["ptx"]
    assert "cp.async" in gemm.asm["ptx"]  # loads are software-pipelined


@pytest.mark.slow
def test_gemm_compiles_for_ada_with_small_tiles():
    kernels = compile_kernels(
        arch=89, block_size=64, gemm_tile={"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4
    )
    assert "mma.sync" in kernels["fp8_gemm"].asm["ptx"]
    assert "e4m3" in kernels["fp8_gemm"].asm["ptx"]
