"""Validation metrics: loss, perplexity and bits per byte.

Bits per byte divides the total cross-entropy (in bits) by the UTF-8 bytes of the text the
tokens stand for, so models with different tokenizers compare fairly.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ismail_core.corpus.shards import ShardedSplit


class Evaluation(Protocol):
    """What a trainer's evaluation returns (EvalResult here; the fine-tuning tasks have their
    own): the loss that picks the best checkpoint, and the row the metrics log records."""

    @property
    def loss(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token, in nats
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens evaluated

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    """Convert a per-token loss in nats to bits per UTF-8 byte."""
    return loss / math.log(2) / bytes_per_token


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: ShardedSplit,
    seq_len: int,
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce=None,
) -> EvalResult:
    """Evaluate on consecutive windows of `split` (every token predicted once).

    Under data parallelism each rank takes every world_size-th window and `reduce` (a sum
    all-reduce) combines the totals.
    """
    if split.num_tokens < 2:
        raise ValueError(f"the {split.name} split has no tokens to evaluate")
    length = min(seq_len, split.num_tokens)
    starts = split.sequential_windows(length, max_tokens or None)
    # Equal window counts on every rank: sharded (FSDP) forwards must run in lockstep.
    starts = starts[: len(starts) - len(starts) % world_size or None][rank::world_size]
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # (sum of losses, predicted tokens)
    try:
        for i in range(0, len(starts), batch_size):
            rows = [split.read(s, length).astype(np.int64) for s in starts[i : i + batch_size]]
            ids = torch.from_numpy(np.stack(rows)).to(device)
            with autocast or contextlib.nullcontext():
                out = model(ids, labels=ids)
            n = ids.shape[0] * (length - 1)
            totals += torch.tensor([out.lm_loss.item() * n, n], dtype=torch.float64)
    finally:
        model.train(was_training)
    if reduce is not None:
        reduce(totals)
    loss = float(totals[0]) / max(float(totals[1]), 1.0)
    return EvalResult(
        loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        bits_per_byte=bits_per_byte(loss, split.bytes_per_token),
        tokens=int(totals[1]),
    )
