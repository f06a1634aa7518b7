"""Constants of the FP8 format every backend shares (float8_e4m3fn with block scales)."""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
# Largest finite float8_e4m3fn value: quantized values saturate here (the format has no inf).
FP8_MAX = 448.0
# Floor on a block's amax, as DeepSeek-V3 uses: an all-zero block gets a tiny finite scale
# instead of 0 (which would make x / scale NaN).
AMAX_EPS = 1e-4
DEFAULT_BLOCK_SIZE = 128
# The only alternative scale format: power-of-two scales (an 8-bit exponent, no mantissa),
# which DeepSeek-V3.1 and later use so that scales multiply exactly.
SCALE_FORMATS = (None, "ue8m0")
