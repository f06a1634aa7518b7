"""One tokenizer contract for the data pipeline, trainer, checkpoints and server.

`TokenizerProtocol` is the surface ismail uses (ids, tokens and offsets of an encoding,
decode, a streaming decoder seeded with context, special ids, chat template, fingerprint,
save). It has two implementations: `TrTokenizer` (tr_tokenizer's `Tokenizer`) and
`HFTokenizer` (a Hugging Face `tokenizers` tokenizer.json). `load_tokenizer(spec)` returns one:

- None or "tr": the newest vocabulary shipped with the `tr_tokenizer` package; "tr:v1" (any
  name in `tr_tokenizer.tokenizer.SHIPPED_VOCABULARIES`) an older shipped one;
- a directory written by `save` (ours, tr_tokenizer's, or one holding a `tokenizer.json`);
- a Hugging Face `tokenizer.json` file (for example Mistral's).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ismail_core.atomic import atomic_dir
from ismail_core.errors import IsmailError
from ismail_core.layout import CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE, TOKENIZER_MARKER_FILE

if TYPE_CHECKING:
    import tokenizers
    import tr_tokenizer
    from tr_tokenizer.tokenizer import DecodeStream
    from tr_tokenizer.tokenizer import Encoding as TrEncoding

# Names Hugging Face tokenizers commonly use for their special tokens, most common first.
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")
# The roles an HFTokenizer's special ids can be given for; "start" is the id a document, and
# so a prompt, starts with (`document_start_id`).
SPECIAL_ROLES = ("eos", "bos", "pad", "start")
# Context ids a seeded IncrementalDecoder decodes before new ones: enough for a leading space
# or a character split over byte-level tokens (vLLM uses 5).
_CONTEXT_WINDOW = 6


class TokenizerError(IsmailError, ValueError):
    """A tokenizer spec that cannot be loaded (missing path, unknown format)."""


@runtime_checkable
class EncodingProtocol(Protocol):
    """What `encode` returns: the token ids, their vocabulary names and the (start, end)
    character span of each token in the encoded text."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def tokens(self) -> list[str]: ...

    @property
    def offsets(self) -> list[tuple[int, int]]: ...


