"""Evaluation of a chat model: loss on held-out conversations, and replies generated for
held-out prompts (task accuracy, and the share of replies that end their turn)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ismail_core.chat import end_of_turn_ids, render_chat
from ismail_core.finetune.data import IGNORE, Example, collate, single_rows
from ismail_core.generate import BatchGeneration, decode_continuation
from ismail_core.model import Transformer
from ismail_core.sampling import SamplingParams


@dataclass
class ReplyCase:
    """A held-out prompt: the conversation before the reply, the reference reply, the task it
    belongs to and the rule that says whether a reply is right."""

    messages: list[dict[str, str]]
    reference: str
    task: str
    is_correct: Callable[[str], bool]


@dataclass(kw_only=True)
class ReplyScores:
    """The scores of generated replies, set when replies were generated: accuracy, the share
    of replies that ended with an end-of-turn id, per-task accuracy and samples."""

    accuracy: float | None = None
    ended: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[str, str]] = field(default_factory=list)

    def reply_fields(self) -> dict[str, Any]:
        """The reply scores for `to_dict` (nothing when no replies were generated)."""
        if self.accuracy is None:
            return {}
        return {
            "accuracy": self.accuracy,
            "ended": self.ended,
            "per_task": self.per_task,
            "samples": [list(pair) for pair in self.samples],
        }


@dataclass
class ChatEval(ReplyScores):
    """Held-out loss (mean over trained tokens) and, when replies were generated, their
    scores (see ReplyScores)."""

    loss: float

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, **self.reply_fields()}


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    device: torch.device,
    autocast: Any = None,
) -> float:
    """Mean cross-entropy over the trained tokens of `examples`."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(single_rows(examples[start : start + batch_size]), 0, packed=False)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        with autocast or contextlib.nullcontext():
            out = model(**batch)
        total += float(out.lm_loss) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def generate_replies(
    model: Transformer,
    tokenizer: Any,
    cases: Sequence[ReplyCase],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[tuple[str, bool]]:
    """Greedy replies to each case's conversation: (text decoded after the prompt, whether the
    reply ended with an end-of-turn id within max_new_tokens)."""
    ends = end_of_turn_ids(tokenizer)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        prompts = [
            render_chat(tokenizer, c.messages, add_generation_prompt=True).ids for c in chunk
        ]
        greedy = [SamplingParams(temperature=0.0)] * len(chunk)
        batch = BatchGeneration(model, prompts, max_new_tokens, greedy, ends)
        replies: list[list[int]] = [[] for _ in chunk]
        while step := batch.step():
            for row, token in step.items():
                replies[row].append(token)
        for prompt, ids in zip(prompts, replies):
            ended = bool(ids) and ids[-1] in ends
            text = decode_continuation(tokenizer, prompt, ids[:-1] if ended else ids)
            out.append((text, ended))
    return out


def score_replies(
    cases: Sequence[ReplyCase], replies: Sequence[tuple[str, bool]]
) -> tuple[float, float, dict[str, float]]:
    """(accuracy, share of replies that ended their turn, accuracy per task)."""
    right: dict[str, list[bool]] = defaultdict(list)
    for case, (text, _) in zip(cases, replies):
        right[case.task].append(case.is_correct(text))
    n = max(len(cases), 1)
    accuracy = sum(sum(v) for v in right.values()) / n
    ended = sum(e for _, e in replies) / n
    return accuracy, ended, {task: sum(v) / len(v) for task, v in sorted(right.items())}
