"""Prediction with a classifier checkpoint: the public API of `ismail classify`, ismail-serve's
`POST /v1/classify` and the benchmarks.

    clf = TextClassifier.load("runs/tiny-classify", device="auto")
    clf.labels                        # ["1906-1922", "1923-1926", "1927-1938"]
    clf.predict(["Efendiler! ..."])   # [Prediction(label="1906-1922", scores={label: p, ...})]

Texts are encoded as in training (the document start id, then the text's ids, cut to the
model's context: the start of a long text is kept), batched by length and right-padded; each
text gets the same scores alone as in any batch (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ismail_core.checkpoint import CheckpointError, is_classifier, load_model, resolve_checkpoint
from ismail_core.classify.data import ClassifyError, collate, encode_texts, pad_id
from ismail_core.classify.model import TransformerClassifier


@dataclass
class Prediction:
    """The most probable label and every label's probability (softmax over the labels)."""

    label: str
    scores: dict[str, float]


def not_a_classifier(path: str | Path) -> CheckpointError:
    """The error for a causal language model given where a classifier is needed."""
    return CheckpointError(
        f"{path} is a causal language model, not a classifier: fine-tune one with "
        f"`ismail finetune --task classify --base {path}` (on the built-in set, or with "
        "--data FILE for your labelled texts)"
    )


class TextClassifier:
    """A loaded classifier checkpoint (see the module docstring)."""

    def __init__(self, model: TransformerClassifier, tokenizer: Any, max_len: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len = max_len or model.cfg.max_seq_len
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None
    ) -> TextClassifier:
        """Load a classifier checkpoint or run directory (its latest checkpoint). Raises
        CheckpointError for a causal language model, naming the command that makes one."""
        directory = resolve_checkpoint(path)
        if not is_classifier(directory):
            raise not_a_classifier(path)
        model, tokenizer = load_model(directory, device=device, dtype=dtype)
        assert isinstance(model, TransformerClassifier)  # is_classifier(directory) holds
        return cls(model, tokenizer)

    @property
    def labels(self) -> list[str]:
        """The labels, in class id order."""
        return list(self.model.labels)

    @property
    def info(self) -> Any:
        """The checkpoint's ClassifierInfo (labels, and the data fields they came from)."""
        return self.model.info

    def log_probabilities(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(len(texts), n_labels) float32 log-softmax over the labels. Raises ClassifyError
        for an empty text."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ClassifyError(f"text {i + 1} is empty; give every text some words")
        rows = encode_texts(self.tokenizer, texts, self.max_len)
        return log_probabilities(self.model, rows, pad_id(self.tokenizer), batch_size)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """A Prediction for each text, in order. Raises ClassifyError for an empty text."""
        probs = self.log_probabilities(texts, batch_size).exp()
        labels = self.labels
        return [
            Prediction(labels[int(row.argmax())], {k: float(p) for k, p in zip(labels, row)})
            for row in probs
        ]


@torch.no_grad()
def log_probabilities(
    model: TransformerClassifier,
    rows: Sequence[Sequence[int]],
    pad: int,
    batch_size: int = 32,
    autocast: Any = None,
) -> torch.Tensor:
    """(len(rows), n_labels) float32 log-softmax of a classifier over token-id rows, batched
    in order of length (little padding) and returned in the rows' order, on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty((len(rows), len(model.labels)), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        ids, last = collate([rows[i] for i in chosen], pad)
        with autocast or contextlib.nullcontext():
            logits = model(ids.to(device), last_index=last.to(device))
        out[chosen] = torch.log_softmax(logits.float(), dim=-1).cpu()
    return out
