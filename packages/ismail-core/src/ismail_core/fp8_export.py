"""`ismail export --format fp8`: a copy of a checkpoint with FP8 Linear weights.

Apart from `ismail_core.fp8` because it needs both sides: `checkpoint` (load and save) imports
`fp8` (to load FP8 weights), and this module imports both, so neither imports the other back.
"""

from __future__ import annotations

from pathlib import Path

from ismail_core.checkpoint import CheckpointError, load_model, save_checkpoint
from ismail_core.fp8 import fp8_config, is_fp8_state_dict, require_kernels


def quantize_checkpoint(src: str | Path, out: str | Path) -> Path:
    """Write a copy of checkpoint `src` at `out` with FP8 Linear weights (atomically).

    Embeddings, norms, the MoE router and the LM head keep their precision (`fp8_config`).
    The copy holds no trainer state: it is for inference.
    """
    kernels = require_kernels("ismail export --format fp8")
    model, tokenizer = load_model(src)
    if is_fp8_state_dict(model.state_dict()):
        raise CheckpointError(f"{src} already holds FP8 weights; export its source instead")
    kernels.quantize_model(model, fp8_config())
    return save_checkpoint(out, model, tokenizer)
