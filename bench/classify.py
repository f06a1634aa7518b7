"""Classification benchmark: a fine-tuned classifier against a majority-class baseline and
TF-IDF + logistic regression (scikit-learn), on the same split, in one run.

The classifier is a checkpoint of `ismail finetune --task classify` (default
runs/tiny-classify). The split is the one it was trained with: the built-in era set's
held-out speeches (ismail_core.classify.builtin.builtin_split), or for --data FILE the records
whose hash falls under the run's finetune.val_fraction (split_heldout, read from the run's
train_config.json), so no row sees a held-out text in training. Rows:

  majority      always the most common training label
  tfidf-word    TF-IDF of word 1-2-grams, then logistic regression
  tfidf-char    TF-IDF of character 2-5-grams inside word boundaries (char_wb), then LR
  tfidf-both    both feature sets side by side, then LR
  fine-tuned    the checkpoint (TextClassifier.predict)

TF-IDF lowercases the Turkish way (I -> ı, İ -> i). Logistic regression's C is chosen from
C_GRID by 5-fold cross-validation (macro-F1) on the training split alone, folds grouped by
speech for the built-in set (passages of one speech share names and topics); the train time
is the final fit on the whole training split, and the notes give the search's time. Every
row is scored by the same functions (ismail_core.classify.metrics).
Examples/s is prediction on the held-out texts on this machine (median of --repeats after a
warm-up; TF-IDF vectorizing included, the fine-tuned model with torch's threads on --device);
the fine-tuned model's train time is the run's own (metrics.jsonl: first record to the
checkpoint's training step, evaluations included), measured wherever the run ran. Below the
table the run's own held-out evaluation of the checkpoint is printed: it should equal the
fine-tuned row (same split, same model).

    uv run python bench/classify.py                         # runs/tiny-classify, built-in set
    uv run python bench/classify.py --checkpoint RUN --data labelled.csv
    uv run python bench/classify.py --record                # also add the table to RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT = "runs/tiny-classify"
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## classify (bench/classify.py)"
C_GRID = (0.1, 1.0, 10.0, 100.0)
CV_FOLDS = 5


@dataclass
class Split:
    """Training and held-out records of one data set, and where they came from."""

    train: list[Any]
    held_out: list[Any]
    source: str
    grouped: bool  # records carry groups (speeches) that cross-validation must keep together
    runs_own: bool = True  # the split the checkpoint's run trained and evaluated with


@dataclass
class Row:
    """One model's figures; None where a figure does not apply or is not known."""

    name: str
    features: str
    accuracy: float
    macro_f1: float
    examples_per_s: float | None = None
    train_s: float | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- the run
def locate(checkpoint: str) -> tuple[Path, RunInfo]:
    """(checkpoint directory, what its run recorded). Exits with the command to run when
    there is no classifier at `checkpoint`."""
    from ismail_core.checkpoint import CheckpointError, is_classifier, resolve_checkpoint

    try:
        directory = resolve_checkpoint(checkpoint)
    except CheckpointError as exc:
        sys.exit(
            f"bench/classify.py: {exc}\nMake the classifier first: "
            f"`uv run ismail finetune --task classify` (writes {DEFAULT_CHECKPOINT}), or give "
            "one with --checkpoint"
        )
    if not is_classifier(directory):
        from ismail_core.classify.predict import not_a_classifier

        sys.exit(f"bench/classify.py: {not_a_classifier(checkpoint)}")
    return directory, RunInfo.read(directory)


