"""`ismail finetune`: chat fine-tuning (full or LoRA) on ismail train's Trainer.

The loop, precision, torchrun wrapping, checkpoints, exact resume, metrics and progress bar
are the pretraining Trainer's; this subclass swaps in what differs: conversations instead of
token windows, a base checkpoint instead of a fresh model, LoRA adapters, and evaluation by
held-out loss plus generated replies.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ismail_core.chat import add_chat_markers, chat_template, render_chat
from ismail_core.checkpoint import (
    CheckpointError,
    load_checkpoint_tokenizer,
    load_config,
    load_model,
    resolve_checkpoint,
)
from ismail_core.evaluate import Evaluation
from ismail_core.finetune import lora
from ismail_core.finetune.config import FinetuneConfig, FinetuneSection
from ismail_core.finetune.data import (
    Example,
    FinetuneError,
    RowSampler,
    collate,
    content_hash,
    encode_example,
    fit_length,
    pack,
    single_rows,
)
from ismail_core.finetune.evaluate import (
    ChatEval,
    ReplyCase,
    ReplyScores,
    generate_replies,
    heldout_loss,
    score_replies,
)
from ismail_core.layout import ADAPTER_DIR, TRAIN_CONFIG_FILE
from ismail_core.model import Transformer
from ismail_core.train import distributed
from ismail_core.train.config import ConfigError
from ismail_core.train.resume import find_resume_checkpoint, read_resume_state
from ismail_core.train.trainer import Trainer, TrainResult, train

DEFAULT_BASE = "runs/tiny"
# Where a transformers model folder given as the base is imported to, inside the run directory.
IMPORTED_BASE_DIR = "base"


class FinetuneTrainer(Trainer):
    """One fine-tuning run (see the module docstring); `run()` returns a TrainResult."""

    # FinetuneConfig is not a TrainConfig, but it has every section that Trainer's shared
    # steps read (run, train, optim, eval, checkpoint, log, dist); the steps that read
    # TrainConfig's own fields (data, preset, model) are replaced here.
    cfg: FinetuneConfig  # type: ignore[assignment]

    def __init__(
        self, cfg: FinetuneConfig, on_step: Callable[[int, Trainer], None] | None = None
    ) -> None:
        self.lora_settings = cfg.lora.settings() if cfg.finetune.method != "full" else None
        self.update_router_bias = self.lora_settings is None
        super().__init__(cfg, on_step)  # type: ignore[arg-type]  # see `cfg` above

    # ------------------------------------------------------------------ data
    def _setup_data(self) -> None:
        self._setup_tokenizer()
        self._setup_examples()

    def _setup_tokenizer(self) -> None:
        """The base, the checkpoint to resume from, the tokenizer with its chat template, and
        the sequence length (what every fine-tuning task needs before its data)."""
        f = self.cfg.finetune
        self.base = _resolve_base(f.base, self.run_dir, self.info)
        self.resume_from = find_resume_checkpoint(self.cfg.run.resume, self.run_dir)
        if self.resume_from is not None:
            self._check_same_run()
        self.tokenizer = load_checkpoint_tokenizer(self.resume_from or self.base)
        self.added_markers = add_chat_markers(self.tokenizer)
        if self.added_markers and self.lora_settings is not None:
            raise FinetuneError(
                f"the tokenizer of {self.base} lacks the chat markers {self.added_markers}, "
                "whose new embeddings must be trained: use --finetune.method full"
            )
        self.tokenizer.chat_template = chat_template(self.tokenizer)
        self.model_max_len = max_seq_len = load_config(self.base).max_seq_len
        self.seq_len = f.max_len or max_seq_len
        if self.seq_len > max_seq_len:
            raise ConfigError(
                f"finetune.max_len {self.seq_len} exceeds the base model's max_seq_len "
                f"{max_seq_len}; lower --finetune.max_len"
            )

    def _setup_examples(self) -> None:
        """Conversations as training rows, held-out examples and reply cases."""
        f = self.cfg.finetune
        train, val, cases = self._conversations()
        self.cases = self._fitting_cases(cases)
        self.train_examples = self._encode(train, "training")
        self.val_examples = self._encode(val, "held-out") if val else []
        rows = pack(self.train_examples, self.seq_len) if f.packing else None
        self.rows = rows or single_rows(self.train_examples)
        self.grad_accum = self.cfg.train.grad_accum
        self.sampler = RowSampler(
            len(self.rows),
            self.cfg.train.batch_size,
            self.grad_accum,
            self.info.world_size,
            self.cfg.run.seed,
        )

    def _fitting_cases(self, cases: list[ReplyCase]) -> list[ReplyCase]:
        """The cases whose prompt leaves room for a reply in the model's context."""
        room = self.model_max_len - self.cfg.finetune.max_new_tokens
        return [c for c in cases if len(render_chat(self.tokenizer, c.messages, True).ids) <= room]

    def _conversations(self) -> tuple[list[list[dict]], list[list[dict]], list[ReplyCase]]:
        """(training conversations, held-out conversations, held-out reply cases)."""
        f = self.cfg.finetune
        if f.data == "builtin":
            from ismail_core.finetune.builtin import builtin_tasks, is_correct

            train_items, held_out = builtin_tasks()
            held_out = _interleave_tasks(held_out)  # any eval_replies prefix covers every task
            cases = [
                ReplyCase(item.messages()[:-1], item.answer, item.task, _bind(is_correct, item))
                for item in held_out
            ]
            return [i.messages() for i in train_items], [i.messages() for i in held_out], cases
        from ismail_core.finetune.formats import load_conversations

        train: list[list[dict]] = []
        val: list[list[dict]] = []
        for conv in load_conversations(f.data):
            messages = conv.as_messages()
            (val if content_hash(messages) < f.val_fraction else train).append(messages)
        cases = [_exact_case(m) for m in val]
        return train, val, cases

    def _encode(self, conversations: list[list[dict]], what: str) -> list[Example]:
        """Encode with the chat template and apply the length limit, saying what was cut."""
        f = self.cfg.finetune
        examples = [encode_example(self.tokenizer, m, f.train_on) for m in conversations]
        kept, truncated, dropped = fit_length(examples, self.seq_len, f.too_long)
        if (truncated or dropped) and self.info.is_main:
            print(
                f"  {what} conversations longer than {self.seq_len} tokens: {truncated} "
                f"truncated, {dropped} dropped (--finetune.max_len, --finetune.too_long)",
                flush=True,
            )
        if what == "training" and not kept:
            raise FinetuneError(
                f"no training conversations in {f.data}: every one was dropped or held out"
            )
        return kept

    def _check_same_run(self) -> None:
        """Refuse to continue this run directory from another base or on other data."""
        try:
            saved = json.loads((self.run_dir / TRAIN_CONFIG_FILE).read_text())["finetune"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        f, defaults = self.cfg.finetune, FinetuneSection()
        for key in ("task", "base", "data", "method", "train_on", "packing"):
            # a key missing from an older run's file had its default then
            was = saved.get(key, getattr(defaults, key))
            if was != getattr(f, key):
                raise ConfigError(
                    f"{self.run_dir} was fine-tuned with --finetune.{key} {was}, not "
                    f"{getattr(f, key)}: continue it with the same setting, or fine-tune into "
                    "a new --run.out_dir"
                )

    # ------------------------------------------------------------------ model
    def _setup_model(self) -> None:
        resume, settings = self.resume_from, self.lora_settings
        # full fine-tuning resumes from its own weights; LoRA from the base plus its adapter
        model = self._load_weights(resume if resume is not None and settings is None else None)
        self.model_cfg = model.cfg
        model.activation_checkpointing = self.cfg.train.activation_checkpointing
        if self.cfg.finetune.method == "qlora":
            lora.quantize_base(model, self.device)
        if settings is not None and resume is not None:
            lora.check_base(resume / ADAPTER_DIR, self.base)
            self.lora_settings = lora.load_adapter(model, resume / ADAPTER_DIR)
        elif settings is not None:
            torch.manual_seed(self.cfg.run.seed)  # LoRA's A matrices start random
            lora.add_lora(model, settings)
        model.train()
        self._place_model(model, read_resume_state(resume) if resume is not None else None)

    def _load_weights(self, checkpoint: Path | None = None) -> Transformer:
        """The model of `checkpoint` (default: the base), its vocabulary grown to the
        tokenizer's when chat markers were added."""
        model, _ = load_model(checkpoint or self.base)
        if self.tokenizer.vocab_size > model.cfg.vocab_size:
            _resize_vocab(model, self.tokenizer.vocab_size)
        return model

    # ------------------------------------------------------------------ steps
    def _micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        rows = [self.rows[i] for i in self.sampler.indices(step, micro, self.info.rank)]
        self._micro_tokens = sum(len(r.ids) for r in rows)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        return collate(rows, pad, packed=self.cfg.finetune.packing)

    def _count_tokens(self, batch: dict[str, Any]) -> int:
        return self._micro_tokens  # padding excluded

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self) -> Evaluation | None:
        """Held-out loss and generated replies; every process computes the same numbers."""
        if not self.val_examples:
            return None
        with self._evaluating() as model:
            loss = heldout_loss(
                model,
                self.val_examples,
                self.cfg.eval.batch_size,
                self.device,
                self.precision.autocast(),
            )
            result = ChatEval(loss)
            self._score_replies(result)
        return result

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[torch.nn.Module]:
        """The model in training, in eval mode for the block and back in training after it."""
        model = self.raw_model
        model.eval()
        try:
            yield model
        finally:
            model.train()

    def _score_replies(self, result: ReplyScores) -> None:
        """Generate greedy replies to the first eval_replies held-out cases and set the
        result's accuracy, ended, per_task and samples (nothing without cases)."""
        f, model = self.cfg.finetune, self.raw_model
        cases = self.cases[: f.eval_replies]
        if not cases:
            return
        with lora.merged_adapters(model), self.precision.autocast():
            replies = generate_replies(model, self.tokenizer, cases, f.max_new_tokens)
        result.accuracy, result.ended, result.per_task = score_replies(cases, replies)
        result.samples = [
            (c.messages[-1]["content"], text) for c, (text, _) in zip(cases, replies)
        ][:3]

    def _eval_message(self, step: int, val: Any) -> str:
        """The log line of `val`, which `_evaluate` returned (a ChatEval here)."""
        line = f"step {step:>5}  held-out loss {val.loss:.3f}"
        if val.accuracy is not None:
            line += f"  accuracy {val.accuracy:.1%}  ended turn {val.ended:.1%}"
        return line

    # ------------------------------------------------------------------ checkpoints
    def _write_checkpoint(
        self,
        step: int,
        trainer_state: dict[str, Any],
        state_dict: dict[str, torch.Tensor] | None,
        is_best: bool,
        adapter: Callable[[Path], None] | None = None,
    ) -> Path:
        """Full fine-tuning writes the weights; LoRA writes its adapter (and, with
        finetune.merge, the merged weights at the last step) instead of `adapter`."""
        if self.lora_settings is None:
            return super()._write_checkpoint(step, trainer_state, state_dict, is_best, adapter)
        merged = None
        if self.cfg.finetune.merge and step >= self.cfg.train.steps:
            merged = lora.merge_lora(copy.deepcopy(self.raw_model).cpu()).state_dict()
        return super()._write_checkpoint(
            step, trainer_state, merged, is_best, adapter=self._save_adapter
        )

    def _save_adapter(self, directory: Path) -> None:
        """Write the LoRA adapter of the model in training into `directory`."""
        assert self.lora_settings is not None, "only LoRA runs write an adapter"
        lora.save_adapter(self.raw_model, self.lora_settings, directory, self.base)

    def _print_header(self) -> None:
        m = self.raw_model
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        total = sum(p.numel() for p in m.parameters() if not p.requires_grad) + trainable
        method = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}[
            self.cfg.finetune.method
        ]
        where = (
            f"resuming from {self.resume_from} at step {self.start_step}"
            if self.resume_from
            else "new run"
        )
        added = f"; added chat markers {self.added_markers}" if self.added_markers else ""
        print(
            f"ismail finetune: {method} of {self.base} ({trainable / 1e6:.2f}M of "
            f"{total / 1e6:.1f}M parameters train){added}\n"
            f"  data {self.cfg.finetune.data}: {len(self.train_examples):,} training and "
            f"{len(self.val_examples):,} held-out conversations ({len(self.rows):,} rows of "
            f"<= {self.seq_len} tokens)\n"
            f"  {self.cfg.train.steps} steps x {self.cfg.train.batch_size * self.grad_accum} "
            f"rows per process on {self.device} ({self.info.world_size} process(es), "
            f"{self.precision.name}); {where}\n"
            f"  run directory: {self.run_dir}",
            flush=True,
        )


