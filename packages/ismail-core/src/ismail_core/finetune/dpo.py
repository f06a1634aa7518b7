"""`ismail finetune --task dpo`: preference tuning (DPO, cDPO, IPO) on the fine-tuning Trainer.

Each step scores a batch of (prompt, chosen, rejected) pairs: both conversations go through
the model in one batch (chosen rows first), the log-probabilities of the replies' tokens are
summed (averaged for IPO), and `preference.preference_loss` compares them with the reference
model's. The reference is the frozen starting checkpoint; its log-probabilities are computed
once before training (as TRL's `precompute_ref_log_probs` does), with LoRA by running the
model with its adapters switched off, so no second copy of the weights is ever held. A
resumed full fine-tuning recomputes them from the base checkpoint.

Evaluation: the held-out pairs' loss and rewards, the preference accuracy (the policy gives
the chosen reply a higher log-probability than the rejected one), and, as for chat
fine-tuning, replies generated for held-out prompts and scored.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ismail_core.finetune import lora
from ismail_core.finetune.data import (
    IGNORE,
    FinetuneError,
    RowSampler,
    collate,
    content_hash,
    single_rows,
)
from ismail_core.finetune.evaluate import ReplyCase, ReplyScores
from ismail_core.finetune.preference import preference_loss, sequence_logprobs
from ismail_core.finetune.preference_data import (
    PairExample,
    PreferenceRecord,
    encode_pair,
    fit_pair,
    load_preference_records,
    pair_rows,
)
from ismail_core.finetune.trainer import FinetuneTrainer


@dataclass
class PreferenceEval(ReplyScores):
    """Held-out preference metrics (TRL's names in `to_dict`) and, when replies were
    generated, their scores as for chat fine-tuning (see ReplyScores)."""

    loss: float
    preference_accuracy: float
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "preference_accuracy": self.preference_accuracy,
            **self.metrics,
            **self.reply_fields(),
        }


class PreferenceTrainer(FinetuneTrainer):
    """One preference-tuning run (see the module docstring)."""

    # ------------------------------------------------------------------ data
    def _setup_examples(self) -> None:
        train, val, cases = self._preference_records()
        self.cases = self._fitting_cases(cases)
        self.train_pairs = self._encode_pairs(train, "training")
        self.val_pairs = self._encode_pairs(val, "held-out") if val else []
        self.grad_accum = self.cfg.train.grad_accum
        self.sampler = RowSampler(
            len(self.train_pairs),
            self.cfg.train.batch_size,
            self.grad_accum,
            self.info.world_size,
            self.cfg.run.seed,
        )

    def _preference_records(
        self,
    ) -> tuple[list[PreferenceRecord], list[PreferenceRecord], list[ReplyCase]]:
        """(training records, held-out records, held-out reply cases)."""
        f = self.cfg.finetune
        train: list[PreferenceRecord] = []
        val: list[PreferenceRecord] = []
        if f.data == "builtin":
            from ismail_core.finetune.builtin_preferences import builtin_preference_pairs

            for p in builtin_preference_pairs().pairs:
                record = PreferenceRecord((("user", p.prompt),), p.chosen, p.rejected, p.task)
                (val if p.heldout else train).append(record)
            # the reply cases of chat fine-tuning: the same held-out prompts and checks, so
            # the accuracy compares with the SFT run's
            return train, val, self._conversations()[2]
        for record in load_preference_records(f.data):
            key = [*record.prompt, ("chosen", record.chosen), ("rejected", record.rejected)]
            held_out = content_hash([{"role": r, "content": c} for r, c in key]) < f.val_fraction
            (val if held_out else train).append(record)
        cases = [_chosen_case(record) for record in val]
        return train, val, cases

    def _encode_pairs(self, records: Sequence[PreferenceRecord], what: str) -> list[PairExample]:
        """Encode and apply the length limit, saying how many pairs it dropped."""
        f = self.cfg.finetune
        pairs = [encode_pair(self.tokenizer, r) for r in records]
        kept = [p for p in (fit_pair(p, self.seq_len, f.too_long) for p in pairs) if p]
        if len(kept) < len(pairs) and self.info.is_main:
            print(
                f"  {what} pairs longer than {self.seq_len} tokens: {len(pairs) - len(kept)} "
                "dropped or cut (--finetune.max_len, --finetune.too_long)",
                flush=True,
            )
        if what == "training" and not kept:
            raise FinetuneError(f"no training pairs in {f.data}: every one was dropped or held out")
        return kept

    # ------------------------------------------------------------------ model
    def _setup_model(self) -> None:
        super()._setup_model()
        self.ref_train, self.ref_val = self._reference_logps()

    @torch.no_grad()
    def _reference_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference model's (chosen, rejected) log-probabilities of every training and
        held-out pair, shapes [n, 2], on the host."""
        switch: contextlib.AbstractContextManager[None]
        if self.lora_settings is not None:
            model, switch = self.raw_model, lora.disabled_adapters(self.raw_model)
        elif self.resume_from is None:
            model, switch = self.raw_model, contextlib.nullcontext()
        else:  # the weights in training are no longer the base's
            model = self._load_weights().to(self.device)
            switch = contextlib.nullcontext()
        bar = self.info.is_main and self.cfg.log.progress
        with switch:
            refs = [
                self._pair_logps(model, pairs, f"reference log-probs ({what})" if bar else None)
                for pairs, what in ((self.train_pairs, "training"), (self.val_pairs, "held-out"))
            ]
        self.raw_model.train()
        return refs[0], refs[1]

    @torch.no_grad()
    def _pair_logps(
        self, model: torch.nn.Module, pairs: Sequence[PairExample], desc: str | None = None
    ) -> torch.Tensor:
        """(chosen, rejected) log-probabilities of `pairs` under `model` in eval mode: [n, 2]."""
        model.eval()
        size = self.cfg.eval.batch_size
        out = []
        for start in tqdm(range(0, len(pairs), size), desc=desc, disable=desc is None):
            batch = self._pair_batch(pairs[start : start + size])
            with self.precision.autocast():
                logits = model(**batch).logits
            out.append(self._logps(logits, batch["labels"]).view(2, -1).T.cpu())
        return torch.cat(out) if out else torch.zeros(0, 2)

    def _pair_batch(self, pairs: Sequence[PairExample]) -> dict[str, Any]:
        """The model's inputs for `pairs`: chosen rows, then rejected rows, right-padded."""
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        batch = collate(single_rows(pair_rows(pairs)), pad, packed=False)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _logps(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sequence log-probabilities: per-token means for IPO, sums otherwise."""
        return self._scores(logits, labels)[0]

    def _scores(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence log-probabilities as `_logps`, the chosen half's negative log-likelihood
        per token): one pass over the logits for both."""
        sums = sequence_logprobs(logits, labels)
        counts = (labels[:, 1:] != IGNORE).sum(-1)
        half = len(sums) // 2
        nll = -sums[:half].sum() / counts[:half].sum().clamp(min=1)
        if self.cfg.preference.loss_type == "ipo":
            return sums / counts.clamp(min=1), nll
        return sums, nll

    # ------------------------------------------------------------------ steps
    def _micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        index = self.sampler.indices(step, micro, self.info.rank)
        pairs = [self.train_pairs[i] for i in index]
        self._micro_refs = self.ref_train[index].to(self.device)
        self._micro_tokens = sum(len(ex.ids) for ex in pair_rows(pairs))
        if micro == 0:
            self._step_metrics: dict[str, float] = {}
        return self._pair_batch(pairs)

    def _loss(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logps, nll = self._scores(out.logits, batch["labels"])
        chosen, rejected = logps.chunk(2)
        refs = self._micro_refs
        loss, metrics = preference_loss(
            chosen, rejected, refs[:, 0], refs[:, 1], self.cfg.preference.loss(), nll
        )
        for name, value in metrics.items():  # the step's mean over its micro-batches
            self._step_metrics[name] = self._step_metrics.get(name, 0.0) + value / self.grad_accum
        return loss + out.aux_loss, loss

    def _train_metrics(self) -> dict[str, Any]:
        """The last step's rewards and log-probabilities (this process's pairs), TRL's names."""
        return dict(self._step_metrics)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self) -> PreferenceEval | None:
        """Held-out pair metrics and generated replies; every process computes the same."""
        if not self.val_pairs:
            return None
        with self._evaluating() as model:
            logps = self._pair_logps(model, self.val_pairs)
            loss, metrics = preference_loss(
                logps[:, 0],
                logps[:, 1],
                self.ref_val[:, 0],
                self.ref_val[:, 1],
                dataclasses.replace(self.cfg.preference.loss(), rpo_alpha=0.0),  # DPO's own
            )
            preferred = (logps[:, 0] > logps[:, 1]).float().mean().item()
            result = PreferenceEval(loss.item(), preferred, metrics)
            self._score_replies(result)
        return result

    def _eval_message(self, step: int, val: PreferenceEval) -> str:
        m = val.metrics
        line = (
            f"step {step:>5}  held-out DPO loss {val.loss:.3f}  prefers chosen "
            f"{val.preference_accuracy:.1%}  reward margin {m['rewards/margins']:.3f}"
        )
        if val.accuracy is not None:
            line += f"  reply accuracy {val.accuracy:.1%}"
        return line

    def _print_header(self) -> None:
        m = self.raw_model
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        p = self.cfg.preference
        loss = "IPO" if p.loss_type == "ipo" else "cDPO" if p.label_smoothing else "DPO"
        method = "LoRA" if self.lora_settings is not None else "full"
        where = (
            f"resuming from {self.resume_from} at step {self.start_step}"
            if self.resume_from
            else "new run"
        )
        print(
            f"ismail finetune --task dpo: {loss} (beta {p.beta}), {method}, of {self.base} "
            f"({trainable / 1e6:.2f}M parameters train; the reference is the base)\n"
            f"  data {self.cfg.finetune.data}: {len(self.train_pairs):,} training and "
            f"{len(self.val_pairs):,} held-out pairs\n"
            f"  {self.cfg.train.steps} steps x {self.cfg.train.batch_size * self.grad_accum} "
            f"pairs per process on {self.device} ({self.info.world_size} process(es), "
            f"{self.precision.name}); {where}\n"
            f"  run directory: {self.run_dir}",
            flush=True,
        )


def _chosen_case(record: PreferenceRecord) -> ReplyCase:
    """A held-out pair as a reply case: right when the reply is the chosen one (after
    stripping surrounding whitespace)."""
    chosen = record.chosen.strip()
    return ReplyCase(record.prompt_messages(), chosen, "chosen", lambda r: r.strip() == chosen)
