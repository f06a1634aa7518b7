"""Labelled texts for classification: reading, label checks, the label mapping, the held-out
split, token ids and batches.

Records come from a CSV file (a header row naming the columns), a JSON list or JSONL file, a
folder of them, or `hf:NAME[:SPLIT]` (`datasets.load_dataset`). Each needs a text and a label
under configurable names. Labels become strings ("pos", or "1" for the number 1), and one data
set must write them one way: numbers and words mixed in one file is refused, because 1 and "1"
would silently become one class. Every record is checked as it is read, and errors name the
file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ismail_core.finetune.formats import (
    HF_PREFIX,
    FinetuneDataError,
    file_records,
    hf_rows,
    load_hf_split,
    read_text_file,
)

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".json", ".jsonl")


class ClassifyError(FinetuneDataError):
    """Bad classification data or input; the message names the record and the fix."""


@dataclass(frozen=True)
class LabelledText:
    """One example: its text, its label (a string), where it was read from ("file.csv:3") and
    its group: records of one group are held out together (the built-in set's speeches)."""

    text: str
    label: str
    source: str
    group: str = ""


def describe_specs() -> str:
    """The accepted data specs, for messages and help."""
    return (
        "a .csv file with a header row, a .json file holding a list of records, a .jsonl file "
        f"with one record per line, a folder of them, or '{HF_PREFIX}NAME[:SPLIT]'"
    )


def load_labelled(
    spec: str, text_field: str = "text", label_field: str = "label", cache_dir: str | None = None
) -> list[LabelledText]:
    """Every record of `spec` as a checked LabelledText (see the module docstring).

    Raises ClassifyError for a missing or empty text, a missing label, labels of mixed types
    and data with no records."""
    raw = [
        (source, *_text_and_label(record, source, text_field, label_field))
        for source, record in _records(spec, label_field, cache_dir)
    ]
    if not raw:
        raise ClassifyError(f"{spec}: holds no records; give {describe_specs()}")
    _check_label_types(spec, [(source, label) for source, _, label in raw])
    return [LabelledText(text, _label_text(label), source) for source, text, label in raw]


# --- reading ------------------------------------------------------------------------------------


def _records(spec: str, label_field: str, cache_dir: str | None) -> Iterable[tuple[str, Any]]:
    """(source, record) pairs of a spec, lazily, so the first bad record stops the reading."""
    if spec.startswith(HF_PREFIX):
        return _hf_records(spec[len(HF_PREFIX) :], label_field, cache_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ClassifyError(f"{spec}: the path does not exist; give {describe_specs()}")
    suffixes = (*CSV_SUFFIXES, *JSON_SUFFIXES)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())
        if not files:
            raise ClassifyError(f"{spec}: the folder holds no .csv, .tsv, .json or .jsonl files")
    elif path.suffix in suffixes:
        files = [path]
    else:
        raise ClassifyError(f"{spec}: not a .csv, .tsv, .json or .jsonl file")
    return itertools.chain.from_iterable(_file(f) for f in files)


def _file(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix in CSV_SUFFIXES:
        return _csv_records(path, CSV_SUFFIXES[path.suffix])
    return file_records(path)


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Rows of a CSV file as dicts keyed by its header; empty cells are missing values."""
    reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # a blank line
            cells = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            yield f"{path}:{reader.line_num}", cells
    except csv.Error as exc:
        raise ClassifyError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _hf_records(name_split: str, label_field: str, cache_dir: str | None) -> Iterator:
    """Rows of a Hugging Face dataset; ClassLabel ids become their names."""
    ds, where = load_hf_split(name_split, cache_dir, ClassifyError, describe_specs)
    names = getattr(ds.features.get(label_field), "int2str", None)
    for source, row in hf_rows(ds, where):
        if names is not None and isinstance(row.get(label_field), int) and row[label_field] >= 0:
            row[label_field] = names(row[label_field])
        yield source, row


# --- checks -------------------------------------------------------------------------------------


def _text_and_label(record: Any, source: str, text_field: str, label_field: str) -> tuple:
    """(text, raw label) of a record, or a ClassifyError naming what is wrong."""
    text = _text(record, source, text_field)
    label = record.get(label_field)
    if label is None or (isinstance(label, str) and not label.strip()):
        raise ClassifyError(
            f"{source}: the label ({label_field!r}) is missing; label every record, or name the "
            "label field with --classify.label_field"
        )
    if not isinstance(label, str | int | float) or (
        isinstance(label, float) and not math.isfinite(label)
    ):
        raise ClassifyError(
            f"{source}: the label must be a string or a number, not {label!r}; write one label "
            "per record"
        )
    return text, label


def _text(record: Any, source: str, text_field: str) -> str:
    """The text of a record, or a ClassifyError for a missing, non-string or empty one."""
    if not isinstance(record, dict):
        raise ClassifyError(
            f"{source}: a record must be an object with a {text_field!r} field, not "
            f"{type(record).__name__}"
        )
    if text_field not in record:
        fields = ", ".join(map(repr, record)) or "none"
        raise ClassifyError(
            f"{source}: no {text_field!r} field (it has {fields}); name the text field with "
            "--classify.text_field (--text-field for ismail classify and eval)"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise ClassifyError(
            f"{source}: the text ({text_field!r}) must be a string, not {type(text).__name__}"
        )
    if not text.strip():
        raise ClassifyError(f"{source}: the text is empty; give it a text or remove the record")
    return text


def read_texts(spec: str, text_field: str = "text") -> list[str]:
    """The texts of a CSV/JSON file, folder or hf: spec, without labels (to classify them).
    Raises ClassifyError for a record whose text is missing or empty."""
    return [_text(record, source, text_field) for source, record in _records(spec, "", None)]


def _label_type(label: str | int | float | bool) -> str:
    if isinstance(label, bool):
        return "boolean"
    if isinstance(label, int) or (isinstance(label, float) and label.is_integer()):
        return "integer"
    return "number" if isinstance(label, float) else "string"


def _label_text(label: str | int | float | bool) -> str:
    """A label as the string the mapping uses: "pos", "1" (for 1 or 1.0), "true"."""
    kind = _label_type(label)
    if kind == "boolean":
        return "true" if label else "false"
    if kind == "integer":
        return str(int(label))
    return str(label).strip()


def _check_label_types(spec: str, labels: Sequence[tuple[str, Any]]) -> None:
    """Refuse labels written as different JSON types (1 and "pos", true and "yes")."""
    first: dict[str, tuple[str, Any]] = {}
    for source, label in labels:
        first.setdefault(_label_type(label), (source, label))
    if len(first) > 1:
        seen = "; ".join(f"{kind} {label!r} at {src}" for kind, (src, label) in first.items())
        raise ClassifyError(
            f"{spec}: labels of mixed types ({seen}); write every label the same way, for "
            'example all as strings ("1", "pos")'
        )


def label_names(records: Iterable[LabelledText]) -> list[str]:
    """The sorted distinct labels (numerically when every label is an integer): the mapping
    from class id to label that a checkpoint saves."""
    labels = {r.label for r in records}
    if all(_is_int(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def check_known_labels(labels: Sequence[str], records: Iterable[LabelledText], what: str) -> None:
    """Raise ClassifyError for the first record whose label is not in `labels`; `what` says
    where the labels came from ("the training split", "the classifier CKPT")."""
    known = set(labels)
    for record in records:
        if record.label not in known:
            raise ClassifyError(
                f"{record.source}: label {record.label!r} does not occur in {what} "
                f"({', '.join(labels)}), so the classifier cannot predict it; add training "
                "records with this label, or remove or relabel this record"
            )


def heldout_share(key: str) -> float:
    """A number in [0, 1) fixed by `key`: a record is held out when it is below val_fraction."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_heldout(
    records: Sequence[LabelledText], fraction: float
) -> tuple[list[LabelledText], list[LabelledText]]:
    """(training, held-out) records: by the hash of each record's group, or of its text, so the
    same text always lands on the same side."""
    train: list[LabelledText] = []
    held_out: list[LabelledText] = []
    for r in records:
        (held_out if heldout_share(r.group or r.text) < fraction else train).append(r)
    return train, held_out


# --- token ids and batches ----------------------------------------------------------------------


def encode_texts(tokenizer: Any, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each text after the id documents start with, cut to `max_len` (the start
    of a text is kept)."""
    start = tokenizer.document_start_id
    prefix = [] if start is None else [start]
    return [(prefix + list(e.ids))[:max_len] for e in tokenizer.encode_batch(list(texts))]


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T) right-padded with `pad_id`, last_index (B,): the position of each
    row's last real token, whose hidden state the classifier reads)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
    return ids, last


def pad_id(tokenizer: Any) -> int:
    """The id padding uses (never read: it only follows a row's last real token)."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0
