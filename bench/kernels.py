"""FP8 kernels: fp8_gemm against torch._scaled_mm and bf16 matmul, quantization bandwidth, decode.

Tables (each with its peer measured in the same run):
  1. GEMM TFLOP/s: ismail_kernels.fp8_gemm vs torch._scaled_mm with the same 1x128 / 128x128
     block scales (row-wise scales where block scaling is unavailable) vs bf16 torch.matmul, for
     square sizes and the Linear shapes of the ismail-512 / ismail-1024 presets at decode
     (M = 1, 64) and prefill (M = 4096) sizes.
  2. GB/s of act_quant and weight_dequant vs a device-to-device copy (the memory-bandwidth peer).
  3. End-to-end greedy decode tokens/s and weight memory of an FP8-quantized model vs bf16.

On a CUDA GPU with FP8 support (sm_89+) the Triton kernels run. Without one the script runs the
same code on CPU with the PyTorch reference path at small sizes and says so: those figures are
NOT GPU figures. `--compile-check` compiles every fp8_gemm autotuning config for sm_90 with
Triton's AOT compiler (no GPU needed) and prints its shared memory.

  uv run python bench/kernels.py [--quick] [--compile-check]
  # on the GPU machine (no uv there):
  PYTHONPATH=packages/ismail-core/src:packages/ismail-kernels/src:packages/tr-tokenizer/src \
      python3 bench/kernels.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from ismail_core.fp8 import fp8_config
from ismail_core.model.cache import row_block_tables
from ismail_kernels import (
    act_quant,
    fp8_gemm,
    quantize_model,
    resolve_backend,
    weight_dequant,
    weight_quant,
)
from torch import nn


@dataclass
class Setup:
    """Where and how this run measures."""

    device: torch.device
    backend: str  # "triton" on a capable GPU, else "reference"
    quick: bool

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def measure_ms(fn: Callable[[], object], setup: Setup, min_time_s: float = 0.2) -> float:
    """Median milliseconds of fn over enough repetitions to fill min_time_s (after warm-up)."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if setup.on_gpu else (lambda: None)
    sync()
    times = []
    deadline = time.perf_counter() + min_time_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        if setup.on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


# --------------------------------------------------------------------------- GEMM


def preset_layer_shapes(preset: str) -> dict[tuple[int, int], str]:
    """(N, K) -> layer name of each distinct Linear shape in a preset (built on the meta device)."""
    from ismail_core import ModelConfig, Transformer

    with torch.device("meta"):
        model = Transformer(ModelConfig.preset(preset))
    shapes: dict[tuple[int, int], str] = {}
    for name, module in model.named_modules():
        if type(module) is nn.Linear and module.in_features % 128 == 0 and "head" not in name:
            shapes.setdefault((module.out_features, module.in_features), name.split(".")[-1])
    return shapes


def gemm_cases(setup: Setup) -> list[tuple[str, int, int, int]]:
    """(label, M, N, K) to measure."""
    if not setup.on_gpu:  # the reference path on 2 CPU cores: small sizes only
        return [("square", s, s, s) for s in (256, 512)] + [
            (f"ismail-512 {name}", m, n, k)
            for (n, k), name in list(preset_layer_shapes("ismail-512").items())[:2]
            for m in (1, 16)
        ]
    squares = (1024, 4096) if setup.quick else (1024, 2048, 4096, 8192)
    cases = [("square", s, s, s) for s in squares]
    for preset in ("ismail-1024",) if setup.quick else ("ismail-512", "ismail-1024"):
        for (n, k), name in preset_layer_shapes(preset).items():
            cases += [(f"{preset} {name}", m, n, k) for m in (1, 64, 4096)]
    return cases


