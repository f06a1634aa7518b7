"""Training-step benchmark: ismail's trainer recipe on `tiny` (and `ismail-512` on a GPU).

Rows, all measured in this run with the same training step (AdamW with decay groups, the same
precision, gradient clipping) on random token batches:
  ismail MoE       the preset as `ismail train` builds it (with the MoE bias update each step)
  transformers     transformers' DeepseekV3ForCausalLM with the same config and weights
                   (exported with ismail_core.hf.export_hf)
  ismail dense     a dense model whose active parameter count matches the MoE model's

Each measurement runs in its own subprocess so peak memory is that process's own high-water
mark (CPU: peak RSS; CUDA: max allocated), and the three rows alternate over several rounds
(medians are printed) so that load from other jobs on a shared machine hits all of them alike.
Tokens per CPU-second (process time) is given next to wall-clock tokens/s. MFU uses the
model's flops_per_token (nanoGPT count, active parameters).

    uv run python bench/train.py                  # tiny on CPU
    uv run python bench/train.py --device cuda    # tiny and ismail-512 on a GPU
    uv run python bench/train.py --rows transformers "ismail MoE"   # skip the dense row
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SHAPES = {"tiny": (8, 256), "ismail-512": (8, 512)}  # (batch, seq) per step
VARIANTS = ("transformers", "ismail MoE", "ismail dense")  # the peer first: ratios need it


def _config(preset: str, variant: str):
    from ismail_core import ModelConfig, Transformer

    cfg = ModelConfig.preset(preset)
    if variant != "ismail dense":
        return cfg
    target = Transformer(cfg).num_parameters(active_only=True)
    best = None
    # inter_dim for an all-dense model with the MoE model's active parameters (meta device:
    # counting parameters allocates nothing).
    with torch.device("meta"):
        for inter in range(64, 8 * cfg.dim + 1, 16):
            dense = ModelConfig.preset(
                preset, n_routed_experts=0, n_dense_layers=cfg.n_layers, inter_dim=inter
            )
            gap = abs(Transformer(dense).num_parameters(active_only=True) - target)
            if best is None or gap < best[0]:
                best = (gap, dense)
    return best[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(preset: str, variant: str, device: str, precision: str, steps: int) -> dict:
    """Time `steps` training steps of one variant; returns the measurements."""
    from ismail_core import Transformer
    from ismail_core.train.config import OptimSection
    from ismail_core.train.optimizer import build_optimizer
    from ismail_core.train.precision import build_precision

    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = _config(preset, variant)
    ours = Transformer(cfg)
    flops_per_token = ours.flops_per_token(SHAPES[preset][1])
    active = ours.num_parameters(active_only=True)
    if variant == "transformers":
        import transformers
        from ismail_core.hf import export_hf

        with tempfile.TemporaryDirectory() as tmp:
            export_hf(ours, tmp)
            model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        del ours
    else:
        model = ours
    model.to(dev).train()
    optimizer = build_optimizer(model, OptimSection(), dev)
    prec = build_precision(precision, dev)
    batch, seq = SHAPES[preset]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen).to(dev)

    def step() -> None:
        with prec.autocast():
            out = model(ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if hasattr(model, "update_expert_bias"):
            model.update_expert_bias()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step()  # warm-up: allocates optimizer state, autotunes kernels
    step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _rss_mb()
    tokens = steps * batch * seq
    return {
        "tok_s": tokens / wall,
        "tok_cpu_s": tokens / cpu,
        "peak_mb": peak,
        "active_m": active / 1e6,
        "flops_per_token": flops_per_token,
        "precision": prec.name,
    }


@functools.lru_cache
def _peak_flops(device: str, precision: str) -> float:
    """Peak FLOP/s for MFU in the dtype the rows trained in (see metrics.peak_flops)."""
    from ismail_core.train.metrics import peak_flops
    from ismail_core.train.precision import Precision

    dtype = Precision(precision, torch.device(device)).compute_dtype
    return peak_flops(torch.device(device), dtype)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per row")
    parser.add_argument(
        "--rows", nargs="+", choices=VARIANTS, default=VARIANTS, help="rows to measure"
    )
    parser.add_argument("--worker", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        # Every row gets the process settings `ismail train` uses (torch is already imported
        # here, so only the allocator part takes effect).
        from ismail_core.runtime import tune_process

        tune_process()
        print(json.dumps(worker(*args.worker, args.device, args.precision, args.steps)))
        return

    presets = ["tiny"] + (["ismail-512"] if args.device.startswith("cuda") else [])
    print(
        f"device {args.device}, {torch.get_num_threads()} threads, {args.rounds} rounds of "
        f"{args.steps} timed steps (medians)"
    )
    header = (
        f"{'preset':<11} {'model':<13} {'active M':>8} {'prec':>5} {'tok/s':>8} "
        f"{'tok/cpu-s':>9} {'MFU':>6} {'peak MB':>8} {'vs tf':>6} {'cpu vs tf':>9}"
    )
    print(header)
    print("-" * len(header))
    variants = [v for v in VARIANTS if v in args.rows]  # in VARIANTS' order: the peer first
    for preset in presets:
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                cmd = [sys.executable, __file__, "--worker", preset, variant]
                cmd += ["--device", args.device, "--precision", args.precision]
                cmd += ["--steps", str(args.steps)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{preset} {variant} failed: {done.stderr.strip()[-300:]}")
                    continue
                runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {
            v: {
                **r[0],
                "tok_s": statistics.median(x["tok_s"] for x in r),
                "tok_cpu_s": statistics.median(x["tok_cpu_s"] for x in r),
                "peak_mb": max(x["peak_mb"] for x in r),
            }
            for v, r in runs.items()
            if r
        }
        peer = rows.get("transformers")
        for variant, r in rows.items():
            ratio = cpu_ratio = ""
            if peer and variant != "transformers":
                ratio = f"{r['tok_s'] / peer['tok_s']:.2f}x"
                cpu_ratio = f"{r['tok_cpu_s'] / peer['tok_cpu_s']:.2f}x"
            mfu = r["flops_per_token"] * r["tok_s"] / _peak_flops(args.device, r["precision"])
            print(
                f"{preset:<11} {variant:<13} {r['active_m']:>8.1f} {r['precision']:>5} "
                f"{r['tok_s']:>8.0f} {r['tok_cpu_s']:>9.0f} {mfu:>6.1%} {r['peak_mb']:>8.0f} "
                f"{ratio:>6} {cpu_ratio:>9}"
            )
    print(
        "MFU on CPU is relative to a measured 1024^3 matmul (noisy on a shared machine); on "
        "GPUs to the bf16 peak. 'vs tf' = over transformers' DeepseekV3, same config."
    )


if __name__ == "__main__":
    main()
