"""`ismail export --format hf`: a checkpoint as a folder a transformers user needs nothing else for.

    OUT/config.json, model.safetensors   the model (see hf.py) with its special-token ids
    OUT/generation_config.json           the ids generation starts and stops with, and the
                                         sampling defaults of `ismail generate`
    OUT/tr_tokenizer.json                tr-tokenizer's vocabulary, with tokenizer_config.json
    OUT/tokenization_tr_tokenizer.py       whose auto_map names this module (AutoTokenizer with
                                           trust_remote_code=True; it needs tr-tokenizer[hf])
 or OUT/tokenizer.json                   a `tokenizers` tokenizer, with tokenizer_config.json
                                           (no remote code)
    OUT/chat_template.jinja              when the tokenizer has a chat template
    OUT/README.md                        a model card: data, tokenizer, evaluation, how to load
    OUT/adapter/                         a LoRA checkpoint's adapter in PEFT's format

`ismail generate` puts the tokenizer's document start before a prompt (the end-of-sequence
token that separates ismail's training documents, or an imported model's bos), so the exported
tokenizer does the same (its `bos_token` is that token and encoding prepends it): the
text-generation pipeline then sees the ids `ismail generate` feeds the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .atomic import atomic_dir, atomic_write_json
from .chat import chat_template, end_of_turn_ids
from .checkpoint import (
    is_adapter_only,
    load_checkpoint_tokenizer,
    load_model,
    require_language_model,
    resolve_checkpoint,
)
from .hf import (
    GENERATION_CONFIG_FILE,
    HF_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    hf_architecture,
    write_hf,
)
from .layout import ADAPTER_DIR, CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE
from .model_card import model_card
from .sampling import GENERATE_DEFAULTS
from .tokenizer import Tokenizer

TR_TOKENIZER_MODULE = "tokenization_tr_tokenizer"
# The module AutoTokenizer imports from an export of a tr-tokenizer model (trust_remote_code).
# The import sits in try/except so that transformers' own import check leaves it alone and the
# message below, which names the package to install, is what a user without it sees.
_TR_TOKENIZER_MODULE_SOURCE = '''\
"""The tokenizer of this model is tr-tokenizer's (written by `ismail export`).

