"""Batch-1 decode against the memory-bandwidth bound (issue 17).

Builds the `tiny` preset with random weights (seeded), decodes greedily through
`ismail_core.generate.generate_ids` (a ~32-token prompt, 128 new tokens) and reports decode
tokens/s (the tokens after the first, over the time after the first: prefill excluded) for
float32 and bfloat16, at 1 and 2 torch threads, with the model's own cached forward ("eager")
and with the fused decode step (`ismail_core.model.compiled.fast_decoder`, "fused"). Beside
each row: the memory bandwidth measured in the same run at that thread count (a 256 MiB
tensor `.copy_`, GB/s = tensor bytes / time; each byte is read once and written once), the
bytes of weights one decode step reads (every dense weight, the LM head, one embedding row,
per MoE layer the gate, the top-k routed and the shared experts), the bound they set
(GB/s / bytes per token, tokens/s) and the share of it reached.

Configurations alternate inside each round, so machine noise hits all of them alike; the
table gives medians over the rounds (a warm-up run first).

    uv run python bench/decode.py                       # f32 + bf16, 1 and 2 threads
    uv run python bench/decode.py --threads 1 --rounds 5
    uv run python bench/decode.py --dtypes float32 --new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def copy_bandwidth(threads: int, mib: int = 256, repeats: int = 7) -> float:
    """GB/s of a large tensor copy (tensor bytes / median time) at `threads` threads."""
    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return src.nbytes / statistics.median(times) / 1e9


def bytes_per_token(model) -> int:
    """Bytes of weights one batch-1 decode step reads."""
    from ismail_core.model.moe import MoE

    total = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("embed."):
            total += p[0].numel() * p.element_size()  # one row
        elif ".experts." not in name:  # dense weights, shared experts, gates, the LM head
            total += p.numel() * p.element_size()
    for layer in model.layers:
        if isinstance(layer.ffn, MoE):
            expert = layer.ffn.experts[0]
            per_expert = sum(p.numel() * p.element_size() for p in expert.parameters())
            total += layer.ffn.topk * per_expert
    if model.cfg.tie_embeddings:  # the head is the embedding: read in full
        total += model.head.weight.numel() * model.head.weight.element_size()
    return total


def decode_rate(model, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(decode tokens/s after the first token, seconds to the first token); a plain model
    decodes eagerly, a FastDecoder through its fused step."""
    from ismail_core.generate import BatchGeneration
    from ismail_core.model.compiled import FastDecoder
    from ismail_core.sampling import SamplingParams

    t0 = time.perf_counter()
    stamps = []
    greedy = [SamplingParams(temperature=0)]
    fused = isinstance(model, FastDecoder)
    batch = BatchGeneration(model, [prompt], new_tokens, greedy, fused_decode=fused)
    while batch.step():
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), stamps[0] - t0


def _threads_chosen(model, threads: int) -> str:
    """ "layers/head": the thread counts a fused decoder settled on last (all for eager)."""
    if threads == 1 or not hasattr(model, "_head_choice"):
        return f"{threads}/{threads}"
    chosen = (model._layer_choice.choice, model._head_choice.choice)
    return "/".join(str(c or "?") for c in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()

    from ismail_core.config import ModelConfig
    from ismail_core.model.compiled import FastDecoder, native_bf16
    from ismail_core.model.transformer import Transformer

    cfg = ModelConfig.preset(opts.config)
    gen = torch.Generator().manual_seed(opts.seed)
    prompt = torch.randint(0, cfg.vocab_size, (opts.prompt_tokens,), generator=gen).tolist()

    rows = []  # (label, dtype, threads, model)
    weight_bytes = {}
    for dtype_name in opts.dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(opts.seed)
        model = Transformer(cfg).eval().to(dtype)
        weight_bytes[dtype_name] = bytes_per_token(model)
        for threads in opts.threads:  # a decoder per thread count: each times its threads
            rows.append(("eager", dtype_name, threads, model))
            rows.append(("fused", dtype_name, threads, FastDecoder(model)))
            if dtype == torch.bfloat16:
                fused = FastDecoder(model, upcast_bf16=False)
                rows.append(("fused, bf16 matrices", dtype_name, threads, fused))

    bandwidth = {t: copy_bandwidth(t) for t in opts.threads}
    results: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(rows))}
    for _, _, threads, m in rows:  # warm-up
        torch.set_num_threads(threads)
        decode_rate(m, prompt, 8)
    for _ in range(opts.rounds):
        for i, (_, _, threads, m) in enumerate(rows):
            torch.set_num_threads(threads)
            results[i].append(decode_rate(m, prompt, opts.new_tokens))
    bandwidth_after = {t: copy_bandwidth(t) for t in opts.threads}

    load = os.getloadavg()
    print(
        f"{opts.config}: batch 1, greedy, prompt {opts.prompt_tokens} tokens, "
        f"{opts.new_tokens} new; median of {opts.rounds} rounds; torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: "
        f"{native_bf16()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    for t in opts.threads:
        print(
            f"copy bandwidth, {t} thread(s): {bandwidth[t]:.1f} GB/s before, "
            f"{bandwidth_after[t]:.1f} GB/s after the decode runs (the bound uses the higher)"
        )
    for name, b in weight_bytes.items():
        print(f"weights read per token, {name}: {b / 1e6:.1f} MB")
    print()
    header = (
        f"| {'dtype':<8} | thr | {'path':<20} | decode tok/s | ms/token | first token ms "
        f"| copy GB/s | MB/token | bound tok/s | of bound | threads |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for i, (label, dtype_name, threads, m) in enumerate(rows):
        rate = statistics.median(r for r, _ in results[i])
        first = statistics.median(f for _, f in results[i])
        gbs = max(bandwidth[threads], bandwidth_after[threads])
        mb = weight_bytes[dtype_name] / 1e6
        bound = gbs * 1e3 / mb
        print(
            f"| {dtype_name:<8} | {threads:>3} | {label:<20} | {rate:>12.1f} | "
            f"{1e3 / rate:>8.2f} | {first * 1e3:>14.1f} | {gbs:>9.1f} | {mb:>8.1f} | "
            f"{bound:>11.0f} | {rate / bound:>7.0%} | {_threads_chosen(m, threads):>7} |"
        )
    print(
        "\nthreads: layers/LM head; the fused path times 1 against all threads for each and "
        "keeps the faster ('?': still timing)."
    )
    print(
        "bf16 'fused' decodes from float32 copies of the matrices where the CPU lacks native "
        "bf16 (more bytes than the bf16 bound counts); 'fused, bf16 matrices' keeps bf16 ones "
        "(its LM head is still a float32 copy)."
    )


if __name__ == "__main__":
    main()