def row_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row FP8 quantization for torch._scaled_mm's row-wise recipe: (fp8, (rows, 1) scales)."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-4) / 448.0
    return (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def scaled_mm_peer(a, a_s, b, b_s, x, w) -> tuple[Callable[[], torch.Tensor] | None, str]:
    """torch._scaled_mm with DeepSeek block scales if this build/GPU supports them, else row-wise.

    Block recipe (1x128, 128x128): scale_a (M, K/128) stored M-major, scale_b (K/128, N/128)
    stored K-major; both are dequantization multipliers, like ours. cuBLASLt may want M to be a
    multiple of 4 (vLLM pads it), so that is tried second, with zero rows.
    """
    pad = -a.shape[0] % 4
    for rows in (0, pad) if pad else (0,):
        a_p = torch.cat([a, a.new_zeros(rows, a.shape[1])]) if rows else a
        a_s_p = torch.cat([a_s, a_s.new_ones(rows, a_s.shape[1])]) if rows else a_s
        scale_a = a_s_p.t().contiguous().t()

        def block(a_p=a_p, scale_a=scale_a):
            return torch._scaled_mm(
                a_p, b.t(), scale_a=scale_a, scale_b=b_s.t(), out_dtype=torch.bfloat16
            )

        try:
            block()
            return block, "block" + (f" (M+{rows})" if rows else "")
        except (RuntimeError, ValueError, NotImplementedError):
            continue  # not supported here (torch build, GPU or shape): next variant
    a_row, a_row_s = row_quant(x)
    w_row, w_row_s = row_quant(w)
    w_row_s = w_row_s.t().contiguous()

    def rowwise():
        return torch._scaled_mm(
            a_row, w_row.t(), scale_a=a_row_s, scale_b=w_row_s, out_dtype=torch.bfloat16
        )

    try:
        rowwise()
        return rowwise, "row"
    except (RuntimeError, ValueError, NotImplementedError) as err:
        return None, f"n/a ({type(err).__name__})"


def gemm_row(setup: Setup, label: str, m: int, n: int, k: int) -> list:
    """One table row: TFLOP/s of fp8_gemm, the _scaled_mm peer and bf16 matmul for (M, N, K)."""
    x = torch.randn(m, k, device=setup.device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=setup.device, dtype=torch.bfloat16) * 0.05
    a, a_s = act_quant(x, backend=setup.backend)
    b, b_s = weight_quant(w, backend=setup.backend)

    def ours():
        return fp8_gemm(a, a_s, b, b_s, backend=setup.backend)

    peer, recipe = scaled_mm_peer(a, a_s, b, b_s, x, w)
    # Check before timing: fp32 output of the timed backend against the reference path.
    ref = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend="reference")
    got = fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32, backend=setup.backend)
    err = ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    times = (
        measure_ms(ours, setup),
        measure_ms(peer, setup) if peer is not None else float("nan"),
        measure_ms(lambda: x @ w.T, setup),
    )
    tflops = [2.0 * m * n * k / t / 1e9 for t in times]
    return [label, m, n, k, *(f"{v:.3g}" for v in tflops), recipe] + [
        f"{tflops[0] / tflops[1]:.2f}",
        f"{tflops[0] / tflops[2]:.2f}",
        f"{err:.1e}",
    ]


def bench_gemm(setup: Setup) -> None:
    rows = [gemm_row(setup, *case) for case in gemm_cases(setup)]
    print_table(
        f"fp8_gemm TFLOP/s ({setup.backend} backend on {setup.device}); rel err: fp32 output "
        "vs the reference path",
        ["shape", "M", "N", "K", "fp8_gemm", "_scaled_mm", "bf16 mm", "recipe"]
        + ["vs _scaled_mm", "vs bf16", "rel err"],
        rows,
    )


# --------------------------------------------------------------------------- bandwidth


def bench_bandwidth(setup: Setup) -> None:
    rows_n, cols = (
        ((16384, 8192) if not setup.quick else (8192, 4096))
        if setup.on_gpu
        else (
            1024,
            1024,
        )
    )
    x = torch.randn(rows_n, cols, device=setup.device, dtype=torch.bfloat16)
    w_fp8, w_s = weight_quant(x, backend=setup.backend)
    numel = x.numel()
    scale_bytes = 4 * numel // 128
    copy_dst = torch.empty_like(x)
    cases = [
        ("copy (peer)", lambda: copy_dst.copy_(x), 4 * numel),
        ("act_quant", lambda: act_quant(x, backend=setup.backend), 3 * numel + scale_bytes),
        (
            "weight_dequant",
            lambda: weight_dequant(w_fp8, w_s, backend=setup.backend),
            3 * numel + 4 * w_s.numel(),
        ),
    ]
    results = [(name, nbytes / measure_ms(fn, setup) / 1e6) for name, fn, nbytes in cases]
    copy_gbs = results[0][1]
    rows = [[name, f"{gbs:.3g}", f"{100 * gbs / copy_gbs:.0f}%"] for name, gbs in results]
    print_table(
        f"Memory bandwidth, {rows_n}x{cols} bf16 <-> fp8 "
        f"({setup.backend} backend on {setup.device})",
        ["kernel", "GB/s", "of copy"],
        rows,
    )


