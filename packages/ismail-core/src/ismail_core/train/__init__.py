"""The trainer, split into components: config, optimizer, lr_schedule, batches, precision,
resume, metrics, distributed, and the loop in trainer."""

from ismail_core.train.config import ConfigError, TrainConfig, build_config
from ismail_core.train.trainer import Trainer, TrainError, TrainResult, train

__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "Trainer",
    "build_config",
    "train",
]
