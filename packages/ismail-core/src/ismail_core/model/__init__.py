"""The ismail model: MLA / MHA / GQA attention, RoPE with YaRN, DeepSeek-V3 mixture of experts."""

from ..config import ModelConfig
from .cache import PagedCache
from .transformer import ModelOutput, Transformer

__all__ = ["ModelConfig", "ModelOutput", "PagedCache", "Transformer"]
