"""ismail-kernels: block-scaled FP8 (float8_e4m3fn) kernels in Triton with PyTorch references.

Functional ops (`act_quant`, `weight_quant`, `weight_dequant`, `fp8_gemm`) dispatch to Triton on
FP8-capable GPUs, to Triton's CPU interpreter under TRITON_INTERPRET=1, and to the PyTorch
reference otherwise. Modules: `FP8Linear` (inference), `FP8TrainLinear` (FP8 forward,
straight-through backward); model conversion: `quantize_model`, `convert_to_fp8_training`,
`load_fp8_state_dict`.
"""

from .convert import (
    DEFAULT_SKIP_TYPES,
    FP8Config,
    convert_to_fp8_training,
    fp8_quantization_config,
    is_fp8_state_dict,
    load_fp8_state_dict,
    quantize_model,
)
from .formats import AMAX_EPS, DEFAULT_BLOCK_SIZE, FP8_DTYPE, FP8_MAX
from .linear import FP8Linear, FP8TrainLinear
from .ops import (
    BACKENDS,
    act_quant,
    fp8_gemm,
    resolve_backend,
    triton_available,
    weight_dequant,
    weight_quant,
)

__version__ = "0.1.0"

__all__ = [
    "AMAX_EPS",
    "BACKENDS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SKIP_TYPES",
    "FP8Config",
    "FP8Linear",
    "FP8TrainLinear",
    "FP8_DTYPE",
    "FP8_MAX",
    "act_quant",
    "convert_to_fp8_training",
    "fp8_gemm",
    "fp8_quantization_config",
    "is_fp8_state_dict",
    "load_fp8_state_dict",
    "quantize_model",
    "resolve_backend",
    "triton_available",
    "weight_dequant",
    "weight_quant",
]
