"""A training run's checkpoint series and resume: step directories, `latest` and `best` links,
pruning, the run directory's lock, RNG and trainer state. (What one checkpoint directory holds,
and loading a model from it, is `ismail_core.checkpoint`.)

    OUT_DIR/checkpoints/step_00000100/   (config.json, model.safetensors, tokenizer/, ...)
    OUT_DIR/checkpoints/latest -> step_00000100
    OUT_DIR/checkpoints/best   -> step_00000050   (lowest validation loss)

Each checkpoint is written atomically before the links move, and old ones are deleted only
after that, so a crash at any point leaves the previous good checkpoint reachable. What a crash
can leave behind (an unfinished `.step_*.tmp-*` write, checkpoints not yet pruned) is tidied
when the next run in the directory starts, under the run directory's lock (`RUN/.train.lock`).
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ismail_core.atomic import atomic_symlink
from ismail_core.checkpoint import (
    CheckpointError,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from ismail_core.layout import (
    BEST,
    CHECKPOINTS_DIR,
    LATEST,
    RUN_LOCK_FILE,
    STEP_PREFIX,
    TRAINER_STATE_FILE,
)
from ismail_core.tokenizer import Tokenizer

# Temporaries of ismail_core.atomic in checkpoints/: `.step_*.tmp-*` (atomic_dir) and
# `.latest.tmp-PID` / `.best.tmp-PID` (atomic_symlink). Not `.step_*.old-PID` (replace_dir):
# a crash can leave the only copy of a checkpoint there.
TEMPORARY_GLOB = ".*.tmp-*"


def rng_state() -> dict[str, Any]:
    """Every random state that training consumes (router noise, dropout, ...)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():  # Apple's GPU draws from a generator of its own
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


class CheckpointManager:
    """Saves and finds the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def step_dirs(self) -> list[Path]:
        """Complete step checkpoints, oldest first (temporary directories start with '.')."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob(f"{STEP_PREFIX}*") if p.is_dir())

    def latest(self) -> Path | None:
        link = self.dir / LATEST
        return link.resolve() if link.exists() else None

    def best(self) -> Path | None:
        link = self.dir / BEST
        return link.resolve() if link.exists() else None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        trainer_state: dict[str, Any],
        state_dict: dict[str, torch.Tensor] | None = None,
        is_best: bool = False,
        adapter: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write step `step`, move `latest` (and `best`), then prune old checkpoints.
        `adapter` writes a LoRA adapter (see save_checkpoint)."""
        name = f"{STEP_PREFIX}{step:08d}"
        path = save_checkpoint(
            self.dir / name, model, tokenizer, trainer_state, state_dict=state_dict, adapter=adapter
        )
        # `best` before `latest`: a run killed right after `latest` moved resumes after this
        # step, so nothing would point `best` here later.
        if is_best or self.best() is None:
            atomic_symlink(name, self.dir / BEST)
        atomic_symlink(name, self.dir / LATEST)
        self.prune()
        return path

    def prune(self, protect: Path | None = None) -> list[Path]:
        """Delete checkpoints beyond the last `keep_last`, keeping `latest`, `best` and
        `protect` (the one a run resumes from); returns the deleted directories.

        Called after every save and when a run starts, so a run killed between moving
        `latest` and pruning is tidied by the next one.
        """
        keep = set(self.step_dirs()[-self.keep_last :])
        keep.update(p for p in (self.latest(), self.best(), protect) if p is not None)
        kept = {k.resolve() for k in keep}
        removed = [path for path in self.step_dirs() if path.resolve() not in kept]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def remove_temporaries(self) -> list[str]:
        """Delete the temporaries of checkpoint writes that never finished; returns their
        names. Only safe while holding the run lock: no other process is writing them."""
        removed = []
        for path in sorted(self.dir.glob(TEMPORARY_GLOB)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `run_dir` while this process trains into it.

    Two trainers in one run directory would overwrite each other's checkpoints, links and
    metrics, so a second one gets a CheckpointError naming the first one's PID. Holding the lock
    also proves that temporaries left in checkpoints/ belong to no live writer. The kernel drops
    the lock when its process dies, so a killed run never leaves it held. Yields False where
    file locks are unavailable (no fcntl, or a filesystem without flock).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fcntl: ModuleType | None
    try:
        fcntl = importlib.import_module("fcntl")
    except ImportError:  # Windows
        fcntl = None
    with open(run_dir / RUN_LOCK_FILE, "a+", encoding="utf-8") as f:
        locked = False
        try:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
        except BlockingIOError:
            f.seek(0)
            raise CheckpointError(
                f"another `ismail train` (pid {f.read().strip() or '?'}) is training into "
                f"{run_dir}; wait for it to finish or choose another --run.out_dir"
            ) from None
        except OSError:  # e.g. a network filesystem without locks: train, but tidy nothing
            pass
        if locked:
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield locked


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: `resume` is 'auto', 'never' or a checkpoint path."""
    manager_dir = run_dir / CHECKPOINTS_DIR
    if resume == "never":
        if (manager_dir / LATEST).exists():
            raise CheckpointError(
                f"{run_dir} already holds checkpoints and run.resume=never: choose another "
                "--run.out_dir or resume with --run.resume auto"
            )
        return None
    if resume == "auto":
        if not (manager_dir / LATEST).exists():
            return None
        return resolve_checkpoint(run_dir)
    return resolve_checkpoint(resume)


def read_resume_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of `checkpoint`, with a clear error when it has none."""
    state = load_trainer_state(checkpoint)
    if state is None:
        raise CheckpointError(
            f"{checkpoint} has no {TRAINER_STATE_FILE}, so training cannot resume from it exactly; "
            "start a new run (fine-tuning from weights alone is not supported yet)"
        )
    return state
