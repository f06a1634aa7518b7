"""`ismail finetune`: options (every FinetuneConfig key, plus short aliases) and the summary."""

from __future__ import annotations

import argparse
from typing import Any

# Short flags for the settings people change most; each sets one dotted key.
ALIASES = {
    "--task": ("finetune.task", "sft (default), dpo (preference pairs) or classify (labels)"),
    "--base": ("finetune.base", "base checkpoint or HF model folder (default runs/tiny)"),
    "--data": ("finetune.data", "data: builtin, a JSON/JSONL file or folder, or hf:NAME"),
    "--train-on": ("finetune.train_on", "assistant (default) or all"),
}
SWITCHES = {
    "--lora": ("finetune.method", "lora", "LoRA adapters instead of full fine-tuning"),
    "--qlora": ("finetune.method", "qlora", "LoRA on 4-bit NF4 base weights (CUDA)"),
    "--merge": ("finetune.merge", "true", "LoRA: also write merged weights"),
    "--no-packing": ("finetune.packing", "false", "one conversation per sequence (padded)"),
}


def add_finetune(sub: argparse._SubParsersAction) -> None:
    """Register `ismail finetune`."""
    from ismail_core.cli import add_config_flags
    from ismail_core.finetune.config import FinetuneConfig

    p = sub.add_parser(
        "finetune",
        help="chat fine-tuning, full or LoRA (no arguments: runs/tiny on the built-in tasks); "
        "--task dpo (preference pairs) or classify (labelled texts)",
        description="Fine-tune a checkpoint into a chat model: conversations in the chat "
        "template, loss on assistant turns, full fine-tuning or LoRA (peft). --task dpo tunes "
        "a chat model on preference pairs; --task classify puts a classification head on the "
        "model and trains it on labelled texts (into runs/tiny-classify by default; use it "
        "with `ismail classify`). Options are read "
        "from the defaults, then --config FILE (sections finetune/lora/run/train/optim/eval/"
        "checkpoint/log/dist), then flags. With no arguments: runs/tiny (from `ismail train`) "
        "on the built-in Turkish task set, into runs/tiny-chat. A run directory with "
        "checkpoints is resumed automatically; torchrun works as for `ismail train`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    for flag, (key, text) in ALIASES.items():
        p.add_argument(flag, dest=key, metavar="VALUE", default=argparse.SUPPRESS, help=text)
    for flag, (key, value, text) in SWITCHES.items():
        p.add_argument(flag, dest=key, action="store_const", const=value, help=text)
    add_config_flags(p, FinetuneConfig)
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """Build the config from file and flags, fine-tune, print the summary."""
    from ismail_core.cli import EXIT_INTERRUPTED, config_layers, is_main_process
    from ismail_core.finetune.config import finetune_config
    from ismail_core.finetune.trainer import finetune

    cfg = finetune_config(*config_layers(args))
    result = finetune(cfg)
    if result.interrupted:
        print(f"saved {result.checkpoint}; run the same command again to continue")
        return EXIT_INTERRUPTED
    if result.checkpoint is not None and is_main_process():
        if cfg.finetune.task == "classify":
            from ismail_core.classify.cli import print_summary as classify_summary

            classify_summary(result, cfg)
        else:
            print_summary(result)
    return 0


def print_summary(result: Any) -> None:
    """Accuracy before -> after (and, after preference tuning, the share of held-out pairs
    whose chosen reply the model prefers), the share of replies that end their turn, a sample
    conversation and the commands that chat with the model."""
    if span := first_and_last(result.evals, "preference_accuracy"):
        first, last = span
        print(
            f"held-out preference accuracy {first['preference_accuracy']:.1%} (step "
            f"{first['step']}) -> {last['preference_accuracy']:.1%} (step {last['step']}); "
            f"reward margin {last['rewards/margins']:.3f}"
        )
    if span := first_and_last(result.evals, "accuracy"):
        first, last = span
        print(
            f"held-out accuracy {first['accuracy']:.1%} (step {first['step']}) -> "
            f"{last['accuracy']:.1%} (step {last['step']}); replies that end their turn "
            f"{first['ended']:.1%} -> {last['ended']:.1%}"
        )
        per_task = ", ".join(f"{k} {v:.0%}" for k, v in last["per_task"].items())
        print(f"  per task: {per_task}")
        for user, reply in last["samples"][:2]:
            print(f"  user:      {user}\n  assistant: {reply}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"chat:       uv run ismail generate {result.run_dir} --chat")
    print(f"serve it:   uv run ismail-serve {result.run_dir}")


def first_and_last(
    evals: list[dict[str, Any]], key: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The first and the last of the evaluations that measured `key` (None when none did)."""
    measured = [e for e in evals if key in e]
    return (measured[0], measured[-1]) if measured else None
