"""Attention benchmark: MLA, GQA, GQA with a sliding window and latent-vector attention
(attention="latent": the same window plus a causal latent memory) on one model shape.

bench/model.py compares ours with transformers' DeepseekV3; this compares our attention kinds
with each other, so it lives apart. Rows share the tiny preset's shape (dim 256, 6 layers,
4 heads, MoE feed-forward); gqa-style rows use 2 key/value heads, windows are 64 tokens and
latent attention has 16 latents per key/value head. Measured, alternating the rows over
rounds so machine noise hits all alike (medians; CPU time beside wall time):

- training tokens/s: forward + backward of 4 x 256 random tokens;
- decode tokens/s after a 512- and a 2,048-token prompt, through ModelRunner (the path of
  `ismail generate` and ismail-serve; on a CPU MLA/GQA take its fused one-token path, which
  does not cover latent attention) and through the model's own forward for every row;
- cache bytes per sequence at 2,048 and 8,192 tokens: what the design needs (the window and,
  for latent attention, one memory state) and what the paged cache holds (every position's
  block: the paged cache does not free blocks that left a window);
- validation bits per byte after `ismail train` (200 steps), read from the run directories
  given with --runs NAME=DIR (see bench/RESULTS.md for the commands).

    OMP_NUM_THREADS=1 uv run python bench/attention.py
    uv run python bench/attention.py --runs mla=runs/attn-mla latent=runs/attn-latent ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from ismail_core import ModelConfig, Transformer
from ismail_core.model.cache import blocks_for, new_cache
from ismail_core.model.runner import ModelRunner

WINDOW, LATENTS, KV_HEADS, BLOCK = 64, 16, 2, 16
ROWS = {
    "mla": dict(attention="mla"),
    "gqa": dict(attention="gqa", n_kv_heads=KV_HEADS),
    "sliding window": dict(attention="gqa", n_kv_heads=KV_HEADS, sliding_window=WINDOW),
    "latent": dict(
        attention="latent", n_kv_heads=KV_HEADS, sliding_window=WINDOW, n_latents=LATENTS
    ),
}


def make(name: str, max_len: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.preset("tiny", max_seq_len=max_len, **ROWS[name]))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def train_step(model: Transformer, ids: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    return step


def decode(model: Transformer, context: int, steps: int, fused: bool) -> tuple[float, float]:
    """Prefill `context` random tokens, then time `steps` one-token steps: (wall, CPU) s."""
    runner = ModelRunner(model, blocks_for(context + steps, BLOCK), BLOCK, fused_decode=fused)
    ids = torch.randint(0, model.cfg.vocab_size, (context,)).tolist()
    runner.blocks.allocate("s", ids)
    logits = runner.forward(["s"], [ids], [0], last_only=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(context, context + steps):  # greedy, as generation would
        token = int(logits[0].argmax())
        runner.blocks.append("s", token)
        logits = runner.forward(["s"], [[token]], [t], last_only=True)
    return time.perf_counter() - t0, time.process_time() - c0


def cache_bytes(name: str, context: int) -> tuple[int, int]:
    """(bytes the design needs, bytes the paged cache holds) for one sequence of `context`."""
    cfg = ModelConfig.preset("tiny", max_seq_len=context, **ROWS[name])
    cache = new_cache(cfg, 1, BLOCK, dtype=torch.float32)
    per_token = cache.bytes_per_token() - -(-cache.state_bytes_per_block() // BLOCK)
    window = min(context, cfg.sliding_window) if cfg.sliding_window else context
    held = new_cache(cfg, blocks_for(context, BLOCK), BLOCK, dtype=torch.float32).nbytes()
    return per_token * window + cache.state_bytes_per_block(), held


def final_bpb(run: Path) -> str:
    evals = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    evals = [e for e in evals if e.get("kind") == "eval"]
    return f"{evals[-1]['bits_per_byte']:.4f} (step {evals[-1]['step']})" if evals else "-"


def measure(args) -> dict[str, dict[str, float]]:
    """Medians per row of training and decode speeds, rows alternating over rounds."""
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in ROWS}
    ids = torch.randint(0, 32768, (4, 256), generator=torch.Generator().manual_seed(0))
    max_len = max(args.contexts) + args.decode_steps
    models = {name: make(name, max_len) for name in ROWS}
    for _ in range(args.rounds):
        for name, model in models.items():
            got = samples[name]
            model.train()
            step = train_step(model, ids)
            step()  # warm-up
            for _ in range(args.train_steps):
                w, c = timed(step)
                got.setdefault("train", []).append(ids.numel() / w)
                got.setdefault("train_cpu", []).append(ids.numel() / c)
            model.zero_grad(set_to_none=True)
            model.eval()
            for ctx in args.contexts:
                for fused in (True, False):
                    w, c = decode(model, ctx, args.decode_steps, fused)
                    key = f"decode{ctx}{'' if fused else '_model'}"
                    got.setdefault(key, []).append(args.decode_steps / w)
                    got.setdefault(key + "_cpu", []).append(args.decode_steps / c)
    return {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}


def table(res: dict, args, runs: dict[str, Path]) -> str:
    ctx = args.contexts
    head = ["attention", "train tok/s (cpu-s)"]
    head += [f"decode@{c} tok/s runner (cpu-s); model fwd (cpu-s)" for c in ctx]
    head += [f"cache@{c} need / paged holds" for c in args.cache_contexts]
    head += ["val bpb after 200 steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in res.items():
        cells = [name, f"{r['train']:.0f} ({r['train_cpu']:.0f})"]
        for c in ctx:
            pairs = [
                f"{r[k]:.1f} ({r[k + '_cpu']:.1f})" for k in (f"decode{c}", f"decode{c}_model")
            ]
            cells.append("; ".join(pairs))
        for c in args.cache_contexts:
            need, held = cache_bytes(name, c)
            cells.append(f"{need / 2**20:.2f} / {held / 2**20:.2f} MiB")
        cells.append(final_bpb(runs[name]) if name in runs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--cache-contexts", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="*", default=[], help="NAME=RUN_DIR: val bpb column")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        runs[name.replace("_", " ")] = Path(path)
    print(table(measure(args), args, runs))


if __name__ == "__main__":
    main()
