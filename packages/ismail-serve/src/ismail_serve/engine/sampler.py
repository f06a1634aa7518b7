"""One token per sequence from a step's logits, on the model's device, in one batched call.

`ismail_core.sampling.sample_next` does the drawing (greedy, temperature, top-k, top-p,
repetition penalty; each row with its own generator, so a seeded request gives the same tokens
in any batch); only the chosen ids, and the log-probabilities a request asked for, leave the
device.
"""

from __future__ import annotations

import torch
from ismail_core.sampling import sample_next

from ismail_serve.engine.logprobs import TokenLogprob, log_softmax, score
from ismail_serve.engine.sequence import Sequence


class Sampler:
    """Samples for sequences over a vocabulary of `vocab_size` ids (the model's output may be
    wider: a vocabulary padded for speed has ids the tokenizer cannot decode, never sampled)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """The next token of each sequence, from its row of `logits` (B, vocab)."""
        if logits.shape[-1] > self.vocab_size:
            logits = logits.clone()
            logits[:, self.vocab_size :] = float("-inf")
        params = [s.request.params for s in seqs]
        penalised = any(p.repetition_penalty != 1.0 for p in params)
        history = [s.history() for s in seqs] if penalised else None
        return sample_next(logits, params, [s.generator for s in seqs], history).tolist()

    def logprobs(
        self, seqs: list[Sequence], logits: torch.Tensor, tokens: list[int | None]
    ) -> list[TokenLogprob | None]:
        """For each sequence that asked for log-probabilities, its chosen token's entry with the
        top alternatives (from the logits as the model gave them); None for the others."""
        out: list[TokenLogprob | None] = [None] * len(seqs)
        wanted = [
            (i, token, s.request.logprobs)
            for i, (s, token) in enumerate(zip(seqs, tokens))
            if s.request.logprobs is not None and token is not None
        ]
        if wanted:
            rows = log_softmax(logits[[i for i, _, _ in wanted]], self.vocab_size)
            for (i, token, top), row in zip(wanted, rows):
                out[i] = score(row[None], [token], top)[0]
        return out