@dataclass
class RunInfo:
    """What the checkpoint's run recorded, read once at the start (a run directory may be
    rewritten by a new run while the benchmark measures)."""

    directory: Path | None
    config: dict[str, Any]
    step: int | None  # the checkpoint's step
    rows: list[dict[str, Any]]  # metrics.jsonl

    @classmethod
    def read(cls, checkpoint: Path) -> RunInfo:
        """The run of a step checkpoint (RUN/checkpoints/step_N), or an empty record."""
        from ismail_core.train.metrics import read_metrics

        name = checkpoint.name
        step = int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
        if run is None or not (run / "train_config.json").is_file():
            return cls(None, {}, step, [])
        rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
        return cls(run, _read_json(run / "train_config.json") or {}, step, rows)

    def _until_step(self, kind: str) -> list[dict[str, Any]]:
        """Rows of `kind` up to the checkpoint's step."""
        return [
            r
            for r in self.rows
            if r.get("kind") == kind and (self.step is None or r["step"] <= self.step)
        ]

    def train_seconds(self) -> float | None:
        """Wall-clock seconds from the first record to the checkpoint's training step
        (evaluations included); None when unknown."""
        train = [r["time"] for r in self._until_step("train") if "time" in r]
        first = [r["time"] for r in self.rows if "time" in r]
        return max(train) - min(first) if train else None

    def evaluation(self) -> str:
        """The run's own held-out evaluation of this checkpoint, or why there is none."""
        evals = [r for r in self._until_step("eval") if "macro_f1" in r]
        if self.directory is None:
            return "the run's own evaluation: unknown (the checkpoint is not in a run directory)"
        if not evals or (self.step is not None and evals[-1]["step"] != self.step):
            return f"the run's own evaluation: none logged at step {self.step}"
        last = evals[-1]
        return (
            f"the run's own held-out evaluation of this checkpoint (step {last['step']}): "
            f"accuracy {last['accuracy']:.1%}, macro-F1 {last['macro_f1']:.3f} on "
            f"{last.get('examples', '?')} texts"
        )

    def notes(self) -> list[str]:
        """How the run trained, from its train_config ('step 150 of 150', 'train all')."""
        notes = []
        steps = self.config.get("train", {}).get("steps")
        if self.step is not None:
            notes.append(f"step {self.step}" + (f" of {steps}" if steps else ""))
        method = self.config.get("finetune", {}).get("method", "full")
        trains = self.config.get("classify", {}).get("train")
        if method != "full":
            notes.append(f"{method} + head")
        elif trains is not None:
            notes.append(f"train {trains}")
        return notes


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_split(args: argparse.Namespace, info: Any, config: dict[str, Any]) -> Split:
    """The training and held-out records the classifier was fine-tuned and evaluated with."""
    from ismail_core.classify.builtin import BUILTIN, builtin_split
    from ismail_core.classify.data import load_labelled, split_heldout
    from ismail_core.finetune.config import FinetuneSection

    trained_on = config.get("finetune", {}).get("data")
    data = args.data or trained_on or BUILTIN
    run_fraction = config.get("finetune", {}).get("val_fraction", FinetuneSection.val_fraction)
    fraction = run_fraction if args.val_fraction is None else args.val_fraction
    runs_own = trained_on is None or (
        data == trained_on and (data == BUILTIN or fraction == run_fraction)
    )
    if trained_on is not None and not runs_own:
        print(
            f"warning: the checkpoint was fine-tuned on {trained_on} (val_fraction "
            f"{run_fraction}), not on this split of {data}: its row may have seen held-out "
            "texts (or none like them), so it is not on the same footing as the baselines"
        )
    if data == BUILTIN:
        train, held_out = builtin_split()
        return Split(train, held_out, "the built-in era set (held out by speech)", True, runs_own)
    records = load_labelled(
        data, args.text_field or info.text_field, args.label_field or info.label_field
    )
    train, held_out = split_heldout(records, fraction)
    if not held_out or not train:
        sys.exit(
            f"bench/classify.py: {data} split at val_fraction {fraction} leaves "
            f"{len(train)} training and {len(held_out)} held-out records; give more data or "
            "another --val-fraction"
        )
    source = f"{data} (val_fraction {fraction}, by text hash)"
    return Split(train, held_out, source, False, runs_own)


# ----------------------------------------------------------------------------- scoring
def score(name: str, features: str, gold: Sequence[str], predicted: Sequence[str], labels) -> Row:
    """A Row with accuracy and macro-F1 of `predicted` against `gold` (label strings)."""
    from ismail_core.classify.metrics import accuracy, confusion_matrix, macro_f1

    index = {label: i for i, label in enumerate(labels)}
    matrix = confusion_matrix([index[g] for g in gold], [index[p] for p in predicted], len(labels))
    return Row(name, features, accuracy(matrix), macro_f1(matrix))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """(fn()'s result, the median seconds over `repeats` calls after one warm-up call)."""
    result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


