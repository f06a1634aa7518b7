"""The classification commands: `ismail classify`, `ismail eval` of a classifier, and the
summary `ismail finetune --task classify` prints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ismail_core.classify.data import (
    CSV_SUFFIXES,
    JSON_SUFFIXES,
    ClassifyError,
    LabelledText,
    check_known_labels,
    load_labelled,
    read_texts,
)
from ismail_core.classify.metrics import ClassifyEval, format_confusion
from ismail_core.finetune.cli import first_and_last

# A sentence for the printed `ismail classify` example after fine-tuning on the built-in set.
BUILTIN_EXAMPLE = "Efendiler, Cumhuriyetimizin onuncu yılında harf inkılabı ile okullar açıldı."
PREVIEW_CHARS = 70


def add_classify(sub: argparse._SubParsersAction) -> None:
    """Register `ismail classify`."""
    from ismail_core.cli import DEVICE_HELP

    p = sub.add_parser(
        "classify",
        help="label texts with a classifier checkpoint",
        description="Label each --text (or each text of --file) with the classifier CKPT from "
        "`ismail finetune --task classify`, printing the label and its probability (--json: "
        "one JSON object per text with every label's probability). --file is a .csv/.tsv "
        "(header row), .json/.jsonl file (the text field the classifier was trained on, or "
        "--text-field) or any other text file with one text per line.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--text", action="append", default=[], help="a text to label (repeatable)")
    p.add_argument("--file", help="a file of texts (see above)")
    p.add_argument("--text-field", help="text column/key of a CSV/JSON --file")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    """`ismail classify CKPT --text T ... | --file F`."""
    from ismail_core.classify.predict import TextClassifier
    from ismail_core.cli import UsageError

    if not args.text and args.file is None:
        raise UsageError("give texts to label: --text TEXT (repeatable) or --file FILE")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    for i, text in enumerate(args.text):
        if not text.strip():
            raise ClassifyError(f"--text number {i + 1} is empty; give it some words")
    classifier = TextClassifier.load(args.checkpoint, device=args.device)
    texts = list(args.text)
    if args.file is not None:
        texts += _file_texts(args.file, args.text_field or classifier.info.text_field)
    for text, prediction in zip(texts, classifier.predict(texts, args.batch_size)):
        if args.json:
            row = {"text": text, "label": prediction.label, "scores": prediction.scores}
            print(json.dumps(row, ensure_ascii=False))
        else:
            p = prediction.scores[prediction.label]
            print(f"{prediction.label}\t{p:.3f}\t{_preview(text)}")
    return 0


def _file_texts(path: str, text_field: str) -> list[str]:
    """The texts of a --file: a CSV/JSON file's text field, or the non-blank lines of any
    other file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ClassifyError(f"{path}: no such file; give a file of texts to --file")
    if file.suffix in (*CSV_SUFFIXES, *JSON_SUFFIXES):
        texts = read_texts(str(file), text_field)
    else:
        texts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ClassifyError(f"{path}: holds no texts")
    return texts


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


# ---------------------------------------------------------------------- ismail eval CKPT
def run_classifier_eval(args: argparse.Namespace) -> int:
    """`ismail eval CKPT --data DATA` for a classifier: accuracy, macro-F1 and the confusion
    matrix on every labelled text of DATA ('builtin': the built-in held-out split)."""
    from ismail_core.classify.predict import TextClassifier

    classifier = TextClassifier.load(args.checkpoint, device=args.device)
    records = _eval_records(args, classifier.info)
    check_known_labels(classifier.labels, records, f"the classifier {args.checkpoint}'s labels")
    log_probs = classifier.log_probabilities([r.text for r in records], args.batch_size)
    index = {label: i for i, label in enumerate(classifier.labels)}
    result = ClassifyEval.from_log_probs(
        log_probs.numpy(), [index[r.label] for r in records], classifier.labels
    )
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(describe_eval(result, args.data))
    return 0


def _eval_records(args: argparse.Namespace, info: Any) -> list[LabelledText]:
    if args.data == "builtin":
        from ismail_core.classify.builtin import builtin_split

        return builtin_split()[1]
    text_field = args.text_field or info.text_field
    return load_labelled(args.data, text_field, args.label_field or info.label_field)


def describe_eval(result: ClassifyEval, data: str) -> str:
    """The human-readable evaluation: accuracy, macro-F1, baseline, F1 per label, confusion."""
    f1 = ", ".join(f"{label} {value:.3f}" for label, value in result.f1.items())
    return (
        f"accuracy {result.accuracy:.1%}  macro-F1 {result.macro_f1:.3f}  (majority baseline "
        f"{result.majority:.1%}; {result.count} texts of {data})\n"
        f"F1 per label: {f1}\n{format_confusion(result.confusion, result.labels)}"
    )


# ---------------------------------------------------------------------- ismail finetune summary
def print_summary(result: Any, cfg: Any) -> None:
    """Held-out accuracy and macro-F1 before -> after, the confusion matrix of the last
    evaluation and the commands that use the classifier."""
    if span := first_and_last(result.evals, "macro_f1"):
        first, last = span
        print(
            f"held-out accuracy {first['accuracy']:.1%} (step {first['step']}) -> "
            f"{last['accuracy']:.1%} (step {last['step']}); macro-F1 {first['macro_f1']:.3f} -> "
            f"{last['macro_f1']:.3f}; majority baseline {last['majority_accuracy']:.1%}"
        )
        print(format_confusion(last["confusion"], last["labels"]))
    builtin = cfg.finetune.data == "builtin"
    example, data = (BUILTIN_EXAMPLE, "builtin") if builtin else ("TEXT", "TEST_FILE")
    print(f"checkpoint: {result.checkpoint}")
    print(f"evaluate:   uv run ismail eval {result.run_dir} --data {data}")
    print(f"classify:   uv run ismail classify {result.run_dir} --text '{example}'")
