"""Model benchmark: ismail's Transformer against transformers' DeepseekV3ForCausalLM.

Both run the same configuration and the same weights (ours is exported with `export_hf` and
loaded by transformers). Each measurement runs in its own subprocess, so peak memory is the
process's own high-water mark (CPU: RSS growth over the loaded model; CUDA: max allocated),
and ours/peer alternate over several rounds so machine noise hits both alike. On CPU the table
also gives tokens per CPU-second (process time), which other jobs on a shared machine disturb
far less than wall time.

    uv run python bench/model.py                   # tiny + ismail-512, decode at 512 and 2048
    uv run python bench/model.py --quick           # tiny only, shorter decode
    uv run python bench/model.py --device cuda     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TRAIN_SHAPES = {"tiny": (4, 256), "ismail-512": (1, 512)}  # (batch, seq) per step


# ----------------------------------------------------------------------------- workers
def _load(impl: str, hf_dir: str, device: str, dtype: torch.dtype):
    if impl == "ours":
        from ismail_core.hf import import_hf

        return import_hf(hf_dir).to(device=device, dtype=dtype)
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory_start(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return _rss_mb()


def _memory_peak(device: str, start: float) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20 - start
    return _rss_mb() - start


def worker_train(args) -> dict:
    """Forward + backward steps; returns step times and the step's peak memory."""
    dtype = getattr(torch, args.dtype)
    model = _load(args.impl, args.hf_dir, args.device, dtype).train()
    vocab = model.config.vocab_size if args.impl == "hf" else model.cfg.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(args.device)
    times, cpu_times = [], []
    mem_start = _memory_start(args.device)
    for step in range(args.steps + 1):  # the first step warms up and is not timed
        _sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        if args.impl == "hf":
            loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(ids, labels=ids).loss
        loss.backward()
        _sync(args.device)
        if step:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        model.zero_grad(set_to_none=False)  # keep gradient buffers: they belong in the peak
    peak = _memory_peak(args.device, mem_start)
    return {"times": times, "cpu_times": cpu_times, "peak_mb": peak}


