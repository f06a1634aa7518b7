"""Fine-tuning benchmark: full fine-tuning vs LoRA vs QLoRA on one base model, in one run.

Every row is `ismail finetune` itself (FinetuneTrainer through `finetune(cfg, on_step=...)`)
on the same random base checkpoint (the preset with the shipped tr-tokenizer, default
ismail-512) and the same generated conversations, packed into full rows (`finetune.packing`)
so every method trains on the same tokens. Full fine-tuning is the peer the other rows are
compared with:
  full     every weight trains (AdamW)
  lora     peft LoRA adapters on every linear layer of the blocks, base frozen
  qlora    LoRA on a 4-bit NF4 base (bitsandbytes; CUDA only, skipped elsewhere with the reason)

Each method runs in its own subprocess, so its peak memory is that process's own high-water
mark: on CPU peak RSS (ru_maxrss, the whole process: torch, tokenizer, loading the base and
training), on CUDA torch.cuda.max_memory_allocated. On CPU the table also gives the peak above
the process's resident memory just before fine-tuning starts (torch, transformers and peft
imported in every row): the memory the method itself needs, which is what CUDA's figure
measures too, without the ~0.8 GB of interpreter and libraries every row carries.
Optimizer state is the bytes of the optimizer's state tensors after the first step. Tokens/s
counts the tokens trained (the trainer's tokens_seen, padding excluded) over the steps after
one warm-up step. The run stops after the last measured step (no checkpoint, no evaluation).

    uv run python bench/finetune.py                    # ismail-512 on CPU
    uv run python bench/finetune.py --device cuda      # on a GPU, QLoRA included
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# torch is imported inside the functions: a worker applies `ismail finetune`'s process settings
# (ismail_core.runtime.tune_process, e.g. OMP_WAIT_POLICY=PASSIVE) before OpenMP is loaded.

METHODS = ("full", "lora", "qlora")  # the peer first: ratios need it
LORA_TARGET = 0.6  # the bound: LoRA's peak memory over full fine-tuning's

WORDS = (
    "ev kitap göz okul masa kapı yol deniz ağaç kuş şehir dağ nehir çocuk öğretmen pazar "
    "güneş yağmur kış bahar sabah akşam köprü tren istasyon mektup kalem defter bahçe çiçek"
).split()
VERBS = "gördü aldı sordu anlattı yazdı okudu getirdi buldu sevdi bekledi".split()


# ----------------------------------------------------------------------------- set-up
def make_base(directory: Path, preset: str) -> int:
    """Save a randomly initialised `preset` model with the shipped tr-tokenizer (which has
    the chat markers, so LoRA can train on it) as a checkpoint; returns its parameter count."""
    import torch
    from ismail_core import ModelConfig, Transformer
    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("tr")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset, vocab_size=tokenizer.vocab_size))
    save_checkpoint(directory, model, tokenizer)
    return model.num_parameters()


def _sentence(rng: random.Random) -> str:
    """One short Turkish-looking sentence."""
    a, b, c = rng.sample(WORDS, 3)
    return f"{a.capitalize()} {b} ile {c} {rng.choice(VERBS)}."


def make_data(path: Path, n: int = 1000, seed: int = 0) -> Path:
    """Write `n` short conversations (about 30 tokens each, so packing fills rows to within a
    few tokens) as messages JSONL."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        reply = " ".join(_sentence(rng) for _ in range(rng.randint(1, 2)))
        messages = [
            {"role": "user", "content": _sentence(rng)},
            {"role": "assistant", "content": reply},
        ]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def qlora_skip_reason(device: str) -> str | None:
    """Why QLoRA cannot run here, or None when it can (CUDA and bitsandbytes present)."""
    import torch

    if not device.startswith("cuda"):
        return f"skipped: QLoRA needs CUDA (device {device})"
    if not torch.cuda.is_available():
        return "skipped: no CUDA device visible"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes not installed (ismail-core[bnb])"
    return None


