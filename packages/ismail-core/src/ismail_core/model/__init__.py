"""The ismail model: MLA / MHA / GQA attention, RoPE with YaRN, DeepSeek-V3 mixture of experts."""

from ..config import ModelConfig
from .cache import KVCache, MLACache
from .transformer import ModelOutput, Transformer

__all__ = ["KVCache", "MLACache", "ModelConfig", "ModelOutput", "Transformer"]