def _hf_cache_bytes(past) -> int:
    total = 0
    for layer in past.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def worker_decode(args) -> dict:
    """Prefill `context` tokens, then time greedy decode steps of one sequence."""
    dtype = getattr(torch, args.dtype)
    model = _load(args.impl, args.hf_dir, args.device, dtype).eval()
    vocab = model.config.vocab_size if args.impl == "hf" else model.cfg.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, args.context), generator=gen).to(args.device)
    times, cpu_times = [], []
    if args.impl == "hf":
        out = model(input_ids=ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(args.steps):
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            _sync(args.device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        bytes_per_token = _hf_cache_bytes(past) / (args.context + args.steps)
    else:
        from ismail_core.model.cache import row_block_tables

        tables = row_block_tables(1, args.context + args.steps, 16, device=args.device)
        cache = model.new_cache(tables.numel(), 16)
        tok = model(ids, cache=cache, block_tables=tables)[:, -1:].argmax(-1)
        for step in range(args.steps):
            _sync(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            pos = args.context + step
            tok = model(tok, cache=cache, start_pos=pos, block_tables=tables)[:, -1:].argmax(-1)
            _sync(args.device)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        bytes_per_token = cache.bytes_per_token()
    return {"times": times, "cpu_times": cpu_times, "cache_bytes_per_token": bytes_per_token}


# ----------------------------------------------------------------------------- driver
def run_worker(kind: str, impl: str, hf_dir: str, opts: argparse.Namespace, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--impl",
        impl,
        "--hf-dir",
        hf_dir,
        "--device",
        opts.device,
        "--dtype",
        opts.dtype,
        "--threads",
        str(opts.threads),
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"benchmark worker failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(results: list[dict], key: str) -> float:
    return statistics.median(t for r in results for t in r[key])


def alternate(kind: str, hf_dir: str, opts, **extra) -> dict[str, list[dict]]:
    """Run ours and the peer alternately for opts.rounds rounds."""
    results: dict[str, list[dict]] = {"ours": [], "hf": []}
    for r in range(opts.rounds):
        order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
        for impl in order:
            results[impl].append(run_worker(kind, impl, hf_dir, opts, **extra))
    return results


def export_config(name: str, tmp: Path, dtype: str) -> str:
    from ismail_core.config import ModelConfig
    from ismail_core.hf import export_hf
    from ismail_core.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(name)).to(getattr(torch, dtype))
    out = tmp / name
    export_hf(model, out)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "ismail-512"])
    parser.add_argument("--decode-config", default="ismail-512")
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per worker")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--quick", action="store_true", help="tiny only, short decode")
    # worker-only options
    parser.add_argument("--worker", choices=["train", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    if opts.worker:
        fn = worker_train if opts.worker == "train" else worker_decode
        print(json.dumps(fn(opts)))
        return

    if opts.quick:
        opts.configs, opts.decode_config, opts.contexts = ["tiny"], "tiny", [256, 1024]
        opts.decode_steps = 8
    peer = "transformers DeepseekV3ForCausalLM"
    print(f"device={opts.device} dtype={opts.dtype} threads={opts.threads} rounds={opts.rounds}")
    print(f"peer: {peer} (transformers {__import__('transformers').__version__})\n")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("forward+backward (median step; memory = peak growth during steps)")
        print(
            f"{'config':<12} {'batch x seq':>11} {'impl':<6} {'tokens/s':>9} "
            f"{'tokens/cpu-s':>12} {'peak MB':>8}"
        )
        for name in opts.configs:
            hf_dir = export_config(name, tmp, opts.dtype)
            batch, seq = TRAIN_SHAPES.get(name, (1, 512))
            res = alternate("train", hf_dir, opts, batch=batch, seq=seq, steps=opts.steps)
            wall, cpu = {}, {}
            for impl, label in (("ours", "ismail"), ("hf", "hf")):
                wall[impl] = batch * seq / _median(res[impl], "times")
                cpu[impl] = batch * seq / _median(res[impl], "cpu_times")
                peak = max(r["peak_mb"] for r in res[impl])
                print(
                    f"{name:<12} {f'{batch} x {seq}':>11} {label:<6} {wall[impl]:>9.0f} "
                    f"{cpu[impl]:>12.0f} {peak:>8.0f}"
                )
            print(
                f"{'':<12} {'':>11} {'ratio':<6} {wall['ours'] / wall['hf']:>8.2f}x "
                f"{cpu['ours'] / cpu['hf']:>11.2f}x\n"
            )

        name = opts.decode_config
        hf_dir = str(tmp / name) if name in opts.configs else export_config(name, tmp, opts.dtype)
        print(f"decode, batch 1, {name} (median of {opts.decode_steps} steps after prefill)")
        print(
            f"{'context':>8} {'impl':<22} {'KV bytes/token':>15} {'tokens/s':>9} "
            f"{'tokens/cpu-s':>12}"
        )
        from ismail_core.config import ModelConfig

        cfg = ModelConfig.preset(name)
        elem = torch.finfo(getattr(torch, opts.dtype)).bits // 8
        expanded = cfg.n_layers * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * elem
        for context in opts.contexts:
            res = alternate("decode", hf_dir, opts, context=context, steps=opts.decode_steps)
            for impl, label in (("ours", "ismail MLA absorbed"), ("hf", "hf DynamicCache")):
                per_token = res[impl][0]["cache_bytes_per_token"]
                print(
                    f"{context:>8} {label:<22} {per_token:>15.0f} "
                    f"{1 / _median(res[impl], 'times'):>9.1f} "
                    f"{1 / _median(res[impl], 'cpu_times'):>12.1f}"
                )
        print(f"{'':>8} {'decompressed K/V':<22} {expanded:>15.0f} {'(computed)':>9}")


if __name__ == "__main__":
    main()