def finetune_config(method: str, base: str, data: str, out: str, args: argparse.Namespace):
    """The FinetuneConfig of one row: no evaluation, no intermediate checkpoints, no bar."""
    from ismail_core.finetune.config import FinetuneConfig
    from ismail_core.train.config import build_config

    layer = {
        "finetune.base": base,
        "finetune.data": data,
        "finetune.method": method,
        "finetune.packing": True,
        "finetune.max_len": args.seq,
        "finetune.val_fraction": 0.0,
        "finetune.eval_replies": 0,
        "lora.rank": args.rank,
        "run.out_dir": out,
        "train.steps": args.steps + 1,  # + the warm-up step
        "train.batch_size": args.batch,
        "train.device": args.device,
        "train.precision": args.precision,
        "train.threads": args.threads,
        "train.activation_checkpointing": args.activation_checkpointing,
        "eval.interval": 0,
        "checkpoint.interval": 0,
        "log.progress": False,
        "log.interval": 1,
    }
    return build_config(layer, config_cls=FinetuneConfig)


# ----------------------------------------------------------------------------- worker
class _Done(Exception):
    """Raised from the step callback after the last measured step: skips the final save."""


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg, exp_avg_sq, step)."""
    import torch

    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(device: Any) -> float:
    """This process's peak: CUDA max allocated, else peak RSS (Linux reports KiB)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Probe:
    """The on_step callback: starts the clock after the warm-up step, records the figures
    after the last one and stops the run."""

    def __init__(self, warmup: int, steps: int, baseline_mb: float) -> None:
        self.warmup, self.last = warmup, warmup + steps
        self.baseline_mb = baseline_mb
        self.figures: dict[str, Any] = {}

    def __call__(self, step: int, trainer: Any) -> None:
        import torch

        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        if step == self.warmup:
            self.started, self.tokens = time.perf_counter(), trainer.tokens_seen
            self.figures["optim_mb"] = optimizer_state_bytes(trainer.optimizer) / 2**20
        if step == self.last:
            wall = time.perf_counter() - self.started
            tokens = trainer.tokens_seen - self.tokens
            model = trainer.raw_model
            self.figures |= {
                "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                "peak_mb": peak_memory_mb(trainer.device),
                "own_mb": peak_memory_mb(trainer.device) - self.baseline_mb,
                "tok_s": tokens / wall,
                "fill": tokens / (self.last - self.warmup) / trainer.tokens_per_step,
                "precision": trainer.precision.name,
            }
            raise _Done


