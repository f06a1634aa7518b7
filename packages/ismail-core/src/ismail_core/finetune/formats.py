"""Fine-tuning data: the formats users bring, read into one normalized `Conversation` form.

Accepted records (the format is detected per record, so one file may mix them):

- chat: `{"messages": [{"role": "system"|"developer"|"user"|"assistant", "content": ...}]}`
- ShareGPT: `{"conversations": [{"from": "system"|"human"|"user"|"gpt"|"assistant",
  "value": ...}]}`, with an optional top-level `"system"`
- Alpaca: `{"instruction": ..., "input": ..., "output": ...}` (`input` and `system` optional)
- prompt/completion: `{"prompt": ..., "completion": ...}`

They come from a `.json` file holding a list, a JSONL file (one record per line), a folder of
such files, or `hf:NAME[:SPLIT]` through `datasets.load_dataset`. Every record is checked as it
is read, so bad data fails at once with its file and line rather than deep inside training.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ismail_core.errors import IsmailError

Role = Literal["system", "user", "assistant"]
Message = dict[str, str]  # {"role": Role, "content": str}
Turn = tuple[Role, str]

HF_PREFIX = "hf:"
DEFAULT_SPLIT = "train"
SUFFIXES = (".json", ".jsonl")

CHAT_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system role
    "user": "user",
    "assistant": "assistant",
}
SHAREGPT_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

# JSON's own whitespace (str.isspace would also accept characters a JSON parser rejects).
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class FinetuneDataError(IsmailError, ValueError):
    """Bad fine-tuning data; the message names the file and line and says what to change."""


@dataclass(frozen=True)
class Conversation:
    """One training example: (role, content) turns in order, and where it was read from.

    `source` ("file.jsonl:12", "hf:NAME:train[3]") is for messages and logs only; it takes no
    part in equality, so the same conversation read from two files compares equal.
    """

    messages: tuple[Turn, ...]
    source: str = field(compare=False)

    def as_messages(self) -> list[Message]:
        """The turns as OpenAI-style `{"role": ..., "content": ...}` dicts."""
        return [{"role": role, "content": content} for role, content in self.messages]


def describe_specs() -> str:
    """The accepted data specs, for error messages and CLI help."""
    return (
        "a .json file holding a list of records, a .jsonl file with one record per line, a "
        f"folder of them, or '{HF_PREFIX}NAME[:SPLIT]' for a Hugging Face dataset "
        f"(split {DEFAULT_SPLIT} by default)"
    )


def describe_formats() -> str:
    """The accepted record formats, for error messages."""
    return (
        'chat {"messages": [{"role", "content"}, ...]}, '
        'ShareGPT {"conversations": [{"from", "value"}, ...]}, '
        'Alpaca {"instruction", "input" (optional), "output"}, '
        'prompt/completion {"prompt", "completion"}'
    )


def load_conversations(spec: str, *, cache_dir: str | None = None) -> list[Conversation]:
    """Read every record of `spec` (see `describe_specs`) as a validated `Conversation`.

    `cache_dir` is the `datasets` cache for `hf:` specs. Raises `FinetuneDataError` on the
    first bad record, and when the data holds no records at all.
    """
    conversations = [
        _conversation(record, source) for source, record in read_records(spec, cache_dir)
    ]
    if not conversations:
        raise FinetuneDataError(
            f"{spec}: holds no records; add records in one of these formats: {describe_formats()}"
        )
    return conversations


# --- reading records ---------------------------------------------------------------------------


def read_records(spec: str, cache_dir: str | None = None) -> Iterable[tuple[str, Any]]:
    """(source, record) pairs of a spec, lazily, so the first bad record stops the reading."""
    if spec.startswith(HF_PREFIX):
        return _hf_records(spec[len(HF_PREFIX) :], cache_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FinetuneDataError(f"{spec}: the path does not exist; give {describe_specs()}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise FinetuneDataError(f"{spec}: the folder holds no .json or .jsonl files")
    else:
        files = [path]
    return itertools.chain.from_iterable(file_records(f) for f in files)


def file_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of one file: a JSON list if its first non-space character is '[', else JSONL."""
    text = read_text_file(path)
    if text.startswith("[", _skip_space(text, 0)):
        return _json_list_records(text, path)
    return _jsonl_records(text, path)