# ----------------------------------------------------------------------------- rows
def majority_row(split: Split, labels: list[str]) -> Row:
    """Always the most common training label (ties: the first in label order)."""
    counts = Counter(r.label for r in split.train)
    top = max(labels, key=lambda label: counts[label])
    gold = [r.label for r in split.held_out]
    row = score("majority class", f"always '{top}'", gold, [top] * len(gold), labels)
    row.train_s = 0.0
    return row


def turkish_lower(text: str) -> str:
    """Lowercase with Turkish dotted and dotless i (I -> ı, İ -> i)."""
    return text.replace("I", "ı").replace("İ", "i").lower()


TFIDF_KINDS = {
    "tfidf-word": "TF-IDF word 1-2-grams",
    "tfidf-char": "TF-IDF char_wb 2-5-grams",
    "tfidf-both": "TF-IDF word 1-2 + char_wb 2-5-grams",
}


def vectorizer(kind: str) -> Any:
    """The TF-IDF features of a row (sublinear tf; terms in at least 2 training texts)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common = {"preprocessor": turkish_lower, "sublinear_tf": True, "min_df": 2}
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), **common)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)
    if kind == "tfidf-word":
        return word
    if kind == "tfidf-char":
        return char
    return FeatureUnion([("word", word), ("char", char)])


def tfidf_row(kind: str, split: Split, labels: list[str], repeats: int) -> Row:
    """TF-IDF + logistic regression, C chosen by cross-validation on the training split; the
    train time is the final fit's, the search's is in the notes."""
    import tempfile

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    print(f"{kind}: choosing C from {C_GRID} by {CV_FOLDS}-fold cross-validation", flush=True)
    texts = [r.text for r in split.train]
    y = [r.label for r in split.train]
    with tempfile.TemporaryDirectory() as cache:  # each fold's features computed once
        pipeline = Pipeline(
            [("tfidf", vectorizer(kind)), ("lr", LogisticRegression(max_iter=2000))],
            memory=cache,
        )
        search = GridSearchCV(
            pipeline, {"lr__C": list(C_GRID)}, cv=folds(split), scoring="f1_macro"
        )
        start = time.perf_counter()
        search.fit(texts, y)
        search_s = time.perf_counter() - start
    held = [r.text for r in split.held_out]
    predicted, seconds = timed(lambda: search.best_estimator_.predict(held), repeats)
    row = score(kind, TFIDF_KINDS[kind], [r.label for r in split.held_out], predicted, labels)
    row.train_s, row.examples_per_s = search.refit_time_, len(held) / seconds
    row.notes.append(f"C={search.best_params_['lr__C']:g}, search {search_s:.0f} s")
    return row


def folds(split: Split) -> list[tuple[Any, Any]]:
    """Cross-validation folds of the training split: grouped by speech for the built-in set,
    else stratified by label."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    texts, y = [r.text for r in split.train], [r.label for r in split.train]
    if split.grouped:
        groups = [r.group for r in split.train]
        return list(GroupKFold(CV_FOLDS).split(texts, y, groups=groups))
    return list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=0).split(texts, y))


def finetuned_row(classifier: Any, split: Split, args: argparse.Namespace, run: RunInfo) -> Row:
    """The checkpoint's predictions on the held-out texts."""
    held = [r.text for r in split.held_out]
    predictions, seconds = timed(lambda: classifier.predict(held, args.batch_size), args.repeats)
    row = score(
        "fine-tuned",
        describe_model(classifier),
        [r.label for r in split.held_out],
        [p.label for p in predictions],
        classifier.labels,
    )
    row.examples_per_s = len(held) / seconds
    row.train_s = run.train_seconds()
    row.notes += run.notes()
    return row


def run_evaluation(run: RunInfo, split: Split) -> str:
    """The run's own evaluation of the checkpoint, when it was on this split."""
    if not split.runs_own:
        return "the run's own evaluation: on another split than this one (see the warning)"
    return run.evaluation()