@runtime_checkable
class StreamDecoderProtocol(Protocol):
    """What `decode_stream` returns: text emitted as ids arrive, whole characters only."""

    def step(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly "")."""
        ...

    def flush(self) -> str:
        """End of stream: return whatever is still held back."""
        ...


@runtime_checkable
class TokenizerProtocol(Protocol):
    """The tokenizer surface ismail uses; `TrTokenizer` and `HFTokenizer` implement it.

    `encode` never adds special tokens: ismail puts `document_start_id` (the id documents,
    and so prompts, start with) and `eos_id` itself. The special ids are None where the
    tokenizer has no such token. `chat_template` (Jinja) is the template a fine-tuned model
    was trained with, saved beside the tokenizer; `fingerprint` hashes the vocabulary, so data,
    checkpoints and tokenizers made with different ones are told apart.
    """

    kind: str  # "tr" or "hf": which implementation, recorded by `save`
    chat_template: str | None

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def document_start_id(self) -> int | None: ...

    @property
    def special_tokens(self) -> Mapping[str, int]: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str) -> EncodingProtocol: ...

    def encode_batch(self, texts: Sequence[str]) -> Sequence[EncodingProtocol]: ...

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...

    def decode_stream(
        self, skip_special_tokens: bool = False, context: Iterable[int] = ()
    ) -> StreamDecoderProtocol: ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, token_id: int) -> str | None: ...

    def save(self, directory: str | Path) -> None: ...


# The name ismail's modules annotate tokenizers with: anything that satisfies the contract.
Tokenizer = TokenizerProtocol


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json) behind the tokenizer contract.

    The eos/bos/pad ids are found by their common names, unless `special_ids` ({"eos": id,
    "bos": id, "pad": id, "start": id}, any subset) gives them, as an imported folder's
    tokenizer_config does; given ids are saved in the marker file, so a saved directory reloads
    with them. `document_start_id` is the id documents start with: ismail separates documents
    by the end-of-sequence id, so it is eos_id unless "start" says otherwise (a model imported
    from transformers whose tokenizer puts its bos first).
    """

    kind = "hf"

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, special_ids: dict[str, int] | None = None
    ) -> None:
        self._tok = tokenizer
        self.chat_template: str | None = None
        self.set_special_ids(special_ids or {})

    def set_special_ids(self, special_ids: dict[str, int]) -> None:
        """Give the eos/bos/pad ids explicitly (see the class docstring); raises TokenizerError
        for an unknown role or an id outside the vocabulary."""
        self.special_ids = _checked_special_ids(special_ids, self.vocab_size)
        self._read_specials()

    def _read_specials(self) -> None:
        self.special_tokens: dict[str, int] = {
            added.content: idx
            for idx, added in self._tok.get_added_tokens_decoder().items()
            if added.special
        }
        given = self.special_ids.get
        self.eos_id = given("eos", self._first_special(_EOS_NAMES))
        self.bos_id = given("bos", self._first_special(_BOS_NAMES))
        self.pad_id = given("pad", self._first_special(_PAD_NAMES))
        self.document_start_id = given("start", self.eos_id)

    @classmethod
    def from_file(cls, path: str | Path, special_ids: dict[str, int] | None = None) -> HFTokenizer:
        """Load a `tokenizer.json` file (`special_ids` as in the class docstring)."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)), special_ids)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            msg = f"{path} is not a valid Hugging Face tokenizer.json: {exc}"
            raise TokenizerError(msg) from exc

    def _first_special(self, names: tuple[str, ...]) -> int | None:
        for name in names:
            idx = self._tok.token_to_id(name)
            if idx is not None:
                return idx
        return None

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """Stable hash of the tokenizer definition (vocabulary, merges, normaliser, ...)."""
        canonical = json.dumps(json.loads(self._tok.to_str()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, text: str) -> tokenizers.Encoding:
        """Encode without template special tokens; an Encoding with ids, tokens, offsets."""
        return self._tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[tokenizers.Encoding]:
        """Encode many texts (in parallel threads), as `encode` does each."""
        return self._tok.encode_batch(list(texts), add_special_tokens=False)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text for ids; special tokens are kept unless `skip_special_tokens`."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_stream(
        self, skip_special_tokens: bool = False, context: Iterable[int] = ()
    ) -> IncrementalDecoder:
        """A streaming decoder; with `context` (ids already shown), it emits only new text."""
        return IncrementalDecoder(self.decode, skip_special_tokens, context)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token, or None if the vocabulary has no such token."""
        return self._tok.token_to_id(token)

    def add_special_tokens(self, tokens: list[str]) -> None:
        """Add special tokens (new ids at the end of the vocabulary)."""
        from tokenizers import AddedToken

        self._tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in tokens]
        )
        self._read_specials()

    def id_to_token(self, token_id: int) -> str | None:
        """The token of an id, or None for an id outside the vocabulary."""
        return self._tok.id_to_token(token_id)

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, the marker file and the chat template into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / HF_TOKENIZER_FILE))
        _write_marker(directory, self.kind, self.chat_template, self.special_ids)


