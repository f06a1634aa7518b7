"""`ismail import HF_DIR OUT`: a transformers model folder, with its tokenizer, as an ismail
checkpoint that `ismail generate`, `eval`, `finetune` and `ismail-serve` load.

The model is read by `hf.import_hf` (DeepseekV3, Llama, Mistral or GPT-2). The tokenizer is
the one given (`tokenizer=`, any spec `load_tokenizer` reads), else the folder's own:

- tokenizer files ismail wrote (its marker file, or tr-tokenizer's vocabulary file, which
  `ismail export` writes for a tr-tokenizer checkpoint), loaded as ismail saved them;
- `tokenizer.json` (the `tokenizers` format transformers' fast tokenizers save);
- GPT-2's `vocab.json` + `merges.txt`, rebuilt as the byte-level BPE they define.

For the last two, the special tokens named in tokenizer_config.json (else
special_tokens_map.json), or else given by id in config.json / generation_config.json, are
the eos/bos/pad ids (kept in the checkpoint's tokenizer marker), and the chat template is
chat_template.jinja or tokenizer_config.json's "chat_template".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tr_tokenizer.vocab import FILE_NAME as TR_TOKENIZER_FILE

from ismail_core.checkpoint import is_hf_config, save_checkpoint
from ismail_core.hf import (
    GENERATION_CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    HFFormatError,
    import_hf,
    read_hf_config,
)
from ismail_core.layout import CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE, TOKENIZER_MARKER_FILE
from ismail_core.tokenizer import (
    SPECIAL_ROLES,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
)

SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GPT2_VOCAB_FILE = "vocab.json"
GPT2_MERGES_FILE = "merges.txt"
# transformers' GPT2Tokenizer uses it as unk, bos and eos unless its config names others
GPT2_END_OF_TEXT = "<|endoftext|>"


def is_hf_model_folder(path: str | Path) -> bool:
    """Whether `path` is a transformers model folder (see checkpoint.is_hf_config)."""
    return is_hf_config(Path(path) / HF_CONFIG_FILE)


def import_checkpoint(
    hf_dir: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the transformers folder `hf_dir` as an ismail checkpoint at `out` (atomically)
    and return `out`. `tokenizer` replaces the folder's own (see the module docstring);
    `dtype` converts the weights (default float32). Raises HFFormatError for a folder that
    cannot be imported, TokenizerError for a `tokenizer` spec that cannot be loaded."""
    hf_dir, out = Path(hf_dir), Path(out)
    if out.resolve() == hf_dir.resolve():
        raise HFFormatError(f"OUT must be another directory than {hf_dir}, which it would replace")
    hf = read_hf_config(hf_dir)  # before the tokenizer: a folder that is no model fails first
    tok = load_tokenizer(tokenizer) if tokenizer is not None else folder_tokenizer(hf_dir)
    if tok.vocab_size > hf["vocab_size"]:
        source = tokenizer if tokenizer is not None else hf_dir
        raise HFFormatError(
            f"the tokenizer of {source} has {tok.vocab_size} tokens but the model in {hf_dir} "
            f"has {hf['vocab_size']} (vocab_size in {HF_CONFIG_FILE}): its ids from "
            f"{hf['vocab_size']} on have no embedding; pass the tokenizer the model was trained "
            "with (--tokenizer SPEC)"
        )
    model = import_hf(hf_dir, dtype)
    return save_checkpoint(out, model, tok)


def folder_tokenizer(hf_dir: Path) -> Tokenizer:
    """The tokenizer saved in a transformers model folder (see the module docstring)."""
    if (hf_dir / TOKENIZER_MARKER_FILE).is_file() or (hf_dir / TR_TOKENIZER_FILE).is_file():
        return load_tokenizer(hf_dir)
    tokenizer_config = _read_json(hf_dir / TOKENIZER_CONFIG_FILE)
    names = _special_names(hf_dir, tokenizer_config)
    if (hf_dir / HF_TOKENIZER_FILE).is_file():
        tok = HFTokenizer.from_file(hf_dir / HF_TOKENIZER_FILE)
    elif (hf_dir / GPT2_VOCAB_FILE).is_file() and (hf_dir / GPT2_MERGES_FILE).is_file():
        tok = HFTokenizer(_byte_level_bpe(hf_dir, tokenizer_config, names))
    else:
        raise HFFormatError(
            f"{hf_dir} holds no tokenizer this can read ({HF_TOKENIZER_FILE}, {GPT2_VOCAB_FILE} + "
            f"{GPT2_MERGES_FILE}, or {TR_TOKENIZER_FILE}; a SentencePiece tokenizer.model "
            "is not read): pass one with --tokenizer SPEC (a tokenizer.json, a tokenizer "
            "directory, or 'tr')"
        )
    ids = _special_ids(hf_dir, tok, names)
    start = _document_start(hf_dir, tokenizer_config, tok, ids.get("bos"))
    tok.set_special_ids(ids if start is None else {**ids, "start": start})
    tok.chat_template = _chat_template(hf_dir, tokenizer_config)
    return tok


