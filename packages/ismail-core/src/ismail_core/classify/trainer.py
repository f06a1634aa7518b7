"""`ismail finetune --task classify`: a classification head fine-tuned on labelled texts.

The loop, precision, torchrun wrapping, checkpoints, exact resume, metrics and LoRA plumbing
are those of chat fine-tuning (FinetuneTrainer, itself the pretraining Trainer); this subclass
swaps in labelled texts for conversations, a TransformerClassifier built from the base (a new
`score` head, the LM head dropped), the choice of what trains (classify.train, or LoRA
adapters plus the head), batches of right-padded texts with their last real positions, and
evaluation by held-out loss, accuracy, macro-F1 and the confusion matrix.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ismail_core.checkpoint import (
    is_classifier,
    load_checkpoint_tokenizer,
    load_config,
    load_model,
)
from ismail_core.classify.builtin import BUILTIN, builtin_split
from ismail_core.classify.data import (
    ClassifyError,
    LabelledText,
    check_known_labels,
    collate,
    encode_texts,
    label_names,
    load_labelled,
    pad_id,
    split_heldout,
)
from ismail_core.classify.metrics import ClassifyEval
from ismail_core.classify.model import (
    ClassifierInfo,
    TransformerClassifier,
    from_language_model,
    load_head,
    save_head,
    select_trainable,
    trained_blocks,
)
from ismail_core.classify.predict import log_probabilities
from ismail_core.finetune import lora
from ismail_core.finetune.config import FinetuneConfig
from ismail_core.finetune.data import RowSampler
from ismail_core.finetune.lora import LoraSettings
from ismail_core.finetune.trainer import FinetuneTrainer, _resolve_base
from ismail_core.layout import ADAPTER_DIR, TRAIN_CONFIG_FILE
from ismail_core.train.config import ConfigError
from ismail_core.train.resume import find_resume_checkpoint, read_resume_state
from ismail_core.train.trainer import Trainer

# Settings a run directory must be continued with (besides FinetuneTrainer's).
SAME_RUN_KEYS = {
    "classify": ("text_field", "label_field", "train"),
    "finetune": ("val_fraction",),
}


class ClassifyTrainer(FinetuneTrainer):
    """One classification fine-tuning run (see the module docstring)."""

    def __init__(
        self, cfg: FinetuneConfig, on_step: Callable[[int, Trainer], None] | None = None
    ) -> None:
        super().__init__(cfg, on_step)
        # the routing biases are base weights: they move only when every weight trains
        self.update_router_bias = self.lora_settings is None and cfg.classify.train == "all"

    # ------------------------------------------------------------------ data
    def _setup_data(self) -> None:
        f = self.cfg.finetune
        self.base = _resolve_base(f.base, self.run_dir, self.info)
        if is_classifier(self.base):
            raise ClassifyError(
                f"{f.base} is already a classifier; give the language model it came from as "
                "--base (a classifier's labels cannot be swapped for others)"
            )
        self.resume_from = find_resume_checkpoint(self.cfg.run.resume, self.run_dir)
        if self.resume_from is not None:
            self._check_same_run()
        self.tokenizer = load_checkpoint_tokenizer(self.resume_from or self.base)
        max_seq_len = load_config(self.base).max_seq_len
        self.seq_len = f.max_len or max_seq_len
        if self.seq_len > max_seq_len:
            raise ConfigError(
                f"finetune.max_len {self.seq_len} exceeds the base model's max_seq_len "
                f"{max_seq_len}; lower --finetune.max_len"
            )
        train, held_out = self._records()
        self.labels = label_names(train)
        if len(self.labels) < 2:
            raise ClassifyError(
                f"{f.data}: the training split has only the label {self.labels[0]!r}; a "
                "classifier needs texts of two or more labels"
            )
        check_known_labels(self.labels, held_out, "the training split")
        self.label_counts = Counter(r.label for r in train)
        self.train_rows, self.train_targets = self._encode_texts(train, "training")
        self.val_rows, self.val_targets = self._encode_texts(held_out, "held-out")
        self.grad_accum = self.cfg.train.grad_accum
        self.sampler = RowSampler(
            len(self.train_rows),
            self.cfg.train.batch_size,
            self.grad_accum,
            self.info.world_size,
            self.cfg.run.seed,
        )

    def _records(self) -> tuple[list[LabelledText], list[LabelledText]]:
        """(training, held-out) records: the built-in split, or the data split by hash."""
        f, c = self.cfg.finetune, self.cfg.classify
        if f.data == BUILTIN:
            return builtin_split()
        records = load_labelled(f.data, c.text_field, c.label_field)
        return split_heldout(records, f.val_fraction)

    def _encode_texts(
        self, records: list[LabelledText], what: str
    ) -> tuple[list[list[int]], list[int]]:
        """(token-id rows, label ids), saying how many texts were cut to the length limit."""
        rows = encode_texts(self.tokenizer, [r.text for r in records], self.seq_len + 1)
        cut = sum(len(r) > self.seq_len for r in rows)
        if cut and self.info.is_main:
            print(
                f"  {cut} of {len(rows)} {what} texts are longer than {self.seq_len} tokens: "
                "their start is kept (--finetune.max_len)",
                flush=True,
            )
        index = {label: i for i, label in enumerate(self.labels)}
        return [r[: self.seq_len] for r in rows], [index[r.label] for r in records]

    def _check_same_run(self) -> None:
        """Also refuse to continue a run with other fields, trained weights or split."""
        super()._check_same_run()
        try:
            saved = json.loads((self.run_dir / TRAIN_CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return
        for section, keys in SAME_RUN_KEYS.items():
            for key in keys:
                before = saved.get(section, {}).get(key)
                now = getattr(getattr(self.cfg, section), key)
                if before is not None and before != now:
                    raise ConfigError(
                        f"{self.run_dir} was fine-tuned with --{section}.{key} {before}, not "
                        f"{now}: continue it with the same setting, or fine-tune into a new "
                        "--run.out_dir"
                    )

    # ------------------------------------------------------------------ model
    def _setup_model(self) -> None:
        resume, settings, c = self.resume_from, self.lora_settings, self.cfg.classify
        if settings is not None and c.train != "all":
            raise ConfigError(
                "with LoRA the adapters and the head train; drop --classify.train (it chooses "
                "what trains in full fine-tuning)"
            )
        trained_blocks(c.train, load_config(self.base).n_layers)  # fails before any work
        # full fine-tuning resumes from its own weights; LoRA from the base plus its adapter
        if resume is not None and settings is None:
            model, _ = load_model(resume)
            assert isinstance(model, TransformerClassifier)
            if model.labels != self.labels:
                raise ClassifyError(
                    f"{resume} was trained on the labels {model.labels}, but the data now has "
                    f"{self.labels}: fine-tune into a new --run.out_dir"
                )
        else:
            model = self._new_classifier()
        self.model_cfg = model.cfg
        model.activation_checkpointing = self.cfg.train.activation_checkpointing
        if self.cfg.finetune.method == "qlora":
            lora.quantize_base(model, self.device)
        if settings is not None:
            self._add_adapters(model, settings, resume)
        else:
            select_trainable(model, c.train)
        model.train()
        self._place_model(model, read_resume_state(resume) if resume is not None else None)

    def _new_classifier(self) -> TransformerClassifier:
        """The base's weights with a new head (seeded: the same run starts the same way)."""
        c = self.cfg.classify
        text_field, label_field = (
            ("text", "label")
            if self.cfg.finetune.data == BUILTIN
            else (c.text_field, c.label_field)
        )
        base, _ = load_model(self.base)
        torch.manual_seed(self.cfg.run.seed)
        return from_language_model(base, ClassifierInfo(self.labels, text_field, label_field))

    def _add_adapters(
        self, model: TransformerClassifier, settings: LoraSettings, resume: Path | None
    ) -> None:
        """Fresh LoRA adapters (`settings`), or those (and the head) of the checkpoint resumed
        from; the head trains beside them."""
        if resume is not None:
            lora.check_base(resume / ADAPTER_DIR, self.base)
            self.lora_settings = lora.load_adapter(model, resume / ADAPTER_DIR)
            load_head(model, resume / ADAPTER_DIR)
        else:
            torch.manual_seed(self.cfg.run.seed)  # LoRA's A matrices start random
            lora.add_lora(model, settings)
        model.score.requires_grad_(True)

    @property
    def classifier(self) -> TransformerClassifier:
        """The model in training (`raw_model`), as the classifier it is."""
        assert isinstance(self.raw_model, TransformerClassifier)
        return self.raw_model

    # ------------------------------------------------------------------ steps
    def _micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        chosen = self.sampler.indices(step, micro, self.info.rank)
        rows = [self.train_rows[i] for i in chosen]
        self._micro_tokens = sum(map(len, rows))
        ids, last = collate(rows, pad_id(self.tokenizer))
        labels = torch.tensor([self.train_targets[i] for i in chosen], dtype=torch.long)
        return {"input_ids": ids, "labels": labels, "last_index": last}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self) -> ClassifyEval | None:
        """Held-out loss, accuracy, macro-F1 and confusion matrix (the same on every process)."""
        if not self.val_rows:
            return None
        with self._evaluating():
            log_probs = log_probabilities(
                self.classifier,
                self.val_rows,
                pad_id(self.tokenizer),
                self.cfg.eval.batch_size,
                self.precision.autocast(),
            )
        return ClassifyEval.from_log_probs(log_probs.numpy(), self.val_targets, self.labels)

    def _eval_message(self, step: int, val: ClassifyEval) -> str:
        return (
            f"step {step:>5}  held-out loss {val.loss:.3f}  accuracy {val.accuracy:.1%}  "
            f"macro-F1 {val.macro_f1:.3f}  (majority baseline {val.majority:.1%})"
        )

    # ------------------------------------------------------------------ checkpoints
    def _save_adapter(self, directory: Path) -> None:
        """The LoRA adapter with the head beside it; classifier.json comes from the model
        (save_checkpoint writes its checkpoint_files)."""
        super()._save_adapter(directory)
        save_head(self.classifier, directory)

    def _print_header(self) -> None:
        m = self.raw_model
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        total = sum(p.numel() for p in m.parameters())
        f, c = self.cfg.finetune, self.cfg.classify
        method = f"LoRA + head ({f.method})" if self.lora_settings else f"train {c.train}"
        where = (
            f"resuming from {self.resume_from} at step {self.start_step}"
            if self.resume_from
            else "new run"
        )
        counts = ", ".join(f"{label} {self.label_counts[label]}" for label in self.labels)
        print(
            f"ismail finetune --task classify: {method} on {self.base} ({trainable / 1e6:.2f}M "
            f"of {total / 1e6:.1f}M parameters train)\n"
            f"  data {f.data}: {len(self.train_rows):,} training and {len(self.val_rows):,} "
            f"held-out texts of <= {self.seq_len} tokens; {len(self.labels)} labels "
            f"({counts} in training)\n"
            f"  {self.cfg.train.steps} steps x {self.cfg.train.batch_size * self.grad_accum} "
            f"texts per process on {self.device} ({self.info.world_size} process(es), "
            f"{self.precision.name}); {where}\n"
            f"  run directory: {self.run_dir}",
            flush=True,
        )
