"""A step plan's model work: prefill chunks in padded batches and the batched decode, through
ismail-core's `ModelRunner` (the model, its paged cache and block manager), then one batched
sampling call: the engine gets token ids back.

The LM head runs only after each row's last token (where a token is sampled), except for
requests that asked for prompt log-probabilities, whose prompt positions are scored as they
are prefilled. A batch that fails is retried row by row through `guarded`, which ends the rows
that fail again, so one bad sequence never takes the others down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import torch
from ismail_core.model.runner import ModelRunner

from ismail_serve.engine.logprobs import TokenLogprob, log_softmax, score
from ismail_serve.engine.sampler import Sampler
from ismail_serve.engine.scheduler import PrefillChunk, StepPlan
from ismail_serve.engine.sequence import Sequence

log = logging.getLogger("ismail_serve")

T = TypeVar("T")
# Run fn(seqs); on failure end those sequences with an error and return None.
Guarded = Callable[[list[Sequence], Callable[[list[Sequence]], T]], T | None]


@dataclass
class StepOutput:
    """What a step produced: the sequences whose prompt (or, after a preemption, whose
    recomputation) is now in the cache, and the token sampled for each sequence that samples,
    with its log-probability entry when the request asked for one."""

    prefilled: list[Sequence] = field(default_factory=list)
    tokens: list[tuple[Sequence, int, TokenLogprob | None]] = field(default_factory=list)


class StepRunner:
    """Runs a step plan's prefill chunks, decode batch and sampling for the engine."""

    def __init__(
        self,
        model_runner: ModelRunner,
        prefill_chunk: int,
        max_model_len: int,
        vocab_size: int,
        guarded: Guarded,
    ) -> None:
        self.model_runner = model_runner
        self.prefill_chunk = prefill_chunk
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.sampler = Sampler(vocab_size)
        self.guarded = guarded

    def run(self, plan: StepPlan) -> StepOutput:
        """Run the plan; sample after every completed prompt (unless it only scores the
        prompt: max_tokens 0) and for every decoding sequence."""
        out = StepOutput()
        rows: list[Sequence] = []
        logits: list[torch.Tensor] = []
        for batch in self._batches(plan.prefills):
            for chunk, row in self._isolated(batch, self._prefill):
                if chunk.completes_prefill:
                    out.prefilled.append(chunk.seq)
                    if chunk.seq.request.max_tokens > 0:
                        rows.append(chunk.seq)
                        logits.append(row)
        for seq, row in self._isolated(plan.decodes, self._decode):
            rows.append(seq)
            logits.append(row)
        if rows:
            out.tokens = self._sample(rows, torch.stack(logits))
        return out

    def _sample(
        self, seqs: list[Sequence], logits: torch.Tensor
    ) -> list[tuple[Sequence, int, TokenLogprob | None]]:
        """One batched sampling call; if it fails, row by row so only failing rows end."""
        try:
            tokens: list[int | None] = list(self.sampler.sample(seqs, logits))
        except Exception:
            log.exception("batched sampling failed; retrying row by row")
            tokens = []
            for i, seq in enumerate(seqs):
                one = logits[i : i + 1]
                got = self.guarded([seq], partial(self.sampler.sample, logits=one))
                tokens.append(got[0] if got else None)
        entries = self.sampler.logprobs(seqs, logits, tokens)
        return [(s, t, e) for s, t, e in zip(seqs, tokens, entries) if t is not None]

    def _batches(self, chunks: list[PrefillChunk]) -> list[list[PrefillChunk]]:
        """Group prefill chunks into padded batches, longest first: a batch pads every chunk to
        its first (longest) one, holds at most `prefill_chunk` tokens with padding, and never
        pads a row past max_model_len (a learned-position model has no position beyond it)."""
        batches: list[list[PrefillChunk]] = []
        for chunk in sorted(chunks, key=lambda c: c.end - c.start, reverse=True):
            if batches:
                batch = batches[-1]
                width = batch[0].end - batch[0].start
                fits = (len(batch) + 1) * width <= self.prefill_chunk
                if fits and chunk.start + width <= self.max_model_len:
                    batch.append(chunk)
                    continue
            batches.append([chunk])
        return batches

    def _prefill(self, chunks: list[PrefillChunk]) -> torch.Tensor:
        """Write the chunks into the cache; return the logits after each chunk's last token
        (the LM head runs at every position only when prompt log-probabilities are asked)."""
        ids = [c.seq.seq_id for c in chunks]
        rows, starts = [c.token_ids() for c in chunks], [c.start for c in chunks]
        if all(c.seq.request.prompt_logprobs is None for c in chunks):
            logits = self.model_runner.forward(ids, rows, starts, last_only=True)
        else:
            every = self.model_runner.forward(ids, rows, starts)
            for c, row in zip(chunks, every):
                if c.seq.request.prompt_logprobs is not None:
                    self._score_prompt_chunk(c, row)
            last = torch.tensor([c.end - c.start - 1 for c in chunks], device=every.device)
            logits = every[torch.arange(len(chunks), device=every.device), last]
        for c in chunks:
            c.seq.num_computed = c.end
        return logits.float()

    def _score_prompt_chunk(self, chunk: PrefillChunk, logits: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens that this chunk's positions predict (those not
        scored before a preemption)."""
        seq = chunk.seq
        first = max(chunk.start, len(seq.prompt_scores))
        end = min(chunk.end, seq.num_prompt_tokens - 1)
        if end > first:
            targets = seq.prompt_ids[first + 1 : end + 1]
            rows = logits[first - chunk.start : end - chunk.start]
            top_n = seq.request.prompt_logprobs or 0
            seq.prompt_scores += score(log_softmax(rows, self.vocab_size), targets, top_n)

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        logits = self.model_runner.forward(
            [s.seq_id for s in seqs],
            [[s.last_token] for s in seqs],
            [s.num_tokens - 1 for s in seqs],
            last_only=True,
        )
        for s in seqs:
            s.num_computed = s.num_tokens
        return logits.float()

    def _isolated(self, items: list, run: Callable[[list], torch.Tensor]) -> list:
        """run(items) as one batch; if it fails, each item alone, so only failing ones end."""
        if len(items) > 1:
            try:
                return list(zip(items, run(items)))
            except Exception:
                log.exception("a batched forward pass failed; retrying row by row")
        out = []
        for item in items:
            seq = item.seq if isinstance(item, PrefillChunk) else item
            logits = self.guarded([seq], partial(_alone, run, item))
            if logits is not None:
                out.append((item, logits[0]))
        return out


def _alone(run: Callable[[list], torch.Tensor], item: object, _: list[Sequence]) -> torch.Tensor:
    """`run` of one item, as a `guarded` call (which passes the item's sequence, unused)."""
    return run([item])
