"""Metrics: JSONL in the run directory always; TensorBoard and Weights & Biases when asked;
a progress bar; model FLOPs utilisation (MFU)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ismail_core.layout import METRICS_FILE, TENSORBOARD_DIR
from ismail_core.train.config import ConfigError, LogSection

# Dense bf16 peak FLOP/s of common GPUs (vendor figures), for MFU as nanoGPT reports it.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
    "3090": 71e12,
    "T4": 65e12,
}


def synchronize(device: torch.device) -> None:
    """Wait until `device` has run the work queued on it: GPUs (CUDA, MPS) run kernels
    asynchronously, so a timer read without this measures only their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for MFU.

    GPUs use the vendor's dense bf16 peak; elsewhere the peak is measured as the best of a few
    1024^3 matmuls in the training dtype, so CPU MFU means "share of this machine's matmul
    throughput" (and reads high when other jobs slowed the measurement).
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops, f"{name} bf16 peak"
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPUs emulate fp16 matmuls: seconds per call, no useful peak
    n = 1024
    # Not torch.randn: drawing from the global generator would change a resumed run's noise.
    a = torch.full((n, n), 0.5, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        start = time.perf_counter()
        a @ a
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best, f"measured {dtype} matmul"


class MetricsLogger:
    """Writes metric rows to OUT_DIR/metrics.jsonl (and TensorBoard / W&B); main process only."""

    def __init__(self, run_dir: Path, cfg: LogSection, enabled: bool, config: dict) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / METRICS_FILE
        dropped = drop_partial_line(path)
        if dropped:  # printed under the trainer's header, like its other tidying lines
            print(f"  dropped a partial last line of {path} ({dropped} bytes): a write cut short")
        # Appending keeps the history of a resumed run in one file.
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "log.tensorboard needs tensorboard: install ismail-core[tensorboard]"
                ) from exc
            self.tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ConfigError(
                    "log.wandb needs the wandb package: install ismail-core[wandb]"
                ) from exc
            self.wandb = wandb.init(
                project=cfg.wandb_project, mode=cfg.wandb_mode, dir=str(run_dir), config=config
            )

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record one row: kind is "train" or "eval"; list values (expert load) are kept whole."""
        if self.file is None:  # not enabled (not the main process)
            return
        row = {"kind": kind, "step": step, "time": time.time(), **values}
        self.file.write(json.dumps(_finite_or_null(row), allow_nan=False) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in values.items() if isinstance(v, int | float)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"{kind}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _finite_or_null(value: Any) -> Any:
    """`value` with inf and nan floats (a diverged loss, an fp16 overflow's grad norm) as None:
    strict JSON has no Infinity or NaN, and other readers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def drop_partial_line(path: Path) -> int:
    """Cut a last line without a newline (a write cut short by a kill) off `path`, so the
    next record starts on its own line; returns the bytes dropped."""
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        keep, end = 0, size
        while end > 0:  # search backwards: the file can be large, the tail is short
            start = max(0, end - 65536)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        if keep < size:
            f.truncate(keep)
    return size - keep


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl; rows re-logged after a resume replace older ones.
    Top-level nulls (values that were inf or nan) read back as NaN, so rows stay numeric."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory?")
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        row = {k: math.nan if v is None else v for k, v in row.items()}
        rows[(row["kind"], row["step"])] = row
    return sorted(rows.values(), key=lambda r: (r["step"], r["kind"]))
