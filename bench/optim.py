"""Optimizers side by side: quality per step on the main job, memory on ismail-512.

quality  `ismail train` as the README runs it (tiny preset, built-in corpus, 200 steps, seed
         0) once per optimizer, evaluating every --eval-interval steps: each optimizer's
         validation bits per byte at every evaluation and the steps each needs to reach the
         first one's final figure (linear between evaluations). `ismail report` overlays the
         curves into --plot-dir. A run already complete in --work is read, not trained again
         (`ismail train` resumes it at its last step), so the runs may be made in parallel.
speed    seconds per step of the same job: --speed-steps steps of each optimizer in turn,
         --speed-rounds times (fresh runs, no evaluation), the median of the logged
         intervals after the first.
memory   ismail-512 for --memory-steps steps (batch 2 x 256 tokens) per optimizer, each in
         its own process: optimizer-state bytes (every tensor in its state dict) and the
         process's peak RSS. adamw8bit needs CUDA and is marked so on a CPU.

    uv run python bench/optim.py                           # all parts
    uv run python bench/optim.py --part memory
    uv run python bench/optim.py --part quality --runs adamw muon muon:muon_lr=0.01
    uv run python bench/optim.py --part quality --preset ismail-512 --steps 100 \
        --train-flags=--train.seq_len=256 --train-flags=--train.batch_size=4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MEMORY_OPTIMIZERS = ("adamw", "adamw8bit", "galore_adamw", "muon")


def parse_run(spec: str) -> tuple[str, str, dict[str, str]]:
    """'muon:muon_lr=0.01' -> (label, optimizer name, {optim field: value})."""
    name, _, rest = spec.partition(":")
    options = dict(item.split("=", 1) for item in rest.split(",") if item)
    return spec, name, options


def train_run(spec: str, out: Path, args: argparse.Namespace, steps: int, evals: int) -> Path:
    """A main-job run of `steps` steps (evaluating every `evals`; 0: only at the ends) with
    the optimizer `spec`; returns its run directory."""
    label, name, options = parse_run(spec)
    run_dir = out / label.replace(":", "_").replace("=", "").replace(",", "_")
    argv = [sys.executable, "-m", "ismail_core", "train", "--run.out_dir", str(run_dir)]
    argv += ["--preset", args.preset, *args.train_flags]
    argv += ["--train.steps", str(steps), "--eval.interval", str(evals)]
    argv += ["--train.threads", str(args.threads), "--log.progress", "false"]
    argv += ["--optim.name", name]
    for key, value in options.items():
        argv += [f"--optim.{key}", value]
    print(f"  training {label} ...", flush=True)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def validation_curve(run_dir: Path) -> dict[int, float]:
    """{step: validation bits per byte} of a run."""
    from ismail_core.train.metrics import read_metrics

    return {r["step"]: r["bits_per_byte"] for r in read_metrics(run_dir) if r["kind"] == "eval"}


def step_seconds(run_dir: Path) -> list[float]:
    """Seconds per step over each logged interval but the first (start-up, warm-up)."""
    from ismail_core.train.metrics import read_metrics

    train = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
    step_tokens = train[-1]["tokens"] / train[-1]["step"]
    return [step_tokens / r["tokens_per_s"] for r in train[1:]]


def steps_to_reach(evals: dict[int, float], target: float) -> float | None:
    """The first step at which the validation curve reaches `target` (linear between
    evaluations), or None if it never does."""
    points = sorted(evals.items())
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if v1 <= target:
            return s1 if v0 == v1 else s0 + (v0 - target) / (v0 - v1) * (s1 - s0)
    return None


def run_quality(args: argparse.Namespace) -> None:
    out = Path(args.work or tempfile.mkdtemp(prefix="bench-optim-"))
    runs = {spec: train_run(spec, out, args, args.steps, args.eval_interval) for spec in args.runs}
    curves = {spec: validation_curve(d) for spec, d in runs.items()}
    reference = args.runs[0]
    final_step = max(curves[reference])
    target = curves[reference][final_step]
    print(f"\nvalidation bits per byte ({args.preset}, {args.steps} steps)")
    print("step  " + "".join(f"{spec:>24}" for spec in args.runs))
    for step in sorted(set().union(*curves.values())):
        cells = "".join(f"{curves[s].get(step, float('nan')):24.4f}" for s in args.runs)
        print(f"{step:>4}  {cells}")
    print(f"\n{'optimizer':<24} {'final bpb':>10} {'steps to ' + reference + ' final':>22} "
          f"{'x steps':>8}")  # fmt: skip
    for spec, curve in curves.items():
        reach = steps_to_reach(curve, target)
        reach_text = f"{reach:.0f}" if reach is not None else "never"
        ratio = f"{reach / final_step:.2f}" if reach is not None else "-"
        print(f"{spec:<24} {curve[max(curve)]:>10.4f} {reach_text:>22} {ratio:>8}")
    if args.plot_dir:
        from ismail_core.report import write_comparison

        page = write_comparison(list(runs.values()), args.plot_dir)
        print(f"\nplots: {page.parent}")


def run_speed(args: argparse.Namespace) -> None:
    times: dict[str, list[float]] = {spec: [] for spec in args.runs}
    for round_ in range(args.speed_rounds):
        work = Path(tempfile.mkdtemp(prefix=f"bench-optim-speed{round_}-"))
        for spec in args.runs:
            times[spec] += step_seconds(train_run(spec, work, args, args.speed_steps, 0))
    reference = statistics.median(times[args.runs[0]])
    print(f"\nseconds per step (main job, {args.threads} thread(s), {args.speed_rounds} rounds "
          f"of {args.speed_steps} steps)")  # fmt: skip
    for spec, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{spec:<24} {median:>8.2f} s {median / reference:>6.2f}x")


def state_bytes(value) -> int:
    """Bytes of every tensor in a (nested) optimizer state dict."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(state_bytes(v) for v in value)
    return 0