# --------------------------------------------------------------------------- decode


def decode_tokens_per_s(model, batch: int, prompt: int, steps: int, setup: Setup) -> float:
    ids = torch.randint(0, model.cfg.vocab_size, (batch, prompt), device=setup.device)
    tables = row_block_tables(batch, prompt + steps + 1, 16, device=setup.device)
    cache = model.new_cache(tables.numel(), 16, device=setup.device)
    kw = {"cache": cache, "block_tables": tables}

    def run() -> None:
        with torch.no_grad():
            logits = model(ids, **kw)
            token = logits[:, -1].argmax(-1, keepdim=True)
            for pos in range(prompt, prompt + steps):
                token = model(token, start_pos=pos, **kw)[:, -1].argmax(-1, keepdim=True)

    run()  # warm-up (and autotuning)
    if setup.on_gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if setup.on_gpu:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bench_decode(setup: Setup) -> None:
    from ismail_core import ModelConfig, Transformer

    if setup.on_gpu:
        preset, overrides, block, steps = "ismail-512", {}, 128, 64
    else:  # the reference path on CPU: the tiny preset with block-compatible widths
        preset, overrides, block, steps = "tiny", {"n_layers": 2}, 32, 8
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, **overrides)
    dtype = torch.bfloat16 if setup.on_gpu else torch.float32
    base = Transformer(cfg).to(device=setup.device, dtype=dtype).eval()
    fp8 = quantize_model(
        Transformer(cfg).to(device=setup.device, dtype=dtype).eval(), fp8_config(block_size=block)
    )
    rows = []
    for batch in (1, 16):
        tps = [decode_tokens_per_s(m, batch, 32, steps, setup) for m in (base, fp8)]
        rows.append([batch, f"{tps[0]:.1f}", f"{tps[1]:.1f}", f"{tps[1] / tps[0]:.2f}"])
    print_table(
        f"Greedy decode, {preset} ({dtype} vs FP8 block {block}) on {setup.device}",
        ["batch", f"{str(dtype).removeprefix('torch.')} tok/s", "fp8 tok/s", "fp8 / base"],
        rows,
    )
    mb = [weight_bytes(m) / 2**20 for m in (base, fp8)]
    print(
        f"weights: {mb[0]:.1f} MiB -> {mb[1]:.1f} MiB FP8 ({mb[1] / mb[0]:.2f}x; embeddings, "
        "norms, router, LM head and wkv_b stay in high precision)"
    )


# --------------------------------------------------------------------------- compile check


def compile_check() -> None:
    """AOT-compile every fp8_gemm autotuning config (and the other kernels) for sm_90."""
    from ismail_kernels import triton_kernels as tk
    from ismail_kernels.aot import compile_kernels

    rows = []
    for config in tk._gemm_configs():
        t0 = time.perf_counter()
        kernels = compile_kernels(
            arch=90,
            gemm_tile=config.kwargs,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
        gemm = kernels["fp8_gemm"]
        rows.append(
            [config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps]
            + [config.num_stages, f"{gemm.metadata.shared / 1024:.0f}"]
            + ["yes" if "wgmma.mma_async" in gemm.asm["ptx"] else "no"]
            + [f"{time.perf_counter() - t0:.1f}"]
        )
    print_table(
        "fp8_gemm autotuning configs compiled for sm_90 (no GPU needed)",
        ["BLOCK_M", "BLOCK_N", "warps", "stages", "smem KiB", "wgmma", "compile s"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument(
        "--compile-check",
        action="store_true",
        help="only compile every autotuning config for sm_90 (works without a GPU)",
    )
    args = parser.parse_args()
    if args.compile_check:
        compile_check()
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = resolve_backend("auto", device)
    if backend == "interpret":
        backend = "reference"  # timing the interpreter means nothing
    setup = Setup(device, backend, args.quick)
    if backend != "triton":
        print(
            "NOTE: no CUDA GPU with FP8 support (sm_89+) here: running on "
            f"{device} with the PyTorch reference path at small sizes. These are NOT GPU "
            "figures and the Triton kernels are not timed; run this on a GPU for the real "
            "tables (`--compile-check` verifies the GPU kernels compile for sm_90)."
        )
    else:
        name = torch.cuda.get_device_name(device)
        print(f"device: {name}, torch {torch.__version__}, backend triton")
    bench_gemm(setup)
    bench_bandwidth(setup)
    bench_decode(setup)


if __name__ == "__main__":
    main()