def worker(method: str, base: str, data: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune with `method` for 1 + args.steps steps; returns the measurements."""
    from ismail_core.finetune.trainer import finetune

    if importlib.util.find_spec("peft") is not None:
        import peft  # noqa: F401  (LoRA imports it; load it in every row so the baseline is equal)
    baseline = 0.0 if args.device.startswith("cuda") else resident_mb()
    probe = Probe(warmup=1, steps=args.steps, baseline_mb=baseline)
    with tempfile.TemporaryDirectory() as out:
        try:
            finetune(finetune_config(method, base, data, out, args), on_step=probe)
        except _Done:
            pass
    return probe.figures


# ----------------------------------------------------------------------------- driver
def run_row(method: str, base: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one method in a fresh subprocess; {"error": ...} when it fails."""
    cmd = [sys.executable, __file__, "--worker", method, str(base), str(data)]
    for flag in ("device", "steps", "batch", "seq", "rank", "precision", "threads"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.activation_checkpointing:
        cmd.append("--activation-checkpointing")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"error": f"failed: {last[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(base: Path, data: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every method, alternating over args.rounds rounds: median tokens/s, largest peak."""
    skip = {"qlora": qlora_skip_reason(args.device)}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for _ in range(args.rounds):
        for method in METHODS:
            if not skip.get(method):
                runs[method].append(run_row(method, base, data, args))
    rows = {}
    for method in METHODS:
        ok = [r for r in runs[method] if "error" not in r]
        if ok:
            rows[method] = {
                **ok[0],
                "tok_s": statistics.median(r["tok_s"] for r in ok),
                "peak_mb": max(r["peak_mb"] for r in ok),
                "own_mb": max(r["own_mb"] for r in ok),
            }
        else:
            rows[method] = {"error": skip.get(method) or runs[method][0]["error"]}
    return rows


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    """The markdown table, ratios against full fine-tuning."""
    print(
        "| method | trainable params | optimizer state (MB) | peak memory (MB) | peak vs full "
        "| peak above runtime (MB) | vs full | tokens/s | vs full |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    full = rows.get("full", {})
    for method, r in rows.items():
        if "error" in r:
            print(f"| {method} | {r['error']} | | | | | | | |")
            continue
        peak_ratio = own_ratio = speed_ratio = ""
        if "error" not in full and method != "full":
            peak_ratio = f"{r['peak_mb'] / full['peak_mb']:.2f}x"
            own_ratio = f"{r['own_mb'] / full['own_mb']:.2f}x"
            speed_ratio = f"{r['tok_s'] / full['tok_s']:.2f}x"
        print(
            f"| {method} | {r['trainable_m']:.2f}M | {r['optim_mb']:.1f} | {r['peak_mb']:.0f} "
            f"| {peak_ratio} | {r['own_mb']:.0f} | {own_ratio} | {r['tok_s']:.0f} "
            f"| {speed_ratio} |"
        )


def verdict(rows: dict[str, dict[str, Any]]) -> str:
    """Whether LoRA's peak memory is within LORA_TARGET of full fine-tuning's, measured both
    ways (whole process, and above the runtime)."""
    full, lora = rows.get("full", {}), rows.get("lora", {})
    if "error" in full or "error" in lora:
        return "LoRA vs full peak memory: not measured (a row failed)"
    parts = []
    for key, what in (("peak_mb", "whole-process peak"), ("own_mb", "peak above runtime")):
        ratio = lora[key] / full[key]
        ok = "meets" if ratio <= LORA_TARGET else "misses"
        parts.append(f"{what} {ratio:.2f}x full's ({ok} the <= {LORA_TARGET}x target)")
    return "LoRA: " + "; ".join(parts)


def parse_args() -> argparse.Namespace:
    """Command-line flags (the worker gets the same ones plus --worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--preset", default="ismail-512", help="model preset of the base")
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after 1 warm-up)")
    parser.add_argument("--batch", type=int, default=4, help="rows per step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per packed row")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's)")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute block activations in backward (every method)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements per method")
    parser.add_argument(
        "--worker", nargs=3, metavar=("METHOD", "BASE", "DATA"), help=argparse.SUPPRESS
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        from ismail_core.runtime import tune_process

        tune_process()  # as `ismail finetune` does, before torch loads OpenMP
        print(json.dumps(worker(*args.worker, args)))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        params = make_base(Path(tmp) / "base", args.preset)
        data = make_data(Path(tmp) / "chat.jsonl")
        threads = args.threads or torch.get_num_threads()
        print(
            f"{args.preset} ({params / 1e6:.1f}M parameters, random weights), device "
            f"{args.device}, {threads} threads, {args.batch} x {args.seq} packed tokens per "
            f"step, 1 warm-up + {args.steps} measured steps, LoRA rank {args.rank} on every "
            f"linear layer of the blocks, activation checkpointing "
            f"{'on' if args.activation_checkpointing else 'off'}, {args.rounds} round(s)"
        )
        rows = measure(Path(tmp) / "base", data, args)
    print_table(rows)
    measured = next((r for r in rows.values() if "error" not in r), None)
    if measured:
        kind = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS"
        print(
            f"peak memory = {kind} of the row's own process; precision {measured['precision']}; "
            f"rows {measured['fill']:.0%} full after packing"
        )
    print(verdict(rows))


if __name__ == "__main__":
    main()
