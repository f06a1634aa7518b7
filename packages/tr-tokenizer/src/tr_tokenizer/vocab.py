"""The vocabulary file: an ordered list of pieces (id = position) with a kind and a score,
plus `voicing` (root id -> voiced last letter, for roots such as kitap/kitab).

Stored as `tr_tokenizer.json` inside a directory, written atomically (its own name: Hugging Face
reserves `tokenizer.json` for the `tokenizers` format; directories written before the rename,
with `tokenizer.json`, still load). Kinds:
  special  "<|pad|>", "<|bos|>", "<|eos|>", chat role markers
  case     "<|cap|>" (next word capitalized), "<|upper|>" (next word in capitals), and from
           vocabulary v3 on "<|glue|>", "<|glue_cap|>", "<|glue_upper|>": the same, and the
           next piece's leading space is dropped, so a word with no space before it (a text's
           first word, after a quote or a bracket) is spelled with its spaced root (" kitap")
  byte     "<0x00>" ... "<0xFF>" (UTF-8 byte fallback)
  space    whitespace runs (" ", "   ", "\\n", "\\t", ...)
  root     lexicon roots, with or without a leading space (" kitap", "kitap"), and from v4 on
           frequent derived stems (" yaşlı", " mutsuzluk"), which take suffixes like a root
  word     frequent inflected words as one piece (" olarak", " arasında"): a root and its
           suffixes that would otherwise take two or more tokens; encoded like a root
  suffix   "+lArI" (shared: spelled out by rule from the left context) or a literal surface "ları"
  bpe      pieces learned by BPE for what the morphology does not cover
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tr_tokenizer.errors import TrTokenizerError

FORMAT = "tr-tokenizer"
FORMAT_VERSION = 1
FILE_NAME = "tr_tokenizer.json"
# The name vocabularies were saved under before the rename: read when FILE_NAME is absent.
LEGACY_FILE_NAME = "tokenizer.json"
KINDS = ("special", "case", "byte", "space", "root", "word", "suffix", "bpe")

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *CHAT_MARKERS)
CAP, UPPER = "<|cap|>", "<|upper|>"
# Case markers that also glue the next piece to the text before it (drop its leading space).
GLUE, GLUE_CAP, GLUE_UPPER = "<|glue|>", "<|glue_cap|>", "<|glue_upper|>"
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
SPACE_TOKENS = (
    tuple(" " * n for n in range(1, 17))
    + tuple("\n" * n for n in range(1, 5))
    + tuple("\t" * n for n in range(1, 5))
    + ("\r\n", "\r", "\n\n\n\n\n\n\n\n", " \n", "\n ", "\n  ", "\n    ", "\n\t", "\u00a0")
)


def fixed_pieces(glue: bool = True) -> list[tuple[str, str, float]]:
    """The pieces every vocabulary starts with, in id order. glue=False gives the layout of
    vocabularies made before the glue markers (v1, v2), which still load."""
    markers = (CAP, UPPER, GLUE, GLUE_CAP, GLUE_UPPER) if glue else (CAP, UPPER)
    pieces = [(t, "special", 0.0) for t in SPECIAL_TOKENS]
    pieces += [(t, "case", 0.0) for t in markers]
    pieces += [(t, "byte", 0.0) for t in BYTE_TOKENS]
    pieces += [(t, "space", 0.0) for t in SPACE_TOKENS]
    return pieces


class VocabularyError(TrTokenizerError, ValueError):
    """A vocabulary file is missing or malformed."""


def _vocabulary_file(directory: Path) -> Path:
    """The vocabulary file in a saved directory: FILE_NAME, else the legacy name."""
    file = directory / FILE_NAME
    legacy = directory / LEGACY_FILE_NAME
    return legacy if not file.exists() and legacy.exists() else file


@dataclass
class Vocabulary:
    """Pieces in id order, root alternations, and the training config that produced them.

    voicing maps a root's id to the voiced form of its last letter (kitap -> "b"): the decoder
    writes that letter when the next token starts with a vowel (kitabı), so both stems share
    one id.
    """

    pieces: list[tuple[str, str, float]]
    config: dict = field(default_factory=dict)
    voicing: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate(where="vocabulary")

    def validate(self, where: str) -> None:
        """Raise VocabularyError naming `where` if the pieces are inconsistent."""
        seen: set[str] = set()
        for i, piece in enumerate(self.pieces):
            if not (isinstance(piece, (list, tuple)) and len(piece) == 3):
                raise VocabularyError(
                    f"{where}: piece {i} must be [text, kind, score], got {piece!r}"
                )
            text, kind, score = piece
            if not isinstance(text, str) or not text:
                raise VocabularyError(f"{where}: piece {i} has empty or non-string text {text!r}")
            if kind not in KINDS:
                raise VocabularyError(f"{where}: piece {i} ({text!r}) has unknown kind {kind!r}")
            if not isinstance(score, (int, float)):
                raise VocabularyError(f"{where}: piece {i} ({text!r}) has non-numeric score")
            if text in seen:
                raise VocabularyError(f"{where}: piece {text!r} appears twice")
            seen.add(text)
        for i, letter in self.voicing.items():
            if not (0 <= i < len(self.pieces) and self.pieces[i][1] == "root"):
                raise VocabularyError(f"{where}: voicing names id {i}, which is not a root")
            if not (isinstance(letter, str) and len(letter) == 1 and letter.isalpha()):
                raise VocabularyError(f"{where}: voicing of id {i} must be one letter")
        layouts = [[p[:2] for p in fixed_pieces(glue)] for glue in (True, False)]
        if not any([tuple(p[:2]) for p in self.pieces[: len(f)]] == f for f in layouts):
            raise VocabularyError(
                f"{where}: the first {len(layouts[0])} pieces must be the special, case, byte "
                "and whitespace tokens in their standard order; retrain with tr_tokenizer.train()"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "config": self.config,
                "voicing": {str(i): v for i, v in sorted(self.voicing.items())},
                "pieces": [list(p) for p in self.pieces],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def fingerprint(self) -> str:
        """A stable hash of the pieces and config (hex, 16 characters)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tr_tokenizer.json` atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return self.write(directory / FILE_NAME)

    def write(self, file: str | os.PathLike) -> Path:
        """Write the vocabulary to one file atomically (temp file + os.replace)."""
        file = Path(file)
        fd, tmp = tempfile.mkstemp(prefix=".tokenizer-", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return file

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary from a directory written by `save` (or the json file itself)."""
        path = Path(path)
        file = _vocabulary_file(path) if path.is_dir() else path
        if not file.exists():
            raise VocabularyError(
                f"no tokenizer vocabulary at {file}: pass a directory written by "
                "Tokenizer.save() or None for the shipped default"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VocabularyError(f"{file} is not valid JSON ({e}); the file is corrupt") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VocabularyError(f"{file} is not a tr-tokenizer vocabulary (missing format tag)")
        if data.get("version") != FORMAT_VERSION:
            raise VocabularyError(
                f"{file} has format version {data.get('version')!r}; this tr-tokenizer reads "
                f"version {FORMAT_VERSION}"
            )
        pieces = data.get("pieces")
        if not isinstance(pieces, list):
            raise VocabularyError(f"{file}: 'pieces' must be a list")
        vocab = cls.__new__(cls)
        vocab.pieces = [tuple(p) if isinstance(p, list) else p for p in pieces]
        vocab.config = data.get("config") or {}
        voicing = data.get("voicing") or {}
        if not isinstance(voicing, dict) or not all(str(k).isdigit() for k in voicing):
            raise VocabularyError(f"{file}: 'voicing' must map root ids to letters")
        vocab.voicing = {int(k): v for k, v in voicing.items()}
        vocab.validate(where=str(file))
        return vocab
