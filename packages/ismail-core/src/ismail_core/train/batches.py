"""Training batches as a pure function of (seed, step, micro-batch, rank).

Each micro-batch draws random windows from the token stream with its own generator seeded from
those four numbers, so the data position of a run is just its step: resuming at step N gives
exactly the batches an uninterrupted run sees at step N, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from ismail_core.corpus.shards import ShardedSplit


def batch_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, step, micro, rank)."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint64)
    gen = torch.Generator()
    gen.manual_seed(int(state[0] >> np.uint64(1)))
    return gen


def training_batch(
    split: ShardedSplit,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    step: int,
    micro: int,
    rank: int,
) -> torch.Tensor:
    """(batch_size, seq_len) token ids for one micro-batch."""
    return split.random_windows(batch_size, seq_len, batch_generator(seed, step, micro, rank))