def _bind(check: Callable[[Any, str], bool], item: Any) -> Callable[[str], bool]:
    return lambda reply: check(item, reply)


def _interleave_tasks(items: list[Any]) -> list[Any]:
    """Items reordered round-robin over their tasks (first of each task, then second, ...)."""
    by_task: dict[str, list[Any]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    rounds = itertools.zip_longest(*by_task.values())
    return [item for group in rounds for item in group if item is not None]


def _exact_case(messages: list[dict]) -> ReplyCase:
    """A held-out conversation as a reply case: the last assistant turn, matched exactly
    (after stripping surrounding whitespace)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    reference = messages[last]["content"]
    return ReplyCase(
        messages[:last], reference, "exact match", lambda r: r.strip() == reference.strip()
    )


def _resolve_base(base: str, run_dir: Path, info: distributed.DistInfo) -> Path:
    """The base checkpoint directory, with the next step spelled out when it is missing. A
    transformers model folder is imported (by the main process) into RUN/base first, once: a
    resumed run finds it there."""
    from ismail_core.hf_import import import_checkpoint, is_hf_model_folder

    if is_hf_model_folder(base):
        imported = run_dir / IMPORTED_BASE_DIR
        if info.is_main and not imported.is_dir():  # complete or absent: written atomically
            print(f"importing {base} into {imported}", flush=True)
            import_checkpoint(base, imported)
        distributed.barrier(info)
        return imported
    try:
        return resolve_checkpoint(base)
    except CheckpointError as exc:
        if base == DEFAULT_BASE:
            raise FinetuneError(
                f"there is no base model at {base} yet: run `uv run ismail train` first (it "
                "trains one there), or pass --base CKPT"
            ) from exc
        raise


@torch.no_grad()
def _resize_vocab(model: Transformer, vocab_size: int) -> None:
    """Grow the embedding (and an untied LM head) to `vocab_size` rows; new rows start at the
    mean of the old ones, which keeps the new tokens' logits near the average at first."""
    old = model.cfg.vocab_size
    model.cfg = dataclasses.replace(model.cfg, vocab_size=vocab_size)
    embed = torch.nn.Embedding(vocab_size, model.embed.weight.shape[1])
    embed.weight[:old] = model.embed.weight
    embed.weight[old:] = model.embed.weight.mean(dim=0)
    model.embed = embed
    if model.cfg.tie_embeddings:
        model.head.weight = model.embed.weight
        return
    head = torch.nn.Linear(model.head.in_features, vocab_size, bias=False)
    head.weight[:old] = model.head.weight
    head.weight[old:] = model.head.weight.mean(dim=0)
    model.head = head


def finetune(
    cfg: FinetuneConfig, on_step: Callable[[int, Trainer], None] | None = None
) -> TrainResult:
    """Run fine-tuning of `cfg.finetune.task` to `cfg.train.steps` (resuming when the run
    directory has a checkpoint)."""
    trainer_cls = trainer_class(cfg.finetune.task)
    return train(cfg, on_step, trainer_cls)  # type: ignore[arg-type]  # see FinetuneTrainer.cfg


def trainer_class(task: str) -> type[Trainer]:
    """The Trainer subclass of a fine-tuning task (sft, dpo or classify)."""
    if task == "dpo":
        from ismail_core.finetune.dpo import PreferenceTrainer

        return PreferenceTrainer
    if task == "classify":
        from ismail_core.classify.trainer import ClassifyTrainer

        return ClassifyTrainer
    return FinetuneTrainer