def measure_memory(name: str, steps: int, preset: str) -> dict:
    """Run in a fresh process: `steps` training steps of `preset` with optimizer `name`."""
    import torch
    from ismail_core import ModelConfig, Transformer
    from ismail_core.train.config import OptimSection
    from ismail_core.train.optimizer import OptimizerError, build_optimizer

    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset)
    model = Transformer(cfg)
    try:
        optimizer = build_optimizer(model, OptimSection(name=name), torch.device("cpu"))
    except OptimizerError as exc:
        return {"error": str(exc).split(";")[0]}
    ids = torch.randint(0, cfg.vocab_size, (2, 256))
    for _ in range(steps):
        model(ids, ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "state": state_bytes(optimizer.state_dict()),
        "params": params,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_memory(args: argparse.Namespace) -> None:
    rows = {}
    for name in MEMORY_OPTIMIZERS:
        print(f"  {args.memory_preset} with {name} ...", flush=True)
        argv = [sys.executable, __file__, "--measure-memory", name]
        argv += ["--memory-steps", str(args.memory_steps), "--memory-preset", args.memory_preset]
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = rows["adamw"]["state"]
    print(f"\n{args.memory_preset}: optimizer state and peak memory ({args.memory_steps} steps, "
          "batch 2 x 256, fp32, CPU)")  # fmt: skip
    header = ("optimizer", "state MiB", "x adamw", "params MiB", "peak RSS MiB")
    print("{:<14} {:>10} {:>8} {:>11} {:>13}".format(*header))
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<14} {'n/a: ' + row['error']}")
            continue
        print(f"{name:<14} {row['state'] / 2**20:>10.1f} {row['state'] / base:>8.2f} "
              f"{row['params'] / 2**20:>11.1f} {row['peak_rss'] / 2**20:>13.1f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parts = ("quality", "speed", "memory")
    p.add_argument("--part", nargs="+", choices=parts, default=list(parts))
    p.add_argument(
        "--runs", nargs="+", default=["adamw", "muon"],
        help="optimizers to train, the first the reference: name[:field=value,...]",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--preset", default="tiny", help="model preset of the quality and speed runs")
    p.add_argument(
        "--train-flags", action="append", default=[],
        help="an extra `ismail train` flag for every run, as --train-flags=--train.seq_len=256",
    )  # fmt: skip
    p.add_argument("--eval-interval", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    p.add_argument("--work", help="directory for the runs (default: a new temporary one)")
    p.add_argument("--plot-dir", help="write the overlaid validation curves here")
    p.add_argument("--speed-steps", type=int, default=15)
    p.add_argument("--speed-rounds", type=int, default=2)
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--memory-preset", default="ismail-512")
    p.add_argument("--measure-memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure_memory:
        print(
            json.dumps(measure_memory(args.measure_memory, args.memory_steps, args.memory_preset))
        )
        return
    if "quality" in args.part:
        run_quality(args)
    if "speed" in args.part:
        run_speed(args)
    if "memory" in args.part:
        run_memory(args)


if __name__ == "__main__":
    main()