def describe_model(classifier: Any) -> str:
    """'ismail 6 layers, 5.9M params, <= 256 tokens' for the table."""
    model = classifier.model
    params = sum(p.numel() for p in model.parameters())
    return (
        f"ismail {model.cfg.n_layers} layers, {params / 1e6:.1f}M params, "
        f"<= {classifier.max_len} tokens"
    )


# ----------------------------------------------------------------------------- report
def machine() -> str:
    """This machine in one line: CPU, cores, memory, load, device, library versions."""
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB RAM"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}{load}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), scikit-learn {sklearn.__version__}"
    )


def table(rows: list[Row]) -> str:
    """The markdown table of the rows."""

    def number(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f}" if value < 10 else f"{value:,.0f}"

    lines = [
        "| model | features | accuracy | macro-F1 | predict examples/s | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = f" ({', '.join(r.notes)})" if r.notes else ""
        lines.append(
            f"| {r.name} | {r.features}{notes} | {r.accuracy:.1%} | {r.macro_f1:.3f} "
            f"| {number(r.examples_per_s)} | {number(r.train_s)} |"
        )
    return "\n".join(lines)


def header(args: argparse.Namespace, checkpoint: Path, split: Split, labels: list[str]) -> str:
    """What was measured, on what, where."""
    counts = Counter(r.label for r in split.held_out)
    spread = ", ".join(f"{label} {counts[label]}" for label in labels)
    shown = (
        checkpoint.relative_to(Path.cwd()) if checkpoint.is_relative_to(Path.cwd()) else checkpoint
    )
    return (
        f"classifier `{shown}` on {args.device}; data: {split.source}: "
        f"{len(split.train):,} training and {len(split.held_out):,} held-out texts ({spread}).\n"
        f"Machine: {machine()}."
    )


def record(text: str) -> None:
    """Put `text` first under this benchmark's section of RESULTS.md (made if missing)."""
    results = RESULTS.read_text(encoding="utf-8")
    if SECTION not in results:
        results = results.rstrip("\n") + f"\n\n{SECTION}\n"
    head, tail = results.split(SECTION, 1)
    tail = tail.strip("\n")
    body = f"{text.strip()}\n\n{tail}" if tail else text.strip()
    RESULTS.write_text(f"{head}{SECTION}\n\n{body}\n", encoding="utf-8")
    print(f"recorded in {RESULTS}")


# ----------------------------------------------------------------------------- driver
def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help="classifier checkpoint or run directory"
    )
    parser.add_argument(
        "--data", help="labelled CSV/JSONL (default: what the run was fine-tuned on)"
    )
    parser.add_argument("--text-field", help="text column/key (default: the classifier's)")
    parser.add_argument("--label-field", help="label column/key (default: the classifier's)")
    parser.add_argument(
        "--val-fraction", type=float, help="held-out share for --data (default: the run's)"
    )
    parser.add_argument("--device", default="cpu", help="the fine-tuned model's: cpu, cuda, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per row")
    parser.add_argument("--record", action="store_true", help=f"add the table to {RESULTS.name}")
    return parser.parse_args()


def measure(args: argparse.Namespace) -> str:
    """Every row on the checkpoint's split; the dated report (header, table, run check)."""
    import torch
    from ismail_core.classify.data import check_known_labels
    from ismail_core.classify.predict import TextClassifier

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint, run = locate(args.checkpoint)
    classifier = TextClassifier.load(checkpoint, device=args.device)
    labels = classifier.labels
    split = load_split(args, classifier.info, run.config)
    for records in (split.train, split.held_out):
        check_known_labels(labels, records, f"the classifier {checkpoint}'s labels")
    started = time.perf_counter()
    rows = [majority_row(split, labels)]
    rows += [tfidf_row(kind, split, labels, args.repeats) for kind in TFIDF_KINDS]
    rows.append(finetuned_row(classifier, split, args, run))
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["uv run python bench/classify.py", *sys.argv[1:]])
    return (
        f"{date}; {header(args, checkpoint, split, labels)}\n\n"
        f"`{command}` ({time.perf_counter() - started:.0f} s):\n\n{table(rows)}\n\n"
        f"{run_evaluation(run, split)}\n"
    )


def main() -> None:
    args = parse_args()
    text = measure(args)
    print(text)
    if args.record:
        record(text)


if __name__ == "__main__":
    main()