def read_text_file(path: Path) -> str:
    """The file as text; a UTF-8 byte-order mark (Windows editors add one) is dropped."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FinetuneDataError(
            f"{path}:{line}: not UTF-8 text (invalid byte at offset {exc.start}); save the file "
            "as UTF-8 JSON or JSONL (for parquet files use hf:FOLDER)"
        ) from None


def _jsonl_records(text: str, path: Path) -> Iterator[tuple[str, Any]]:
    """One record per non-blank line.

    Splits on '\\n' only: str.splitlines would also split on U+2028 and similar characters,
    which JSON allows unescaped inside strings.
    """
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _malformed(f"{path}:{lineno}", exc) from None
        yield f"{path}:{lineno}", record


def _json_list_records(text: str, path: Path) -> Iterator[tuple[str, Any]]:
    """The elements of a file holding one JSON list, each with the line it starts on.

    Decodes element by element (rather than json.loads of the whole file) to learn where each
    record starts, so errors about a record name its line.
    """
    decoder = json.JSONDecoder()
    line, counted = 1, 0  # line number at offset `counted`; counting onwards avoids rescans
    pos = _skip_space(text, _skip_space(text, 0) + 1)  # just past the '['
    try:
        if not text.startswith("]", pos):
            while True:
                record, end = decoder.raw_decode(text, pos)
                line += text.count("\n", counted, pos)
                counted = pos
                yield f"{path}:{line}", record
                pos = _skip_space(text, end)
                if not text.startswith(",", pos):
                    break
                pos = _skip_space(text, pos + 1)
            if not text.startswith("]", pos):
                raise json.JSONDecodeError("Expecting ',' or ']'", text, pos)
        end = _skip_space(text, pos + 1)
        if end != len(text):
            raise json.JSONDecodeError("Extra data after the list", text, end)
    except json.JSONDecodeError as exc:
        raise _malformed(f"{path}:{exc.lineno}", exc) from None


def _skip_space(text: str, pos: int) -> int:
    match = _JSON_SPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string too
    return match.end()


def _malformed(source: str, exc: json.JSONDecodeError) -> FinetuneDataError:
    return FinetuneDataError(
        f"{source}: malformed JSON ({exc.msg} at column {exc.colno}); a file must hold one JSON "
        "object per line (JSONL) or a single JSON list of objects"
    )


def _hf_records(name_split: str, cache_dir: str | None) -> Iterator[tuple[str, Any]]:
    """Rows of a Hugging Face dataset: a hub name, or a local folder that load_dataset reads."""
    ds, where = load_hf_split(name_split, cache_dir, FinetuneDataError, describe_specs)
    yield from hf_rows(ds, where)


def load_hf_split(
    name_split: str,
    cache_dir: str | None,
    error: type[FinetuneDataError],
    describe: Callable[[], str],
) -> tuple[Any, str]:
    """The Hugging Face dataset split named by `name_split` ("name" or "name:split") and the
    prefix of its rows' sources ("hf:name:split"); an `error` ending with the accepted specs
    (`describe()`) when there is no name or the split does not load."""
    import datasets  # heavy to import; only hf: specs need it

    name, _, split = name_split.partition(":")
    split = split or DEFAULT_SPLIT
    if not name:
        raise error(f"{HF_PREFIX}: no dataset name; give {describe()}")
    try:
        ds = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as exc:  # unknown name or split, no network, unreadable files: all user errors
        raise error(
            f"{HF_PREFIX}{name}:{split}: cannot load the dataset ({root_cause(exc)}); give "
            f"{describe()}"
        ) from exc
    return ds, f"{HF_PREFIX}{name}:{split}"


def hf_rows(ds: Iterable[dict[str, Any]], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(source, row) of each row of a dataset loaded by load_hf_split, `where` its prefix."""
    for index, row in enumerate(ds):
        # datasets gives every row every column, None where the record lacked the key
        yield f"{where}[{index}]", {k: v for k, v in row.items() if v is not None}


