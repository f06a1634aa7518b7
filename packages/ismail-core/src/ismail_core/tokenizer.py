"""One tokenizer interface for the data pipeline, trainer, checkpoints and server.

`load_tokenizer(spec)` returns an object with tr_tokenizer's surface (encode(text).ids, decode,
decode_stream, encode_batch, vocab_size, eos_id, bos_id, pad_id, special_tokens, save(dir),
fingerprint) plus `kind` ("tr" or "hf"), whatever the tokenizer behind it:

- None or "tr": the newest vocabulary shipped with the `tr_tokenizer` package; "tr:v1" (any
  name in `tr_tokenizer.tokenizer.SHIPPED_VOCABULARIES`) an older shipped one;
- a directory written by `save` (ours, tr_tokenizer's, or one holding a `tokenizer.json`);
- a Hugging Face `tokenizer.json` file (for example Mistral's).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ismail_core.atomic import atomic_dir
from ismail_core.errors import IsmailError

# Written next to the tokenizer files by `save` so a saved directory loads back as the same kind.
MARKER_FILE = "ismail_tokenizer.json"
HF_FILE = "tokenizer.json"
# The chat template (Jinja) a fine-tuned model was trained with; see ismail_core.chat.
CHAT_TEMPLATE_FILE = "chat_template.jinja"

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


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (tokenizer.json) behind tr_tokenizer's surface.

    The eos/bos/pad ids are found by their common names, unless `special_ids` ({"eos": id,
    "bos": id, "pad": id, "start": id}, any subset) gives them, as an imported folder's
    tokenizer_config does; given ids are saved in the marker file, so a saved directory reloads
    with them. `document_start_id` is the id documents start with: ismail separates documents
    by the end-of-sequence id, so it is eos_id unless "start" says otherwise (a model imported
    from transformers whose tokenizer puts its bos first).
    """

    kind = "hf"

    def __init__(self, tokenizer: Any, special_ids: dict[str, int] | None = None) -> None:
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
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """Stable hash of the tokenizer definition (vocabulary, merges, normaliser, ...)."""
        canonical = json.dumps(json.loads(self._tok.to_str()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, text: str) -> Any:
        """Encode without template special tokens; an Encoding with ids, tokens, offsets."""
        return self._tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[Any]:
        return self._tok.encode_batch(texts, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_stream(
        self, skip_special_tokens: bool = False, context: Sequence[int] = ()
    ) -> IncrementalDecoder:
        """A streaming decoder; with `context` (ids already shown), it emits only new text."""
        return IncrementalDecoder(self.decode, skip_special_tokens, context)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def add_special_tokens(self, tokens: list[str]) -> None:
        """Add special tokens (new ids at the end of the vocabulary)."""
        from tokenizers import AddedToken

        self._tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in tokens]
        )
        self._read_specials()

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / HF_FILE))
        _write_marker(directory, self.kind, self.chat_template, self.special_ids)


class IncrementalDecoder:
    """Streaming decode for tokenizers without their own: text is emitted once it is complete.

    Decodes a sliding window of ids (from the start of the previous emitted piece) so pieces
    whose text depends on their left neighbour (leading spaces, byte-level UTF-8 fragments) are
    decoded in context; text ending in U+FFFD (an incomplete UTF-8 sequence) is held back.
    `context` ids count as emitted already: the window starts a few ids before their end.
    """

    def __init__(self, decode: Any, skip_special_tokens: bool, context: Sequence[int] = ()) -> None:
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
    """tr_tokenizer's Tokenizer with `kind` and a `save` that records the kind."""

    kind = "tr"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.chat_template: str | None = None

    def __getattr__(self, name: str) -> Any:
        # Everything else (encode, decode, decode_stream, vocab_size, ids, fingerprint) is
        # tr_tokenizer's own implementation of the shared contract. Dunder and private names
        # are not forwarded: unpickling (datasets.map workers) looks them up before _tok exists.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._tok, name)

    @property
    def document_start_id(self) -> int:
        """The id documents (and prompts) start with: the end-of-sequence id, which separates
        the documents of the data ismail trains on."""
        return self._tok.eos_id

    def token_kind(self, token_id: int) -> str:
        """Kind of a token (special, case, byte, space, root, suffix or bpe): tr_tokenizer's
        `kind(token_id)`, which the class attribute `kind` ("tr") hides from forwarding."""
        return self._tok.kind(token_id)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(directory)
        _write_marker(directory, self.kind, self.chat_template)


Tokenizer = HFTokenizer | TrTokenizer


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
    (directory / MARKER_FILE).write_text(json.dumps(marker) + "\n")
    if chat_template:
        (directory / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")


def _with_chat_template(tokenizer: Tokenizer, directory: Path) -> Tokenizer:
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


def load_tokenizer(spec: str | Path | None = None) -> Tokenizer:
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


def _load_directory(path: Path) -> Tokenizer:
    """The tokenizer saved in a directory (see load_tokenizer)."""
    marker = path / MARKER_FILE
    if marker.is_file():
        recorded = _read_marker(marker)
        kind = recorded["kind"]
        if kind == "hf":
            return HFTokenizer.from_file(path / HF_FILE, recorded["special_ids"])
        if kind == "tr":
            return _load_tr(path)
        raise TokenizerError(f"{marker}: unknown tokenizer kind {kind!r}")
    # A directory without our marker: tr_tokenizer's own save, else a Hugging Face folder.
    try:
        return _load_tr(path)
    except Exception as tr_error:
        if (path / HF_FILE).is_file():
            return HFTokenizer.from_file(path / HF_FILE)
        raise TokenizerError(
            f"{path} holds neither a tr-tokenizer nor a Hugging Face {HF_FILE} ({tr_error})"
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
