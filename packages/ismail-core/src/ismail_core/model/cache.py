"""The paged inference cache: fixed-size blocks of cache positions, addressed by block tables.

A cache holds one tensor per kind with shape (n_layers, num_blocks + 1, block_size, ...); the
extra last block is scratch that padding positions write into. A sequence's positions live in
the blocks of its block table (position p in block table[p // block_size] at offset
p % block_size), so sequences take memory block by block as they grow, and sequences with a
common prefix can share its blocks (the bookkeeping is `block_manager.BlockManager`).

For multi-head latent attention a block holds only the normed latent and the rotated shared
rope key, and it stays latent: decoding attends in the latent space (MLA._absorbed).

For latent-vector attention (attention="latent") a block holds the unrotated keys and the
values of its positions, and the cache also keeps, per block rather than per position, the
latent memory state at the block's last position (memory_lse, memory_mean): a call rebuilds
the memory from the previous block's end state plus its own block's keys/values. The state is
a function of the prefix alone, so blocks shared by prefix caching share it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ModelConfig
from .latent import LatentView, latent_view


@dataclass
class CacheView:
    """Where one cached forward call writes and what it reads.

    positions: (B, T) absolute positions of the new tokens; write: (B, T) flat cache slots
    (block * block_size + offset) they are stored at; read: (B, S) flat slots of positions
    [0, kv_len) of each row; mask: (B, 1, T, S), True = may attend.
    """

    positions: torch.Tensor
    write: torch.Tensor
    read: torch.Tensor
    kv_len: int
    mask: torch.Tensor
    latent: LatentView | None = None  # latent-vector attention's reads and writes
    _biases: dict = field(default_factory=dict, repr=False, compare=False)

    def head_folded_bias(self, heads: int, dtype: torch.dtype) -> torch.Tensor:
        """The mask as an additive bias (0 where a query may attend, -inf elsewhere) of shape
        (B, heads * T, S), query rows head-major (row h * T + t): for attention whose keys
        all heads share (MLA in the latent space), where folding the heads into the query
        rows makes one GEMM per row. Built on first use and shared by every layer."""
        key = (heads, dtype)
        if key not in self._biases:
            B, _, T, S = self.mask.shape
            bias = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            bias.masked_fill_(~self.mask, float("-inf"))
            self._biases[key] = bias.expand(B, heads, T, S).reshape(B, heads * T, S)
        return self._biases[key]


class PagedCache:
    """Cache tensors of shape (n_layers, num_blocks + 1, block_size, ...), one per kind:

    MLA: latent (kv_lora_rank) and rope_key (qk_rope_head_dim, already rotated);
    other attention: keys and values (n_kv_heads, head_dim; keys already rotated, except for
    latent-vector attention, whose memory reads them unrotated). Latent-vector attention also
    has per-block memory states (n_layers, num_blocks + 1, n_kv_heads, n_latents[, head_dim])
    in float32: memory_lse (log of the softmax denominators) and memory_mean (the memory).
    """

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device, dtype):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.is_latent = cfg.attention == "mla"
        shape = (cfg.n_layers, num_blocks + 1, block_size)
        if self.is_latent:
            self.latent = torch.zeros(*shape, cfg.kv_lora_rank, device=device, dtype=dtype)
            self.rope_key = torch.zeros(*shape, cfg.qk_rope_head_dim, device=device, dtype=dtype)
        else:
            kv = (*shape, cfg.kv_heads, cfg.attn_head_dim)
            self.keys = torch.zeros(kv, device=device, dtype=dtype)
            self.values = torch.zeros(kv, device=device, dtype=dtype)
        self.window = cfg.sliding_window
        self.has_memory = cfg.attention == "latent"
        if self.has_memory:
            state = (cfg.n_layers, num_blocks + 1, cfg.kv_heads, cfg.n_latents)
            self.memory_lse = torch.zeros(state, device=device, dtype=torch.float32)
            self.memory_mean = torch.zeros(
                *state, cfg.attn_head_dim, device=device, dtype=torch.float32
            )

    @property
    def scratch_block(self) -> int:
        """The block padding positions write into (never part of a sequence)."""
        return self.num_blocks

    def tensors(self) -> list[torch.Tensor]:
        return [self.latent, self.rope_key] if self.is_latent else [self.keys, self.values]

    def _token_bytes(self) -> int:
        """Bytes of the per-position tensors one token occupies, summed over layers."""
        return sum(t.element_size() * t[0, 0, 0].numel() * t.shape[0] for t in self.tensors())

    def state_bytes_per_block(self) -> int:
        """Bytes of per-block memory state (latent-vector attention; 0 otherwise), all layers."""
        if not self.has_memory:
            return 0
        states = (self.memory_lse, self.memory_mean)
        return sum(t.element_size() * t[0, 0].numel() * t.shape[0] for t in states)

    def bytes_per_token(self) -> int:
        """Bytes of cache one token occupies, summed over layers (with latent-vector attention
        including its share of the per-block memory state, rounded up)."""
        return self._token_bytes() + -(-self.state_bytes_per_block() // self.block_size)

    def nbytes(self) -> int:
        """Bytes of the blocks sequences can use (the scratch block not counted)."""
        per_block = self._token_bytes() * self.block_size + self.state_bytes_per_block()
        return per_block * self.num_blocks


def new_cache(
    cfg: ModelConfig, num_blocks: int, block_size: int = 16, device=None, dtype=None
) -> PagedCache:
    """An empty paged cache of `num_blocks` blocks of `block_size` positions for cfg's model."""
    if num_blocks <= 0 or block_size <= 0:
        raise ValueError(
            f"cache needs num_blocks > 0 and block_size > 0, got {num_blocks}, {block_size}"
        )
    return PagedCache(cfg, num_blocks, block_size, device, dtype or torch.get_default_dtype())