def _document_start(
    hf_dir: Path, tokenizer_config: dict[str, Any], tok: HFTokenizer, bos: int | None
) -> int | None:
    """The id the folder's tokenizer puts before what it encodes (Llama's puts its bos first),
    which the model was trained to see first and so what ismail puts before a prompt; None
    when it puts nothing there (ismail's default, the end-of-sequence id, then applies).

    tokenizer_config's add_bos_token decides where it is given; otherwise the first special
    token of tokenizer.json's post-processor template (alone or in a Sequence) does."""
    if "add_bos_token" in tokenizer_config:
        return bos if tokenizer_config["add_bos_token"] is True else None
    processor = _read_json(hf_dir / HF_TOKENIZER_FILE).get("post_processor") or {}
    chain = processor.get("processors", []) if processor.get("type") == "Sequence" else [processor]
    for step in chain:
        single = (step.get("single") or []) if step.get("type") == "TemplateProcessing" else []
        if single and "SpecialToken" in single[0]:
            return tok.token_to_id(single[0]["SpecialToken"].get("id"))
    return None


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the folder; {} when it is absent."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HFFormatError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(content, dict):
        raise HFFormatError(f"{path} is not a JSON object; fix or remove it")
    return content


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object
    ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _special_names(hf_dir: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    """{role: token} for the special tokens the tokenizer files name (eos_token, ...)."""
    token_map = _read_json(hf_dir / SPECIAL_TOKENS_MAP_FILE)
    names = {}
    for role in SPECIAL_ROLES:
        key = f"{role}_token"
        name = _token_name(tokenizer_config.get(key)) or _token_name(token_map.get(key))
        if name is not None:
            names[role] = name
    return names


def _special_ids(hf_dir: Path, tok: HFTokenizer, names: dict[str, str]) -> dict[str, int]:
    """{role: id}: the named special tokens, else the ids config.json (or, for eos often only
    there, generation_config.json) gives; a list of ids gives its first."""
    configs = [(f, _read_json(hf_dir / f)) for f in (HF_CONFIG_FILE, GENERATION_CONFIG_FILE)]
    ids: dict[str, int] = {}
    for role in SPECIAL_ROLES:
        if role in names:
            token_id = tok.token_to_id(names[role])
            if token_id is None:
                raise HFFormatError(
                    f"{hf_dir}: the tokenizer config names {role}_token {names[role]!r}, which "
                    "the tokenizer does not have; fix the config or pass --tokenizer SPEC"
                )
            ids[role] = token_id
            continue
        for file, config in configs:
            value = config.get(f"{role}_token_id")
            value = value[0] if isinstance(value, list) and value else value
            if isinstance(value, int) and not isinstance(value, bool):
                if not 0 <= value < tok.vocab_size:
                    raise HFFormatError(
                        f"{hf_dir / file}: {role}_token_id {value} is outside the tokenizer's "
                        f"{tok.vocab_size} tokens; fix it or pass --tokenizer SPEC"
                    )
                ids[role] = value
                break
    return ids


def _byte_level_bpe(hf_dir: Path, tokenizer_config: dict[str, Any], names: dict[str, str]) -> Any:
    """GPT-2's tokenizer from vocab.json + merges.txt: byte-level BPE, with the special tokens
    registered so that they are never split or decoded as text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = hf_dir / GPT2_VOCAB_FILE, hf_dir / GPT2_MERGES_FILE
    try:
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise HFFormatError(f"{vocab} + {merges} are not a valid BPE ({exc})") from exc
    add_prefix_space = bool(tokenizer_config.get("add_prefix_space", False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    specials = {*names.values(), GPT2_END_OF_TEXT}
    present = sorted(s for s in specials if tok.token_to_id(s) is not None)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in present])
    return tok


def _chat_template(hf_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's chat_template (of a list of named
    templates, the one named "default")."""
    file = hf_dir / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template else None
