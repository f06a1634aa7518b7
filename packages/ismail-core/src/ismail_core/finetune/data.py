"""Conversations to training rows: the chat template's ids, loss masks, length limits,
a held-out split by content hash, optional packing, and batches as a function of the step.

Labels are the ids themselves where the model learns (the assistant turns and their
end-of-turn token, or everything with train_on="all") and -100 elsewhere; the model shifts
them. A conversation's first id (the document separator) is never a target, so in a packed row
no document learns to predict the start of the next one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ismail_core.chat import render_chat
from ismail_core.errors import IsmailError

IGNORE = -100


class FinetuneError(IsmailError, ValueError):
    """Fine-tuning cannot start; the message says what to change."""


@dataclass
class Example:
    """One conversation's ids and labels (IGNORE where there is no loss)."""

    ids: list[int]
    labels: list[int]

    @property
    def trained(self) -> int:
        """Number of ids the loss reads (after the shift: the first id is never a target)."""
        return sum(label != IGNORE for label in self.labels[1:])


@dataclass
class Row:
    """One training sequence: one example, or several packed, with their document numbers."""

    ids: list[int]
    labels: list[int]
    docs: list[int]


def encode_example(
    tokenizer: object, messages: Sequence[Mapping[str, str]], train_on: str = "assistant"
) -> Example:
    """The chat template's ids for `messages` with labels on assistant turns (or on all)."""
    rendered = render_chat(tokenizer, messages)
    labels = [
        token if trainable or train_on == "all" else IGNORE
        for token, trainable in zip(rendered.ids, rendered.trainable)
    ]
    labels[0] = IGNORE
    return Example(rendered.ids, labels)


def fit_length(
    examples: Sequence[Example], max_len: int, too_long: str
) -> tuple[list[Example], int, int]:
    """Apply the length limit: (kept examples, number truncated, number dropped). A truncated
    example that keeps no trained id is dropped too."""
    kept, truncated, dropped = [], 0, 0
    for ex in examples:
        if len(ex.ids) > max_len:
            if too_long == "drop":
                dropped += 1
                continue
            ex = Example(ex.ids[:max_len], ex.labels[:max_len])
            truncated += 1
        if ex.trained == 0:
            dropped += 1
            continue
        kept.append(ex)
    return kept, truncated, dropped


def content_hash(messages: Sequence[Mapping[str, str]]) -> float:
    """A number in [0, 1) fixed by the conversation's content (for the held-out split)."""
    text = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pack(examples: Sequence[Example], seq_len: int) -> list[Row]:
    """Greedy packing in order: an example goes into the current row while it fits."""
    rows: list[Row] = []
    current = Row([], [], [])
    for ex in examples:
        if current.ids and len(current.ids) + len(ex.ids) > seq_len:
            rows.append(current)
            current = Row([], [], [])
        doc = current.docs[-1] + 1 if current.docs else 0
        current.ids += ex.ids
        current.labels += ex.labels
        current.docs += [doc] * len(ex.ids)
    if current.ids:
        rows.append(current)
    return rows


def single_rows(examples: Sequence[Example]) -> list[Row]:
    """One row per example (no packing)."""
    return [Row(ex.ids, ex.labels, [0] * len(ex.ids)) for ex in examples]


def collate(rows: Sequence[Row], pad_id: int, packed: bool) -> dict[str, Any]:
    """The model's keyword arguments: right-padded input_ids and labels, loss_only (the loss
    needs no other logits) and, for packed rows, doc_ids (padding forms a document of its own,
    so no real token attends to it)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    docs = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.tensor(row.ids)
        labels[i, :n] = torch.tensor(row.labels)
        docs[i, :n] = torch.tensor(row.docs)
        docs[i, n:] = row.docs[-1] + 1
    batch = {"input_ids": ids, "labels": labels, "loss_only": True}
    if packed:
        batch["doc_ids"] = docs
    return batch


class RowSampler:
    """Rows for each micro-batch as a pure function of (seed, step, micro, rank): the k-th
    row drawn in a run is row perm_e[k mod N] of epoch e = k div N (a fresh permutation per
    epoch), so resuming at a step reproduces the uninterrupted run's batches exactly."""

    def __init__(self, n_rows: int, batch_size: int, grad_accum: int, world_size: int, seed: int):
        if n_rows == 0:
            raise FinetuneError("no training conversations are left after the length limit")
        self.n, self.batch_size, self.accum, self.world = n_rows, batch_size, grad_accum, world_size
        self.seed = seed
        self._epoch, self._perm = -1, np.arange(0)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        """Row indices of one micro-batch."""
        first = ((step * self.accum + micro) * self.world + rank) * self.batch_size
        return [self._row(k) for k in range(first, first + self.batch_size)]

    def _row(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.n)
        return int(self._perm[i])
