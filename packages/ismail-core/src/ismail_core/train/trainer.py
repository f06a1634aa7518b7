"""The training loop: `train(cfg)` runs `ismail train` from a resolved TrainConfig.

Components live in their own modules (config, optimizer, lr_schedule, batches, precision,
resume, metrics, distributed); this file wires them together in the order a reader
expects: set up -> (resume) -> loop of optimizer steps with evaluation and checkpoints -> end.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from ismail_core.atomic import atomic_write_json
from ismail_core.checkpoint import (
    CheckpointError,
    load_checkpoint_tokenizer,
    load_config,
    load_weights,
)
from ismail_core.corpus import DataError, ShardedSplit, load_metadata
from ismail_core.corpus.shards import tokenizer_info
from ismail_core.errors import IsmailError
from ismail_core.evaluate import Evaluation, evaluate
from ismail_core.layout import META_FILE, TOKENIZER_DIR, TRAIN_CONFIG_FILE, WEIGHTS_FILE
from ismail_core.model import Transformer
from ismail_core.tokenizer import Tokenizer, describe_fingerprint, load_tokenizer
from ismail_core.train import distributed
from ismail_core.train.batches import training_batch
from ismail_core.train.config import ConfigError, TrainConfig
from ismail_core.train.lr_schedule import lr_at, set_lr
from ismail_core.train.metrics import MetricsLogger, peak_flops
from ismail_core.train.optimizer import OptimizerError, build_optimizer
from ismail_core.train.precision import build_precision, fp8_converter
from ismail_core.train.resume import (
    CheckpointManager,
    find_resume_checkpoint,
    read_resume_state,
    rng_state,
    run_dir_lock,
    set_rng_state,
)

# What to change when a GPU runs out of memory, most effective first.
MEMORY_KNOBS = (
    "--train.batch_size (smaller, with a larger --train.grad_accum), --train.seq_len, "
    "--train.activation_checkpointing true, --train.precision bf16, --optim.name adamw8bit, "
    "--train.expert_rotation N"
)


class TrainError(IsmailError, RuntimeError):
    """Training cannot start or continue; the message says what to change."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves behind."""

    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False
    evals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _StepResult:
    """What one optimizer step reports."""

    loss: float  # mean over the micro-batches (and processes)
    lr: float
    grad_norm: float
    expert_load: list[torch.Tensor]  # per MoE layer: assignments to each expert
    tokens_per_s: float


@dataclass
class _Throughput:
    """Tokens per second, smoothed for the progress bar, and model FLOPs utilisation."""

    flops_per_token: float
    world_size: int
    peak_flops: float
    smoothed: float = 0.0  # tokens/s

    def update(self, tokens_per_s: float) -> None:
        """Fold in the tokens/s of a step (an exponential moving average)."""
        if self.smoothed == 0:
            self.smoothed = tokens_per_s
        else:
            self.smoothed = 0.8 * self.smoothed + 0.2 * tokens_per_s

    def mfu(self, tokens_per_s: float) -> float:
        """The share of the device's peak FLOPs that tokens_per_s uses."""
        return self.flops_per_token * tokens_per_s / self.world_size / self.peak_flops


def ensure_data(cfg: TrainConfig, info: distributed.DistInfo) -> Path:
    """The data directory, tokenized first (by the main process) if it does not exist yet."""
    path = Path(cfg.data.path)
    if not (path / META_FILE).is_file():
        if path.exists() and any(path.iterdir()):
            raise DataError(
                f"{path} exists but is not a tokenized data directory; point --data.path at "
                "one made by `ismail data` or at a new directory"
            )
        if info.is_main:
            from ismail_core.corpus import DataSpec, prepare_data

            print(f"preparing {cfg.data.source!r} into {path} (first run only)", flush=True)
            prepare_data(
                DataSpec(source=cfg.data.source, out=str(path), tokenizer=cfg.data.tokenizer)
            )
        distributed.barrier(info)
    return path


