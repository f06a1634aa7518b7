"""One sequence being generated: its tokens, cache progress, sampling state and streaming text."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from ismail_core.generate import ContinuationText
from ismail_core.sampling import SamplingParams

from ismail_serve.engine.logprobs import TokenLogprob

# Why a sequence ended. "stop" and "length" are OpenAI's; the others end it early with an error.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"  # the client went away or the server is shutting down
FINISH_TIMEOUT = "timeout"  # ran past the per-request timeout
FINISH_ERROR = "error"  # the model or sampler failed on this sequence


@dataclass
class SequenceRequest:
    """What the API asks the engine to generate for one choice of one request."""

    request_id: str
    index: int  # the choice index in the response
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    stop_token_ids: frozenset[int] = frozenset()
    skip_special_tokens: bool = True
    logprobs: int | None = None  # alternatives per generated token (None: no log-probabilities)
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo scoring)


@dataclass
class SequenceOutput:
    """An update pushed to the API for one sequence: new text and, at the end, why it ended.

    `logprobs` covers the tokens generated since the previous update (when asked for);
    `prompt_logprobs` comes once, with the first update, when the prompt was scored.
    """

    index: int
    text: str
    num_generated: int
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


# Called from the engine thread with each update; must not block.
OutputSink = Callable[[SequenceOutput], None]

_ids = itertools.count()


class Sequence:
    """Engine-side state of one generation."""

    def __init__(
        self,
        request: SequenceRequest,
        text: ContinuationText,
        sink: OutputSink,
        generator: torch.Generator | None,
        deadline: float | None,
    ) -> None:
        self.seq_id = next(_ids)
        self.request = request
        self.request_id = request.request_id
        self.prompt_ids = list(request.prompt_ids)
        self.output_ids: list[int] = []
        self.text = text
        self.sink = sink
        self.generator = generator
        self.deadline = deadline
        self.has_blocks = False  # admitted: cache blocks are allocated to it
        self.num_computed = 0  # tokens whose keys/values are in the cache
        # tokens to compute before the next sample: the prompt, or after a preemption the
        # prompt and the output so far (the cache was given away and is recomputed)
        self.prefill_end = len(self.prompt_ids)
        self.num_preemptions = 0
        self.prompt_counted = False
        self.arrival_time = time.monotonic()
        self.last_token_time: float | None = None
        self.finish_reason: str | None = None
        self.prompt_scores: list[TokenLogprob] = []  # log-probabilities of prompt[1:] so far
        self.pending_logprobs: list[TokenLogprob] = []  # generated, not yet sent
        self.prompt_sent = False

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefill_done(self) -> bool:
        """Whether the prompt (and, after a preemption, the output so far) is in the cache:
        the sequence is decoding."""
        return self.num_computed >= self.prefill_end

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def history(self) -> list[int]:
        """Prompt and output tokens: what the cache holds, and what the repetition penalty
        looks at (Hugging Face convention)."""
        return self.prompt_ids + self.output_ids