def root_cause(exc: BaseException, limit: int = 300) -> str:
    """The innermost error, on one line and cut short.

    datasets wraps the useful error (bad JSON, files whose columns differ) in a generic "An
    error occurred while generating the dataset", and some messages print whole schemas.
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    reason = " ".join(str(exc).split())
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


# --- records to conversations ------------------------------------------------------------------


def _conversation(record: Any, source: str) -> Conversation:
    """A record, in any accepted format, as a checked Conversation."""
    if not isinstance(record, dict):
        raise FinetuneDataError(
            f"{source}: the record is {json_type(record)}, not an object; make each record "
            f"an object in one of these formats: {describe_formats()}"
        )
    turns = _format_of(record, source)(record, source)
    _check_order(turns, source)
    return Conversation(tuple(turns), source)


def _format_of(record: dict, source: str) -> Callable[[dict, str], list[Turn]]:
    """The reader of the first format with a key in the record; all its keys must be there."""
    for keys, reader in _FORMATS:
        if any(key in record for key in keys):
            missing = [key for key in keys if key not in record]
            if not missing:
                return reader
            raise FinetuneDataError(
                f"{source}: missing {', '.join(map(repr, missing))} (found keys "
                f"{sorted(record)}); give every record the keys of one format: "
                f"{describe_formats()}"
            )
    raise FinetuneDataError(
        f"{source}: no accepted format matches the keys {sorted(record)}; give every record the "
        f"keys of one format: {describe_formats()}"
    )


def _chat(record: dict, source: str) -> list[Turn]:
    return read_turns(record["messages"], "messages", "role", "content", CHAT_ROLES, source)


def _sharegpt(record: dict, source: str) -> list[Turn]:
    turns = record["conversations"]
    return _system(record, source) + read_turns(
        turns, "conversations", "from", "value", SHAREGPT_ROLES, source
    )


def _alpaca(record: dict, source: str) -> list[Turn]:
    prompt = text_value(record["instruction"], '"instruction"', source)
    context = record.get("input")
    if context is not None and text_value(context, '"input"', source).strip():
        prompt += "\n\n" + context
    return _system(record, source) + [
        ("user", prompt),
        _turn("assistant", record["output"], '"output"', source),
    ]


def _prompt_completion(record: dict, source: str) -> list[Turn]:
    return [
        ("user", text_value(record["prompt"], '"prompt"', source)),
        _turn("assistant", record["completion"], '"completion"', source),
    ]


# Checked in order: a record is read by the first format it shares a key with.
_FORMATS: tuple[tuple[tuple[str, ...], Callable[[dict, str], list[Turn]]], ...] = (
    (("messages",), _chat),
    (("conversations",), _sharegpt),
    (("instruction", "output"), _alpaca),
    (("prompt", "completion"), _prompt_completion),
)


def read_turns(
    turns: Any,
    key: str,
    role_key: str,
    content_key: str,
    roles: dict[str, Role],
    source: str,
) -> list[Turn]:
    """A list of {role_key: ..., content_key: ...} objects as turns, roles mapped by `roles`."""
    shape = f'{{"{role_key}": ..., "{content_key}": ...}}'
    if not isinstance(turns, list):
        raise FinetuneDataError(
            f'{source}: "{key}" is {json_type(turns)}; make it a list of {shape} objects'
        )
    out = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise FinetuneDataError(
                f"{source}: {where} is {json_type(turn)}; make it a {shape} object"
            )
        missing = [k for k in (role_key, content_key) if k not in turn]
        if missing:
            raise FinetuneDataError(
                f"{source}: {where} lacks {', '.join(map(repr, missing))} (found keys "
                f"{sorted(turn)}); make it a {shape} object"
            )
        role = turn[role_key]
        if not isinstance(role, str) or role not in roles:
            raise FinetuneDataError(
                f'{source}: {where} has unknown "{role_key}" {role!r}; use one of '
                f"{', '.join(roles)}"
            )
        out.append(_turn(roles[role], turn[content_key], f'{where}["{content_key}"]', source))
    return out


def _system(record: dict, source: str) -> list[Turn]:
    """The optional top-level "system" of Alpaca and ShareGPT records; an empty one is none."""
    system = record.get("system")
    if system is None or not text_value(system, '"system"', source).strip():
        return []
    return [("system", system)]


def _turn(role: Role, content: Any, where: str, source: str) -> Turn:
    """A checked turn: string content, and an assistant turn must have something to learn."""
    text = text_value(content, where, source)
    if role == "assistant" and not text.strip():
        raise FinetuneDataError(
            f"{source}: {where} is an empty assistant turn; give it the reply text or drop it"
        )
    return role, text


def text_value(value: Any, where: str, source: str) -> str:
    """`value` if it is a string; otherwise an error naming `where` in the record."""
    if not isinstance(value, str):
        raise FinetuneDataError(
            f"{source}: {where} is {json_type(value)}; make it a string (content parts, tool "
            "calls and other structured content are not supported)"
        )
    return value


def _check_order(turns: list[Turn], source: str) -> None:
    """There must be an assistant turn, and a user or system turn before the first one."""
    roles = [role for role, _ in turns]
    if "assistant" not in roles:
        raise FinetuneDataError(
            f"{source}: the conversation has no assistant turn, so there is nothing to learn; "
            "add the assistant's reply"
        )
    if roles[0] == "assistant":
        raise FinetuneDataError(
            f"{source}: the conversation starts with an assistant turn; put the user message "
            "(or a system message) before it"
        )


def json_type(value: Any) -> str:
    """A JSON-flavoured description of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