class IncrementalDecoder:
    """Streaming decode for tokenizers without their own: text is emitted once it is complete.

    Decodes a sliding window of ids (from the start of the previous emitted piece) so pieces
    whose text depends on their left neighbour (leading spaces, byte-level UTF-8 fragments) are
    decoded in context; text ending in U+FFFD (an incomplete UTF-8 sequence) is held back.
    `context` ids count as emitted already: the window starts a few ids before their end.
    """

    def __init__(
        self,
        decode: Callable[[list[int], bool], str],
        skip_special_tokens: bool,
        context: Iterable[int] = (),
    ) -> None:
        self._decode = decode
        self._skip = skip_special_tokens
        # Only the context's last ids are ever decoded again, so only they are kept.
        self._ids: list[int] = [int(i) for i in list(context)[-_CONTEXT_WINDOW:]]
        self._prefix = 0  # start of the decode window
        self._read = len(self._ids)  # ids before this index have been emitted

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly "")."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix : self._read], self._skip)
        text = self._decode(self._ids[self._prefix :], self._skip)
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Return whatever is still held back at the end of the stream."""
        prefix_text = self._decode(self._ids[self._prefix : self._read], self._skip)
        text = self._decode(self._ids[self._prefix :], self._skip)
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]


class TrTokenizer:
    """tr_tokenizer's Tokenizer behind the contract: `kind`, a chat template, the document
    start id and a `save` that records the kind; everything else is tr_tokenizer's own."""

    kind = "tr"

    def __init__(self, tokenizer: tr_tokenizer.Tokenizer) -> None:
        self._tok = tokenizer
        self.chat_template: str | None = None

    @property
    def vocab_size(self) -> int:
        """Number of ids (ids are 0..vocab_size-1)."""
        return self._tok.vocab_size

    @property
    def eos_id(self) -> int:
        """Id of "<|eos|>", which separates documents."""
        return self._tok.eos_id

    @property
    def bos_id(self) -> int:
        """Id of "<|bos|>"."""
        return self._tok.bos_id

    @property
    def pad_id(self) -> int:
        """Id of "<|pad|>"."""
        return self._tok.pad_id

    @property
    def document_start_id(self) -> int:
        """The id documents (and prompts) start with: the end-of-sequence id, which separates
        the documents of the data ismail trains on."""
        return self._tok.eos_id

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token names and their ids."""
        return self._tok.special_tokens

    @property
    def fingerprint(self) -> str:
        """Stable hash of the vocabulary (16 hex characters)."""
        return self._tok.fingerprint

    def encode(self, text: str, allow_special: bool = False) -> TrEncoding:
        """Encode text; with `allow_special`, special-token names in it become their ids
        (ismail_core.chat renders templates so)."""
        return self._tok.encode(text, allow_special)

    def encode_batch(
        self, texts: Sequence[str], num_workers: int | None = None
    ) -> list[TrEncoding]:
        """Encode many texts, large batches over worker processes (see tr_tokenizer)."""
        return self._tok.encode_batch(texts, num_workers)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text for ids; decode(encode(s).ids) == s for every string s."""
        return self._tok.decode(ids, skip_special_tokens)

    def decode_stream(
        self, skip_special_tokens: bool = False, context: Iterable[int] = ()
    ) -> DecodeStream:
        """A streaming decoder; with `context` (ids already shown), it emits only the text
        that follows them, its suffixes spelled to fit the context's last word."""
        return self._tok.decode_stream(skip_special_tokens, context)

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary name, or None if there is no such token."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """Vocabulary name of an id (ValueError for an id outside the vocabulary)."""
        return self._tok.id_to_token(token_id)

    def token_kind(self, token_id: int) -> str:
        """Kind of a token (special, case, byte, space, root, suffix or bpe): tr_tokenizer's
        `kind(token_id)`, renamed because `kind` here names the implementation ("tr")."""
        return self._tok.kind(token_id)

    def save(self, directory: str | Path) -> None:
        """Write the vocabulary, the marker file and the chat template into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(directory)
        _write_marker(directory, self.kind, self.chat_template)


def _checked_special_ids(special_ids: dict[str, int], vocab_size: int) -> dict[str, int]:
    """`special_ids` after checking its roles and that each id is in the vocabulary."""
    for role, idx in special_ids.items():
        if role not in SPECIAL_ROLES:
            raise TokenizerError(f"unknown special token role {role!r}; use {SPECIAL_ROLES}")
        if not (isinstance(idx, int) and 0 <= idx < vocab_size):
            raise TokenizerError(
                f"the {role} id {idx!r} is outside the tokenizer's {vocab_size} tokens"
            )
    return dict(special_ids)


