"""Token sampling shared by `ismail generate` and the serving engine.

`sample_next` samples one token per row of a batch, each row with its own sampling parameters
and its own random generator, so a seeded request gives the same tokens whatever else shares
its batch. `StopMatcher` finds stop strings in streamed text, including ones that span tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    """How to pick the next token.

    temperature: 0 means greedy; otherwise logits are divided by it.
    top_k: keep the k most likely tokens (0, or k >= the vocabulary = all).
    top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = all).
    repetition_penalty: > 1 discourages tokens already in the history (CTRL / HF convention).
    seed: seeds the request's own generator (None = global RNG).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator seeded with `seed`, or None when the request is unseeded."""
        if self.seed is None:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen


# How `ismail generate` samples unless told otherwise; exports write the same into their
# generation_config.json so that transformers samples alike.
GENERATE_DEFAULTS = SamplingParams(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1)


def apply_repetition_penalty(
    logits: torch.Tensor, history: Sequence[Sequence[int]], penalties: Sequence[float]
) -> torch.Tensor:
    """Penalise tokens already seen in each row's history (returns a new tensor).

    Positive logits are divided by the penalty and negative ones multiplied, so a penalty > 1
    always lowers the probability of a repeated token.
    """
    logits = logits.clone()
    for row, (seen, penalty) in enumerate(zip(history, penalties, strict=True)):
        if penalty == 1.0 or not seen:
            continue
        idx = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
        picked = logits[row, idx]
        logits[row, idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def sample_next(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    history: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Sample one token id per row of `logits` (B, V); returns a LongTensor of shape (B,).

    Each row uses its own parameters and draws exactly one uniform number from its own
    generator, so its result does not depend on the other rows in the batch.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    batch, vocab = logits.shape
    if not len(params) == len(generators) == batch:
        raise ValueError(
            f"need one SamplingParams and one generator per row: got {len(params)} params, "
            f"{len(generators)} generators for {batch} rows"
        )
    logits = logits.float()
    if history is not None:
        logits = apply_repetition_penalty(logits, history, [p.repetition_penalty for p in params])

    # Greedy rows (temperature 0) take the argmax and draw nothing. Ranking the vocabulary is
    # the expensive part, so only rows with top-k or top-p pay for it; the others sample from
    # the plain softmax. Each row takes the same path whatever its neighbours ask for, and
    # draws one uniform from its own generator, which keeps seeded rows reproducible in any
    # batch.
    out = logits.argmax(dim=-1)
    # A k that keeps the whole vocabulary is no top-k (as vLLM reads it): the same path as 0.
    top_ks = [p.top_k if p.top_k < vocab else 0 for p in params]
    ranked_rows: list[int] = []
    plain_rows: list[int] = []
    for i, p in enumerate(params):
        if p.temperature:
            (ranked_rows if top_ks[i] or p.top_p < 1 else plain_rows).append(i)
    if plain_rows:
        rows, scaled, uniforms = _scaled_and_uniforms(logits, plain_rows, params, generators)
        out[rows] = _inverse_cdf(torch.softmax(scaled, dim=-1), uniforms)
    if ranked_rows:
        rows, scaled, uniforms = _scaled_and_uniforms(logits, ranked_rows, params, generators)
        top_ps = [params[i].top_p for i in ranked_rows]
        out[rows] = _sample_ranked(scaled, uniforms, [top_ks[i] for i in ranked_rows], top_ps)
    return out


def _scaled_and_uniforms(
    logits: torch.Tensor,
    row_ids: list[int],
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row indices, those rows' logits divided by their temperatures, one uniform per row
    drawn from the row's own generator)."""
    device = logits.device
    rows = torch.tensor(row_ids, device=device)
    temps = torch.tensor([params[i].temperature for i in row_ids], device=device)
    uniforms = torch.stack(
        [torch.rand((), generator=generators[i], device=device) for i in row_ids]
    )
    return rows, logits[rows] / temps[:, None], uniforms


def _sample_ranked(
    scaled: torch.Tensor, uniforms: torch.Tensor, top_ks: list[int], top_ps: list[float]
) -> torch.Tensor:
    """Token ids drawn by `uniforms` from each row of `scaled` (N, V) restricted to its top-k
    (0 = no limit) and then its top-p."""
    device = scaled.device
    vocab = scaled.shape[1]
    n_best = max(top_ks) if all(top_ks) else vocab
    ranked, candidates = torch.topk(scaled, n_best, dim=-1, sorted=True)
    # top-k: drop ranks >= k (k = 0 keeps everything).
    ks = torch.tensor([k or vocab for k in top_ks], device=device)
    ranks = torch.arange(n_best, device=device)[None, :]
    probs = torch.softmax(ranked.masked_fill(ranks >= ks[:, None], float("-inf")), dim=-1)
    # top-p: keep a token while the mass ranked above it is below top_p; the most likely
    # token is always kept.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    probs = probs.masked_fill(mass_before >= torch.tensor(top_ps, device=device)[:, None], 0.0)
    picks = _inverse_cdf(probs, uniforms)
    return candidates.gather(1, picks[:, None]).squeeze(1)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of `probs` (not necessarily normalised) by a uniform in [0, 1)."""
    cdf = torch.cumsum(probs, dim=-1)
    # right=True picks the first index whose cdf exceeds the target, which always has a
    # non-zero probability; the clamp covers u * total rounding up to the total.
    pick = torch.searchsorted(cdf, uniforms[:, None] * cdf[:, -1:], right=True)
    last_nonzero = probs.shape[1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1, keepdim=True)
    return torch.minimum(pick, last_nonzero).squeeze(1)


class StopMatcher:
    """Cut streamed text at the first stop string, holding back text that may start one.

    `feed` returns the text that is safe to emit now and whether a stop string was found; text
    that could be the beginning of a stop string completed by later tokens is held back.
    After the stream ends without a stop, `flush` returns what was held back.
    """

    def __init__(self, stops: Sequence[str] | str | None) -> None:
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Add newly decoded text; return (text safe to emit, whether a stop string was hit)."""
        if self.stopped:
            return "", True
        buf = self._held + text
        # The stop that completes first wins (ties: the longer one), which makes the result
        # independent of how the text was split into chunks.
        hits = [(i + len(s), i) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[: min(hits)[1]], True
        hold = self._longest_stop_prefix_suffix(buf)
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        """Return held-back text at the end of a stream that did not stop."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
