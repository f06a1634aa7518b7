"""Compile the Triton kernels for a CUDA architecture ahead of time, without a GPU.

Triton's compiler and the ptxas it bundles run on any Linux machine, so CI can check that the
GPU code path lowers all the way to a cubin (FP8 tensor-core instructions included) even where
no GPU exists. Pointer arguments and N/K get the 16-divisibility hints a real launch derives
from aligned tensors, so the lowering matches what a launch on such tensors compiles.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from . import triton_kernels as tk

_ALIGNED = [["tt.divisibility", 16]]


def _source(
    kernel: JITFunction,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    aligned: list[str],
) -> ASTSource:
    """A kernel's source for triton.compile: constexprs bound, `aligned` arguments hinted as
    16-divisible."""
    attrs = {(kernel.arg_names.index(name),): _ALIGNED for name in aligned}
    for name in constexprs:
        signature[name] = "constexpr"
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def compilable() -> bool:
    """False when TRITON_INTERPRET=1 at import turned the kernels into interpreter objects."""
    return isinstance(tk._fp8_gemm_kernel, JITFunction)


def _sources(block_size: int, tile: dict[str, int]) -> dict[str, ASTSource]:
    """The four kernels' sources with the signatures and constants a launch gives them;
    `tile` holds the GEMM's BLOCK_M/BLOCK_N/GROUP_M."""
    quant_sig = {"x_ptr": "*bf16", "y_ptr": "*fp8e4nv", "s_ptr": "*fp32"}
    quant_sig |= {"M": "i32", "N": "i32", "s_cols": "i32"}
    return {
        "act_quant": _source(
            tk._block_quant_kernel,
            dict(quant_sig),
            {"BLOCK_M": tk.ACT_QUANT_ROWS, "BLOCK_N": block_size, "ROW_SCALES": True}
            | {"POW2_SCALES": False},
            ["x_ptr", "y_ptr", "s_ptr", "N"],
        ),
        "weight_quant": _source(
            tk._block_quant_kernel,
            dict(quant_sig),
            {"BLOCK_M": block_size, "BLOCK_N": block_size, "ROW_SCALES": False}
            | {"POW2_SCALES": False},
            ["x_ptr", "y_ptr", "s_ptr", "N"],
        ),
        "weight_dequant": _source(
            tk._weight_dequant_kernel,
            {"x_ptr": "*fp8e4nv", "s_ptr": "*fp32", "y_ptr": "*bf16"}
            | {"M": "i32", "N": "i32", "s_cols": "i32"},
            {"BLOCK": block_size},
            ["x_ptr", "s_ptr", "y_ptr", "N"],
        ),
        "fp8_gemm": _source(
            tk._fp8_gemm_kernel,
            {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*bf16"}
            | {"a_s_ptr": "*fp32", "b_s_ptr": "*fp32"}
            | {"M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32"},
            {**tile, "BLOCK_K": block_size},
            ["a_ptr", "b_ptr", "c_ptr", "a_s_ptr", "b_s_ptr", "N", "K"],
        ),
    }


def compile_kernels(
    arch: int = 90,
    block_size: int = 128,
    gemm_tile: dict[str, int] | None = None,
    num_warps: int = 8,
    num_stages: int = 4,
) -> dict[str, Any]:
    """Compile act_quant, weight_quant, weight_dequant and fp8_gemm for sm_<arch>.

    Returns Triton CompiledKernel objects by name; `.asm` holds "ttgir", "ptx" and "cubin",
    `.metadata.shared` the shared memory one program uses. gemm_tile overrides
    BLOCK_M/BLOCK_N/GROUP_M (default 128/128/8).
    """
    if not compilable():
        raise RuntimeError(
            "TRITON_INTERPRET was set when ismail_kernels was imported, so its kernels are "
            "interpreter objects; compile in a process started without TRITON_INTERPRET"
        )
    target = GPUTarget("cuda", arch, 32)
    tile = {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, **(gemm_tile or {})}
    sources = _sources(block_size, tile)
    # FP fusion on, as at launch with Triton's default (stated, to keep Triton 3.9+ quiet).
    options = {"enable_fp_fusion": True}
    gemm_options = options | {"num_warps": num_warps, "num_stages": num_stages}
    return {
        name: triton.compile(
            src, target=target, options=gemm_options if "gemm" in name else options
        )
        for name, src in sources.items()
    }
