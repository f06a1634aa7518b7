"""Classification metrics: accuracy, macro-F1, the confusion matrix and the majority baseline.

Label ids are indices into the checkpoint's label list. Macro-F1 is the unweighted mean of
each class's F1 = 2 TP / (2 TP + FP + FN) over the classes that occur in the gold labels or
the predictions (scikit-learn's f1_score(average="macro") convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def confusion_matrix(gold: Sequence[int], predicted: Sequence[int], n_labels: int) -> np.ndarray:
    """(n_labels, n_labels) int64 counts: row = gold label, column = predicted label."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    """Share of examples on the diagonal (0 for no examples)."""
    total = int(matrix.sum())
    return float(np.trace(matrix)) / total if total else 0.0


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class (0 where a class has no true positive)."""
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # = 2 TP + FP + FN
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the gold labels or the predictions."""
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    return float(per_class_f1(matrix)[present].mean()) if present.any() else 0.0


def majority_accuracy(matrix: np.ndarray) -> float:
    """Accuracy of always answering the most common gold label: the baseline to beat."""
    total = int(matrix.sum())
    return float(matrix.sum(axis=1).max()) / total if total else 0.0


@dataclass
class ClassifyEval:
    """Held-out loss (mean cross-entropy), accuracy, macro-F1, the majority baseline, the
    confusion matrix (rows gold, columns predicted) and the labels it is indexed by."""

    loss: float
    accuracy: float
    macro_f1: float
    majority: float
    confusion: list[list[int]]
    labels: list[str]
    f1: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_predictions(
        cls, loss: float, gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]
    ) -> ClassifyEval:
        """The metrics of `predicted` against `gold` label ids."""
        matrix = confusion_matrix(gold, predicted, len(labels))
        return cls(
            loss=loss,
            accuracy=accuracy(matrix),
            macro_f1=macro_f1(matrix),
            majority=majority_accuracy(matrix),
            confusion=matrix.tolist(),
            labels=list(labels),
            f1={label: float(f) for label, f in zip(labels, per_class_f1(matrix))},
        )

    @classmethod
    def from_log_probs(
        cls, log_probs: np.ndarray, gold: Sequence[int], labels: Sequence[str]
    ) -> ClassifyEval:
        """The metrics of (N, n_labels) log-probabilities against `gold` label ids: the loss is
        the mean negative log-probability of the gold labels, the prediction the argmax."""
        gold_ids = np.asarray(gold, dtype=np.int64)
        loss = float(-log_probs[np.arange(len(gold)), gold_ids].mean()) if len(gold) else 0.0
        return cls.from_predictions(loss, gold, log_probs.argmax(axis=1), labels)

    @property
    def count(self) -> int:
        return sum(map(sum, self.confusion))

    def to_dict(self) -> dict[str, Any]:
        """The metrics row (metrics.jsonl "eval" rows; `ismail eval --json`)."""
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "majority_accuracy": self.majority,
            "examples": self.count,
            "labels": self.labels,
            "confusion": self.confusion,
            "f1": self.f1,
        }


def format_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The confusion matrix as an aligned text table (rows gold, columns predicted)."""
    width = max(len(str(v)) for row in confusion for v in row)
    width = max(width, *(len(label) for label in labels))
    first = max(len("gold \\ predicted"), *(len(label) for label in labels))
    lines = ["gold \\ predicted".ljust(first) + "".join(f"  {x:>{width}}" for x in labels)]
    for label, row in zip(labels, confusion):
        lines.append(label.ljust(first) + "".join(f"  {v:>{width}}" for v in row))
    return "\n".join(lines)
