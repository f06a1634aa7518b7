"""ismail-core: a Turkish-first DeepSeek-style language model, its data pipeline and trainer.

    from ismail_core import ModelConfig, Transformer, load_model, load_tokenizer

Names are imported lazily so `ismail --help` and the tokenizer do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "ismail_core.config",
    "Transformer": "ismail_core.model",
    "load_model": "ismail_core.checkpoint",
    "save_checkpoint": "ismail_core.checkpoint",
    "load_tokenizer": "ismail_core.tokenizer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ismail_core' has no attribute {name!r}")