def blocks_for(n_positions: int, block_size: int) -> int:
    """Blocks needed to hold n_positions."""
    return -(-n_positions // block_size)


def row_block_tables(batch: int, n_positions: int, block_size: int, device=None) -> torch.Tensor:
    """Block tables (batch, W) giving each row its own consecutive blocks for n_positions, in a
    cache of batch * W blocks: for callers that keep fixed rows (benchmarks, tests)."""
    width = blocks_for(n_positions, block_size)
    return torch.arange(batch * width, device=device).view(batch, width)


def make_view(
    cache: PagedCache,
    batch: int,
    seq_len: int,
    start_pos: int | torch.Tensor,
    block_tables: torch.Tensor | None,
    sliding_window: int,
    device: torch.device,
) -> CacheView:
    """Validate start_pos/block_tables of a cached call; build its slots and attention mask.

    block_tables (B, W) holds each row's block ids in position order; W * block_size must
    cover every position the call writes (pad a short table with `cache.scratch_block`).
    """
    start = _start_positions(start_pos, batch, device)
    if block_tables is None:
        raise ValueError("a cached call needs block_tables (B, blocks) naming each row's blocks")
    tables = torch.as_tensor(block_tables, dtype=torch.long, device=device)
    if tables.ndim != 2 or tables.shape[0] != batch:
        raise ValueError(f"block_tables must have shape ({batch}, blocks), got {tables.shape}")
    # one device-to-host transfer for all four bounds (each would be a GPU sync)
    lo_start, hi_start, lo_block, hi_block = torch.stack(
        [start.min(), start.max(), tables.min(), tables.max()]
    ).tolist()
    if lo_start < 0:
        raise ValueError("start_pos must be >= 0")
    if lo_block < 0 or hi_block > cache.num_blocks:
        raise ValueError(f"block ids must be in [0, {cache.num_blocks}]; got {hi_block}")
    kv_len = hi_start + seq_len
    size = cache.block_size
    if kv_len > tables.shape[1] * size:
        raise ValueError(
            f"this call reaches position {kv_len - 1} but the block tables cover "
            f"{tables.shape[1] * size} positions; give each row more blocks"
        )
    positions = start[:, None] + torch.arange(seq_len, device=device)  # (B, T)
    write = tables.gather(1, positions // size) * size + positions % size
    key_pos = torch.arange(kv_len, device=device)
    read = tables[:, key_pos // size] * size + key_pos % size  # (B, S)
    mask = key_pos[None, None, :] <= positions[:, :, None]  # (B, T, S) causal per row
    if sliding_window:
        mask &= key_pos[None, None, :] > positions[:, :, None] - sliding_window
    latent = None
    if cache.has_memory:
        latent = latent_view(tables, start, seq_len, size, cache.window, cache.scratch_block)
    return CacheView(
        positions=positions,
        write=write,
        read=read,
        kv_len=kv_len,
        mask=mask[:, None],
        latent=latent,
    )


def _start_positions(start_pos: int | torch.Tensor, batch: int, device) -> torch.Tensor:
    """start_pos (an int, a one-element or a (batch,) tensor) as a (batch,) LongTensor."""
    if isinstance(start_pos, int):
        return torch.full((batch,), start_pos, dtype=torch.long, device=device)
    start = torch.as_tensor(start_pos, dtype=torch.long, device=device).reshape(-1)
    if start.numel() == 1:
        start = start.expand(batch)
    if start.shape != (batch,):
        raise ValueError(f"start_pos must be an int or have shape ({batch},), got {start.shape}")
    return start