AutoTokenizer.from_pretrained(folder, trust_remote_code=True) loads it from here; it needs the
tr-tokenizer package: pip install "tr-tokenizer[hf]".
"""

try:
    from tr_tokenizer.hf import TrTextGenerationPipeline, TrTokenizerHF
except ImportError as exc:
    raise ImportError(
        "this model's tokenizer is tr-tokenizer: pip install 'tr-tokenizer[hf]'"
    ) from exc

__all__ = ["TrTextGenerationPipeline", "TrTokenizerHF"]
'''


def export_checkpoint_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """`ismail export --format hf CKPT OUT`: write the folder described above; returns OUT.

    A LoRA checkpoint without merged weights exports its base model to OUT and the adapter, in
    PEFT's format for that model, to OUT/adapter (see hf_adapter), so
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT), OUT/adapter)` loads
    it; one with merged weights exports those.
    """
    from .finetune.lora import load_base
    from .hf_adapter import export_adapter_hf

    directory = resolve_checkpoint(checkpoint)
    require_language_model(directory, "export")
    adapter = directory / ADAPTER_DIR if is_adapter_only(directory) else None
    if adapter:
        model, tokenizer = load_base(directory), load_checkpoint_tokenizer(directory)
    else:
        model, tokenizer = load_model(directory)
    hf_architecture(model.cfg)  # refuse an unexportable model before anything is written
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_hf(model, tmp, special_token_ids(tokenizer))
        write_tokenizer_files(tokenizer, tmp, model.cfg.max_seq_len)
        if tokenizer.kind == "tr":
            _register_tr_pipeline(tmp / HF_CONFIG_FILE)
        atomic_write_json(tmp / GENERATION_CONFIG_FILE, generation_config(tokenizer))
        (tmp / "README.md").write_text(
            model_card(directory, model, tokenizer, out_dir.name), encoding="utf-8"
        )
        if adapter:
            (tmp / ADAPTER_DIR).mkdir()
            export_adapter_hf(adapter, model.cfg, tmp / ADAPTER_DIR, base=out_dir.resolve())
    return out_dir


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """bos/eos/pad_token_id for config.json: bos is the id documents start with, and padding
    falls back to the end-of-sequence id (as GPT-2's does) when there is no pad token."""
    eos = tokenizer.eos_id
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else eos
    return {"bos_token_id": tokenizer.document_start_id, "eos_token_id": eos, "pad_token_id": pad}


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """generation_config.json: stop at the end of a document or, for a chat model (one whose
    fine-tuning stored a chat template), also at the end of a turn; sample as `ismail
    generate` does by default (pass do_sample=False for greedy)."""
    ids = special_token_ids(tokenizer)
    chat_model = bool(tokenizer.chat_template)
    ends = sorted(end_of_turn_ids(tokenizer)) if chat_model else [ids["eos_token_id"]]
    defaults = GENERATE_DEFAULTS
    return {
        **ids,
        "eos_token_id": ends[0] if len(ends) == 1 else ends,
        "do_sample": True,
        "temperature": defaults.temperature,
        "top_k": defaults.top_k,
        "top_p": defaults.top_p,
        "repetition_penalty": defaults.repetition_penalty,
    }


def write_tokenizer_files(tokenizer: Tokenizer, directory: Path, max_len: int) -> None:
    """The tokenizer files AutoTokenizer reads (see the module docstring), and the chat
    template when there is one."""
    template = chat_template(tokenizer)
    if template:
        (directory / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")

    def name(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.id_to_token(token_id)

    start, eos = name(tokenizer.document_start_id), name(tokenizer.eos_id)
    config: dict[str, Any] = {
        "bos_token": start,
        "eos_token": eos,
        "pad_token": name(tokenizer.pad_id) or eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    with tempfile.TemporaryDirectory() as scratch:
        # The tokenizer's own save writes its file(s); only the vocabulary is taken from it.
        tokenizer.save(scratch)
        if tokenizer.kind == "tr":
            config.update(_copy_tr_tokenizer(Path(scratch), directory, start is not None))
        else:
            _write_tokenizers_json(
                Path(scratch) / HF_TOKENIZER_FILE, directory / HF_TOKENIZER_FILE, start
            )
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_json(directory / TOKENIZER_CONFIG_FILE, config)


def _copy_tr_tokenizer(saved: Path, directory: Path, prepend_bos: bool) -> dict[str, Any]:
    """Copy tr-tokenizer's vocabulary and the loader module; the tokenizer_config entries."""
    from tr_tokenizer.vocab import FILE_NAME

    shutil.copyfile(saved / FILE_NAME, directory / FILE_NAME)
    (directory / f"{TR_TOKENIZER_MODULE}.py").write_text(_TR_TOKENIZER_MODULE_SOURCE)
    return {
        "tokenizer_class": "TrTokenizerHF",
        "auto_map": {"AutoTokenizer": [f"{TR_TOKENIZER_MODULE}.TrTokenizerHF", None]},
        "prepend_bos": prepend_bos,
    }


def _register_tr_pipeline(config_file: Path) -> None:
    """Name the export's text-generation pipeline in config.json: transformers' own decodes the
    generated ids without the prompt, which reads a continuation that starts with a suffix
    wrongly (see tr_tokenizer.hf.TrTextGenerationPipeline)."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {
        "text-generation": {
            "impl": f"{TR_TOKENIZER_MODULE}.TrTextGenerationPipeline",
            "pt": ["AutoModelForCausalLM"],
        }
    }
    atomic_write_json(config_file, config)


def _write_tokenizers_json(saved: Path, out: Path, document_start: str | None) -> None:
    """Copy a `tokenizers` tokenizer.json whose post-processor (what encoding with special
    tokens adds) is replaced by `document_start` before each sequence, or by nothing: ismail
    encodes without the tokenizer's own special tokens and puts the end-of-sequence id first,
    so transformers must do the same to feed the model the same ids."""
    from tokenizers import Tokenizer as Tokenizers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizers.from_file(str(saved))
    if document_start is None:
        tok.post_processor = TemplateProcessing(single="$A", pair="$A $B", special_tokens=[])
    else:
        tok.post_processor = TemplateProcessing(
            single=f"{document_start} $A",
            pair=f"{document_start} $A {document_start} $B",
            special_tokens=[(document_start, tok.token_to_id(document_start))],
        )
    tok.save(str(out))