class Trainer:
    """One training run. `run()` returns a TrainResult; `on_step(step, trainer)` is called
    after every optimizer step (tests use it to interrupt a run).

    Fine-tuning (ismail_core.finetune) subclasses it and replaces the pieces that differ:
    `_setup_data`, `_setup_model`, `_micro_batch`, `_loss`, `_train_metrics`, `_evaluate`,
    `_eval_message`, `_write_checkpoint` and `_print_header`."""

    # LoRA fine-tuning turns it off: the routing biases belong to the frozen base weights.
    update_router_bias = True

    def __init__(
        self, cfg: TrainConfig, on_step: Callable[[int, Trainer], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.on_step = on_step
        self.run_dir = Path(cfg.run.out_dir)
        self.info = distributed.init_distributed(cfg.dist, cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = self.info.device
        self._setup_data()
        self._setup_model()
        self.manager = CheckpointManager(self.run_dir, cfg.checkpoint.keep_last)
        self.metrics: MetricsLogger | None = None  # opened by run(), under the run lock
        # per-MoE-layer router entropy summed over the micro-batches since the last log line
        self._entropy_sum: torch.Tensor | None = None
        self._entropy_count = 0

    # ------------------------------------------------------------------ set-up
    def _setup_data(self) -> None:
        cfg = self.cfg
        data_dir = ensure_data(cfg, self.info)
        self.meta = load_metadata(data_dir)
        self.tokenizer: Tokenizer = load_tokenizer(data_dir / TOKENIZER_DIR)
        if self.tokenizer.fingerprint != self.meta["tokenizer"]["fingerprint"]:
            raise DataError(f"{data_dir}: tokenizer/ does not match meta.json; recreate the data")
        self.train_split = ShardedSplit.open(data_dir, "train")
        self.val_split = (
            ShardedSplit.open(data_dir, "val") if "val" in self.meta["splits"] else None
        )

        self.resume_from = find_resume_checkpoint(cfg.run.resume, self.run_dir)
        if self.resume_from is not None:
            ckpt_tok = load_checkpoint_tokenizer(self.resume_from)
            if ckpt_tok.fingerprint != self.tokenizer.fingerprint:
                raise CheckpointError(
                    f"{self.resume_from} was trained with tokenizer "
                    f"{describe_fingerprint(ckpt_tok.fingerprint)} but {data_dir} was made with "
                    f"{describe_fingerprint(self.tokenizer.fingerprint)}: the token ids mean "
                    "different things. Re-tokenize the data with the checkpoint's tokenizer "
                    f"(`ismail data SOURCE --tokenizer {self.resume_from / 'tokenizer'}`) or "
                    "start a new run directory"
                )
            # After the tokenizer check, whose message says more when both apply.
            self._check_same_data()

    def _check_same_data(self) -> None:
        """Refuse to continue this run directory on another data directory than the one its
        train_config.json records: the run's history would silently mix two data sets."""
        try:
            saved = json.loads((self.run_dir / TRAIN_CONFIG_FILE).read_text())["data"]["path"]
        except (OSError, ValueError, KeyError, TypeError):  # no record to compare with
            return
        asked = self.cfg.data.path
        if Path(saved).resolve() != Path(asked).resolve():
            raise ConfigError(
                f"{self.run_dir} was trained on --data.path {saved}, not {asked}: continue it "
                f"with --data.path {saved}, or train on {asked} in a new run directory that "
                f"starts from its checkpoint: --run.out_dir NEW_DIR --run.resume "
                f"{self.resume_from}"
            )

    def _setup_model(self) -> None:
        """The model of the run: new, or the resumed checkpoint's with its trainer state."""
        self._resolve_model_config()
        self._set_batch_geometry()
        torch.manual_seed(self.cfg.run.seed)
        model = Transformer(self.model_cfg)
        model.activation_checkpointing = self.cfg.train.activation_checkpointing
        state = None
        if self.resume_from is not None:
            try:
                state = read_resume_state(self.resume_from)
                model.load_state_dict(load_weights(self.resume_from / WEIGHTS_FILE))
            except CheckpointError as exc:
                hint = self._earlier_checkpoints_hint(self.resume_from)
                raise CheckpointError(f"{exc}{hint}") from exc
        self._place_model(model, state)

    def _resolve_model_config(self) -> None:
        """model_cfg: the requested one, which must equal a resumed checkpoint's, with room
        for the tokenizer's ids."""
        requested = self.cfg.model_config(vocab_size=self.tokenizer.vocab_size)
        self.model_cfg = requested
        if self.resume_from is not None:
            self.model_cfg = load_config(self.resume_from)
            old, new = self.model_cfg.to_dict(), requested.to_dict()
            changed = [f"{k}: {old[k]} -> {new[k]}" for k in old if old[k] != new.get(k)]
            if changed:
                raise ConfigError(
                    f"{self.resume_from} holds a different model ({', '.join(changed)}); "
                    "resume with the same preset and --model flags, or train in a new "
                    "--run.out_dir"
                )
        if self.model_cfg.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size {self.model_cfg.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}; drop --model.vocab_size to use the tokenizer's"
            )

    def _set_batch_geometry(self) -> None:
        """seq_len and grad_accum of a step, and the checks of expert rotation."""
        cfg, info = self.cfg, self.info
        self.seq_len = cfg.train.seq_len or self.model_cfg.max_seq_len
        if self.seq_len > self.model_cfg.max_seq_len:
            raise ConfigError(
                f"train.seq_len {self.seq_len} exceeds the model's max_seq_len "
                f"{self.model_cfg.max_seq_len}; lower --train.seq_len or raise --model.max_seq_len"
            )
        micro_tokens = cfg.train.batch_size * self.seq_len * info.world_size
        self.grad_accum = cfg.train.grad_accum
        if cfg.train.batch_tokens:
            self.grad_accum = max(1, round(cfg.train.batch_tokens / micro_tokens))
        if cfg.train.expert_rotation and info.enabled:
            raise ConfigError(
                "train.expert_rotation is for single-GPU runs; drop it under torchrun"
            )
        if cfg.train.expert_rotation > self.model_cfg.n_routed_experts:
            raise ConfigError(
                f"train.expert_rotation {cfg.train.expert_rotation} exceeds the model's "
                f"{self.model_cfg.n_routed_experts} routed experts"
            )

    def _place_model(self, model: Transformer, state: dict[str, Any] | None) -> None:
        """Move the model to the device and precision, wrap it (DDP/FSDP, compile), build the
        optimizer over its trainable parameters and restore the resume `state` if given."""
        cfg, info = self.cfg, self.info
        self.start_step = int(state["step"]) if state else 0
        self.best_val = float(state.get("best_val_loss", math.inf)) if state else math.inf
        self.tokens_seen = int(state["tokens_seen"]) if state else 0
        self.step = self.start_step  # completed optimizer steps
        self.raw_model = model.to(self.device)
        self.precision = build_precision(cfg.train.precision, self.device)
        if cfg.train.precision == "fp8":
            fp8_converter()(self.raw_model)  # swaps the linear layers in place
        self.flops_per_token = self.raw_model.flops_per_token(self.seq_len)
        self.model = distributed.wrap_model(self.raw_model, info, cfg.dist.strategy)
        # recorded before torch.compile, whose wrapper is no DDP instance (it forwards no_sync)
        self._ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        if cfg.train.compile:
            # an OptimizedModule, which torch's stubs type as a plain callable
            self.model = cast(torch.nn.Module, torch.compile(self.model))
        self.optimizer = build_optimizer(
            self.raw_model, cfg.optim, self.device, sharded=distributed.is_fsdp(self.raw_model)
        )
        if state is not None:
            saved = state.get("optimizer_name")  # absent in checkpoints from before Muon
            if saved is not None and saved != cfg.optim.name:
                raise OptimizerError(
                    f"{self.resume_from} was trained with --optim.name {saved}; resume it with "
                    f"--optim.name {saved} (its optimizer state does not fit {cfg.optim.name})"
                )
            distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
            if self.precision.scaler is not None and state.get("scaler"):
                self.precision.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])

    def _earlier_checkpoints_hint(self, broken: Path) -> str:
        """How to resume from an older checkpoint when the latest one, `broken`, is broken."""
        others = [
            p
            for p in CheckpointManager(self.run_dir, 1).step_dirs()
            if p.resolve() != broken.resolve()
        ]
        if not others:
            return ""
        return f"; resume from an earlier checkpoint with --run.resume {others[-1]}"

    # ------------------------------------------------------------------ pieces of a step
    def _rotate_experts(self, step: int) -> None:
        """Train `expert_rotation` consecutive experts, moving on every rotation_interval steps."""
        k = self.cfg.train.expert_rotation
        if not k:
            return
        n = self.model_cfg.n_routed_experts
        first = (step // self.cfg.train.rotation_interval) * k
        self.raw_model.set_trainable_experts([(first + i) % n for i in range(k)])

    def _micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        """The model's keyword arguments for one micro-batch: token windows as their own
        labels (the model shifts them)."""
        cfg = self.cfg
        ids = training_batch(
            self.train_split,
            cfg.train.batch_size,
            self.seq_len,
            seed=cfg.run.seed,
            step=step,
            micro=micro,
            rank=self.info.rank,
        )
        return {"input_ids": ids, "labels": ids}

    def _count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens a micro-batch holds (for tokens/s and the tokens-seen count)."""
        return batch["input_ids"].numel()

    def _forward_backward(self, step: int) -> tuple[float, list[torch.Tensor]]:
        """Accumulate gradients over grad_accum micro-batches; returns (mean loss, expert load)."""
        info = self.info
        accum = self.grad_accum
        total = torch.zeros((), device=self.device)
        loads: list[torch.Tensor] = []
        self.step_tokens = 0
        for micro in range(accum):
            batch = {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in self._micro_batch(step, micro).items()
            }
            self.step_tokens += self._count_tokens(batch) * info.world_size
            # DDP all-reduces gradients only on the last micro-batch.
            sync = micro == accum - 1 or not self._ddp
            ctx = (
                cast(torch.nn.parallel.DistributedDataParallel, self.model).no_sync()
                if not sync
                else contextlib.nullcontext()
            )
            with ctx, self.precision.autocast():
                out = self.model(**batch)
                loss, shown = self._loss(out, batch)
                loss = loss / accum
            if self.precision.scaler is not None:
                self.precision.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += shown.detach() / accum
            loads = [a + b for a, b in zip(loads, out.expert_load)] if loads else out.expert_load
            self._add_router_entropy(getattr(out, "router_entropy", None))
        distributed.all_reduce_sum(total, info)
        return float(total) / info.world_size, loads

    def _add_router_entropy(self, entropy: list[torch.Tensor] | None) -> None:
        """Add one micro-batch's per-layer router entropy to the interval's sums. They stay
        device tensors, so this costs no host sync; the log line reads them once."""
        if not entropy:
            return
        stacked = torch.stack(entropy).detach()
        self._entropy_sum = stacked if self._entropy_sum is None else self._entropy_sum + stacked
        self._entropy_count += 1

    def _router_entropy_metrics(self) -> dict[str, Any]:
        """{"router_entropy": per-MoE-layer mean entropy (nats) of the routing distributions
        over the micro-batches since the last log line (this rank's)}, then start a new
        interval; {} for a dense model."""
        if self._entropy_sum is None:
            return {}
        mean = (self._entropy_sum / self._entropy_count).tolist()
        self._entropy_sum, self._entropy_count = None, 0
        return {"router_entropy": mean}

    def _loss(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the loss to show and log) of one micro-batch's output."""
        return out.loss, out.lm_loss

    def _train_metrics(self) -> dict[str, Any]:
        """Task metrics of the last step, logged beside the loss (none for pretraining)."""
        return {}

    def _optimizer_step(self) -> float:
        """Clip, step, update the MoE balancing biases; returns the gradient norm."""
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Every rank must apply the same bias update: sum the expert loads first.
        for moe in self.raw_model.moe_layers():
            distributed.all_reduce_sum(moe.load_since_update, self.info)
        self.raw_model.update_expert_bias(enabled=self.update_router_bias)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _evaluate(self) -> Evaluation | None:
        """Validation loss and bits per byte (None without a validation split); the result
        needs `.loss` (for `best`) and `.to_dict()` (for metrics)."""
        if self.val_split is None:
            return None
        cfg = self.cfg
        return evaluate(
            self.model if distributed.is_fsdp(self.model) else self.raw_model,
            self.val_split,
            self.seq_len,
            batch_size=cfg.eval.batch_size,
            max_tokens=cfg.eval.max_tokens or None,
            device=self.device,
            autocast=self.precision.autocast(),
            rank=self.info.rank,
            world_size=self.info.world_size,
            reduce=lambda t: distributed.all_reduce_sum(t, self.info),
        )

    def _save(self, step: int, val: Evaluation | None) -> Path | None:
        is_best = False
        if val is not None and val.loss < self.best_val:
            is_best, self.best_val = True, val.loss
        # Under FSDP every rank takes part in gathering the full state; rank 0 writes.
        state_dict = distributed.full_model_state(self.model)
        optim_state = distributed.full_optimizer_state(self.model, self.optimizer)
        rngs: list[dict[str, Any] | None] = [rng_state()]
        if self.info.enabled:
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        path = None
        if self.info.is_main:
            trainer_state = {
                "step": step,
                "optimizer": optim_state,
                "optimizer_name": self.cfg.optim.name,
                "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
                "rng": rngs,
                "best_val_loss": self.best_val,
                "tokens_seen": self.tokens_seen,
                "data": tokenizer_info(self.tokenizer),
            }
            path = self._write_checkpoint(step, trainer_state, state_dict, is_best)
        distributed.barrier(self.info)
        return path

    def _write_checkpoint(
        self,
        step: int,
        trainer_state: dict[str, Any],
        state_dict: dict[str, torch.Tensor] | None,
        is_best: bool,
        adapter: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint of `step` (main process only); `adapter` writes a LoRA
        adapter (see save_checkpoint)."""
        return self.manager.save(
            step, self.raw_model, self.tokenizer, trainer_state, state_dict, is_best, adapter
        )

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.batch_size * self.grad_accum * self.seq_len * self.info.world_size

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train to cfg.train.steps; the main process holds the run directory's lock."""
        main = self.info.is_main
        with run_dir_lock(self.run_dir) if main else contextlib.nullcontext(False) as exclusive:
            if main:
                self._prepare_run_dir(exclusive)
            self.metrics = MetricsLogger(self.run_dir, self.cfg.log, main, self._resolved())
            return self._train_loop()

    def _resolved(self) -> dict[str, Any]:
        """The resolved configuration: train_config.json, and the W&B run config."""
        return {**self.cfg.to_dict(), "model_config": self.model_cfg.to_dict()}

    def _prepare_run_dir(self, exclusive: bool) -> None:
        """Tidy what an interrupted run left (unfinished checkpoint writes, checkpoints not
        yet pruned), say so, and record the resolved configuration."""
        self._print_header()
        if exclusive:  # only the lock proves that no live writer owns the temporaries
            for name in self.manager.remove_temporaries():
                print(f"  removed {name}: an unfinished checkpoint write", flush=True)
        for path in self.manager.prune(protect=self.resume_from):
            keep = self.cfg.checkpoint.keep_last
            print(f"  removed {path.name}: beyond checkpoint.keep_last={keep}", flush=True)
        atomic_write_json(self.run_dir / TRAIN_CONFIG_FILE, self._resolved())

    def _train_loop(self) -> TrainResult:
        """Steps to cfg.train.steps with logging, evaluation and checkpoints on their
        intervals; an interrupt (Ctrl-C) saves the last completed step."""
        result = TrainResult(self.run_dir, self.start_step, self.resume_from)
        bar = self._progress(self.cfg.train.steps)
        self.model.train()
        try:
            self._run_steps(result, bar)
        except KeyboardInterrupt:
            self._save_interrupted(result, bar)
        except torch.OutOfMemoryError as exc:
            raise TrainError(
                f"out of GPU memory ({exc}). Reduce memory with {MEMORY_KNOBS}"
            ) from exc
        finally:
            if bar is not None:
                bar.close()
            self._logger.close()
        return result

    def _run_steps(self, result: TrainResult, bar) -> None:
        """The loop proper: train step, log, evaluate and save; then the final evaluation and
        checkpoint."""
        cfg = self.cfg
        steps = cfg.train.steps
        peak, _ = peak_flops(self.device, self.precision.compute_dtype)
        speed = _Throughput(self.flops_per_token, self.info.world_size, peak)
        last_val: Evaluation | None = None
        if self.step == 0:  # _log_eval does nothing without held-out data
            last_val = self._log_eval(0, result, bar)
        while self.step < steps:
            done = self._train_step(self.step)
            self.step += 1
            step = self.step
            speed.update(done.tokens_per_s)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{done.loss:.3f}",
                    lr=f"{done.lr:.1e}",
                    tok_s=f"{speed.smoothed:.0f}",
                    mfu=f"{speed.mfu(speed.smoothed):.1%}",
                )
            if step % cfg.log.interval == 0 or step == steps:
                self._log_train(step, done, speed)
            if not math.isfinite(done.loss):
                raise TrainError(
                    f"loss became {done.loss} at step {step}; lower --optim.lr or use "
                    "--train.precision bf16 / fp32"
                )
            last_val = self._evaluate_and_save(step, result, bar, last_val)
            result.step = step
            if self.on_step is not None:
                self.on_step(step, self)
        if self.step > self.start_step or self.manager.latest() is None:
            result.checkpoint = self._save(self.step, self._log_eval(self.step, result, bar))
        else:  # resumed a run that had already finished
            result.checkpoint = self.manager.latest()

    def _train_step(self, step: int) -> _StepResult:
        """Optimizer step `step` (counted from 0): its learning rate, the gradients of
        grad_accum micro-batches, clipping and the update."""
        started = time.perf_counter()
        self._rotate_experts(step)
        lr = lr_at(step, self.cfg.train.steps, self.cfg.optim)
        set_lr(self.optimizer, lr)
        loss, loads = self._forward_backward(step)
        grad_norm = self._optimizer_step()
        self.tokens_seen += self.step_tokens
        tokens_per_s = self.step_tokens / (time.perf_counter() - started)
        return _StepResult(loss, lr, grad_norm, loads, tokens_per_s)

    def _log_train(self, step: int, done: _StepResult, speed: _Throughput) -> None:
        """The metrics row of a training step."""
        self._logger.log(
            "train",
            step,
            {
                "loss": done.loss,
                "lr": done.lr,
                "grad_norm": done.grad_norm,
                "tokens_per_s": done.tokens_per_s,
                "mfu": speed.mfu(done.tokens_per_s),
                "tokens": self.tokens_seen,
                "expert_load": [x.tolist() for x in done.expert_load],
                **self._router_entropy_metrics(),
                **self._train_metrics(),
            },
        )

    def _evaluate_and_save(
        self, step: int, result: TrainResult, bar, last_val: Evaluation | None
    ) -> Evaluation | None:
        """Evaluate and checkpoint where their intervals fall before the last step (which
        gets both after the loop); returns the latest evaluation."""
        cfg = self.cfg
        if step < cfg.train.steps and cfg.eval.interval and step % cfg.eval.interval == 0:
            last_val = self._log_eval(step, result, bar)
        if (
            step < cfg.train.steps
            and cfg.checkpoint.interval
            and step % cfg.checkpoint.interval == 0
        ):
            result.checkpoint = self._save(step, last_val)
        return last_val

    def _save_interrupted(self, result: TrainResult, bar) -> None:
        """Checkpoint the last completed step after an interrupt."""
        # The step in flight is dropped: its gradients and expert loads are discarded, so
        # the checkpoint is exactly the state after `self.step` completed steps.
        self.optimizer.zero_grad(set_to_none=True)
        for moe in self.raw_model.moe_layers():
            moe.load_since_update.zero_()
        if bar is not None:
            bar.close()
        if self.info.is_main:
            print(f"\ninterrupted: saving a checkpoint at step {self.step}", flush=True)
        result.checkpoint = self._save(self.step, None)
        result.step, result.interrupted = self.step, True

    @property
    def _logger(self) -> MetricsLogger:
        """The metrics logger that run() opened."""
        assert self.metrics is not None, "run() opens the metrics logger"
        return self.metrics

    def _log_eval(self, step: int, result: TrainResult, bar) -> Any:
        val = self._evaluate()
        if val is None:
            return None
        row = val.to_dict()
        self._logger.log("eval", step, row)
        result.evals.append({"step": step, **row})
        if self.info.is_main:
            (bar.write if bar is not None else print)(self._eval_message(step, val))
        return val

    def _eval_message(self, step: int, val: Any) -> str:
        """The line printed after an evaluation."""
        return (
            f"step {step:>5}  val loss {val.loss:.3f}  ppl {val.perplexity:.1f}  "
            f"bits/byte {val.bits_per_byte:.3f}"
        )

    def _progress(self, steps: int):
        if not (self.info.is_main and self.cfg.log.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=steps, initial=self.start_step, desc="training", unit="step", dynamic_ncols=True
        )

    def _print_header(self) -> None:
        m = self.raw_model
        where = (
            f"resuming from {self.resume_from} at step {self.start_step}"
            if self.resume_from
            else "new run"
        )
        tok = self.tokenizer
        print(
            f"ismail train: {self.cfg.preset} model, {m.num_parameters() / 1e6:.1f}M parameters "
            f"({m.num_parameters(active_only=True) / 1e6:.1f}M active), {tok.kind} tokenizer "
            f"({tok.vocab_size} tokens), {self.train_split.num_tokens:,} training tokens\n"
            f"  {self.cfg.train.steps} steps x {self.tokens_per_step:,} tokens on {self.device} "
            f"({self.info.world_size} process(es), {self.precision.name}); {where}\n"
            f"  run directory: {self.run_dir}",
            flush=True,
        )


def train(
    cfg: TrainConfig,
    on_step: Callable[[int, Trainer], None] | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> TrainResult:
    """Run training to `cfg.train.steps` (resuming when the run directory has a checkpoint)."""
    trainer = trainer_cls(cfg, on_step)
    info = trainer.info
    try:
        return trainer.run()
    finally:
        # Free the model first: FSDP and DDP hold the process group, and a gloo group that
        # outlives destroy_process_group is torn down after the interpreter, where its threads
        # can abort the process ("terminate called without an active exception").
        del trainer
        gc.collect()
        distributed.shutdown(info)
