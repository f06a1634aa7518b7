"""Inference key/value caches with row slots for continuous batching.

Each cache holds one tensor per kind with a leading layer axis; a forward call writes its new
tokens at (slot, position) and reads back positions [0, kv_len) of its slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig


@dataclass
class CacheView:
    """Where one cached forward call writes and what it may attend to.

    slots: (B,) cache rows; positions: (B, T) absolute positions of the new tokens;
    kv_len: number of cache positions read back; mask: (B, 1, T, kv_len) True = may attend.
    """

    slots: torch.Tensor
    positions: torch.Tensor
    kv_len: int
    mask: torch.Tensor


class _Cache:
    """Shared bookkeeping: the cache tensors have shape (n_layers, max_batch, max_len, ...)."""

    max_batch: int
    max_len: int

    def tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def bytes_per_token(self) -> int:
        """Bytes of cache one token occupies, summed over layers."""
        return sum(t.element_size() * t[0, 0, 0].numel() * t.shape[0] for t in self.tensors())

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.tensors())


class MLACache(_Cache):
    """Multi-head latent attention cache: only the normed latent and the shared rope key.

    latent: (n_layers, max_batch, max_len, kv_lora_rank)
    rope_key: (n_layers, max_batch, max_len, qk_rope_head_dim), already rotated.
    """

    def __init__(self, cfg: ModelConfig, max_batch: int, max_len: int, device, dtype):
        self.max_batch, self.max_len = max_batch, max_len
        shape = (cfg.n_layers, max_batch, max_len)
        self.latent = torch.zeros(*shape, cfg.kv_lora_rank, device=device, dtype=dtype)
        self.rope_key = torch.zeros(*shape, cfg.qk_rope_head_dim, device=device, dtype=dtype)

    def tensors(self) -> list[torch.Tensor]:
        return [self.latent, self.rope_key]


class KVCache(_Cache):
    """Standard attention cache of keys and values per key/value head.

    keys, values: (n_layers, max_batch, max_len, n_kv_heads, head_dim); keys already rotated.
    """

    def __init__(self, cfg: ModelConfig, max_batch: int, max_len: int, device, dtype):
        self.max_batch, self.max_len = max_batch, max_len
        shape = (cfg.n_layers, max_batch, max_len, cfg.kv_heads, cfg.attn_head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values]


def new_cache(cfg: ModelConfig, max_batch: int, max_len: int, device=None, dtype=None) -> _Cache:
    """An empty cache for cfg's attention kind (MLACache or KVCache)."""
    if max_batch <= 0 or max_len <= 0:
        raise ValueError(f"cache needs max_batch > 0 and max_len > 0, got {max_batch}, {max_len}")
    dtype = dtype or torch.get_default_dtype()
    kind = MLACache if cfg.attention == "mla" else KVCache
    return kind(cfg, max_batch, max_len, device, dtype)


def make_view(
    cache: _Cache,
    batch: int,
    seq_len: int,
    start_pos: int | torch.Tensor,
    slots: torch.Tensor | None,
    sliding_window: int,
    device: torch.device,
) -> CacheView:
    """Validate start_pos/slots of a cached call and build its positions and attention mask."""
    if isinstance(start_pos, int):
        start = torch.full((batch,), start_pos, dtype=torch.long, device=device)
    else:
        start = torch.as_tensor(start_pos, dtype=torch.long, device=device).reshape(-1)
        if start.numel() == 1:
            start = start.expand(batch)
        if start.shape != (batch,):
            raise ValueError(
                f"start_pos must be an int or have shape ({batch},), got {start.shape}"
            )
    if slots is None:
        slots = torch.arange(batch, device=device)
    else:
        slots = torch.as_tensor(slots, dtype=torch.long, device=device).reshape(-1)
        if slots.shape != (batch,):
            raise ValueError(f"slots must have shape ({batch},), got {tuple(slots.shape)}")
    # one device-to-host transfer for all four bounds (each would be a GPU sync)
    lo_start, hi_start, lo_slot, hi_slot = torch.stack(
        [start.min(), start.max(), slots.min(), slots.max()]
    ).tolist()
    if lo_start < 0:
        raise ValueError("start_pos must be >= 0")
    kv_len = hi_start + seq_len
    if kv_len > cache.max_len:
        raise ValueError(
            f"cache holds {cache.max_len} positions but this call needs {kv_len}; "
            "create the cache with a larger max_len"
        )
    if lo_slot < 0 or hi_slot >= cache.max_batch:
        raise ValueError(f"slots must be in [0, {cache.max_batch}); create a larger cache")
    positions = start[:, None] + torch.arange(seq_len, device=device)  # (B, T)
    key_pos = torch.arange(kv_len, device=device)
    mask = key_pos[None, None, :] <= positions[:, :, None]  # (B, T, S) causal per row
    if sliding_window:
        mask &= key_pos[None, None, :] > positions[:, :, None] - sliding_window
    return CacheView(slots=slots, positions=positions, kv_len=kv_len, mask=mask[:, None])