def _write_marker(
    directory: Path, kind: str, chat_template: str | None, special_ids: dict[str, int] | None = None
) -> None:
    """Record the kind, explicitly given special ids, and the chat template when there is one."""
    marker = {"kind": kind, "special_ids": special_ids} if special_ids else {"kind": kind}
    (directory / TOKENIZER_MARKER_FILE).write_text(json.dumps(marker) + "\n")
    if chat_template:
        (directory / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")


def _with_chat_template(
    tokenizer: HFTokenizer | TrTokenizer, directory: Path
) -> HFTokenizer | TrTokenizer:
    """Attach the chat template saved in `directory`, if any."""
    file = directory / CHAT_TEMPLATE_FILE
    if file.is_file():
        try:
            tokenizer.chat_template = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{file} is not UTF-8 text ({exc}); save it again") from exc
    return tokenizer


def _load_tr(path: str | Path | None, version: str | None = None) -> TrTokenizer:
    try:
        import tr_tokenizer
    except ImportError as exc:  # pragma: no cover - tr-tokenizer is a hard dependency
        raise TokenizerError("tr-tokenizer is not installed: `uv sync --all-packages`") from exc
    try:
        return TrTokenizer(tr_tokenizer.load(None if path is None else Path(path), version=version))
    except (tr_tokenizer.VocabularyError, ValueError) as exc:  # its message names the problem
        raise TokenizerError(str(exc)) from exc


def _read_marker(marker: Path) -> dict[str, Any]:
    """The marker file of a saved directory: its kind and, if any, special_ids."""
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
        return {"kind": content.get("kind"), "special_ids": dict(content.get("special_ids") or {})}
    except (ValueError, AttributeError, TypeError) as exc:  # not JSON / UTF-8 / an object
        raise TokenizerError(f"{marker} is corrupt ({exc}); save the tokenizer again") from exc


def load_tokenizer(spec: str | Path | None = None) -> HFTokenizer | TrTokenizer:
    """Load a tokenizer from a spec (see the module docstring); raises TokenizerError."""
    if isinstance(spec, HFTokenizer | TrTokenizer):
        return spec
    if spec is None or str(spec) in ("tr", "tr-tokenizer"):
        return _load_tr(None)
    if str(spec).startswith("tr:"):
        return _load_tr(None, version=str(spec)[3:])
    path = Path(spec).expanduser()
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {spec!r} not found: give 'tr' for the shipped Turkish tokenizer ('tr:v1' "
            "for its first vocabulary), a "
            "directory saved by tr-tokenizer or ismail, or a Hugging Face tokenizer.json"
        )
    if path.is_file():
        return HFTokenizer.from_file(path)
    return _with_chat_template(_load_directory(path), path)


def _load_directory(path: Path) -> HFTokenizer | TrTokenizer:
    """The tokenizer saved in a directory (see load_tokenizer)."""
    marker = path / TOKENIZER_MARKER_FILE
    if marker.is_file():
        recorded = _read_marker(marker)
        kind = recorded["kind"]
        if kind == "hf":
            return HFTokenizer.from_file(path / HF_TOKENIZER_FILE, recorded["special_ids"])
        if kind == "tr":
            return _load_tr(path)
        raise TokenizerError(f"{marker}: unknown tokenizer kind {kind!r}")
    # A directory without our marker: tr_tokenizer's own save, else a Hugging Face folder.
    try:
        return _load_tr(path)
    except Exception as tr_error:
        if (path / HF_TOKENIZER_FILE).is_file():
            return HFTokenizer.from_file(path / HF_TOKENIZER_FILE)
        raise TokenizerError(
            f"{path} holds neither a tr-tokenizer nor a Hugging Face {HF_TOKENIZER_FILE} "
            f"({tr_error})"
        ) from tr_error


def describe_fingerprint(fingerprint: str) -> str:
    """A tokenizer fingerprint for messages, naming the shipped tr-tokenizer vocabulary it is
    (a model and data made with different shipped vocabularies is the common mismatch)."""
    from tr_tokenizer.tokenizer import shipped_version

    version = shipped_version(fingerprint)
    return f"{fingerprint} (tr-tokenizer's vocabulary {version})" if version else fingerprint


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Save a tokenizer into `directory` atomically (temporary directory, then rename)."""
    with atomic_dir(directory) as tmp:
        tokenizer.save(tmp)
    return Path(directory)
