"""Attention layers: Multi-Head Latent Attention (DeepSeek-V3), standard MHA/GQA and latent-vector
attention (a sliding window plus a causal latent memory, model/latent.py).

Both take x (B, T, dim), the rope cos/sin of the tokens' positions, and either a training-time
mask (None = plain causal) or a cache plus CacheView for incremental decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cache import CacheView, PagedCache
from .latent import memory_all, memory_at, window_attention
from .norm import RMSNorm
from .rope import RotaryEmbedding, apply_rope, yarn_mscale

Rope = tuple[torch.Tensor, torch.Tensor] | None


def _sdpa(q, k, v, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention over (B, T, H, D) queries and (B, S, H, D) keys/values -> (B, T, H, Dv);
    mask None means causal. Heads-first copies are made explicitly: SDPA's CPU kernels run
    ~20% faster on contiguous (B, H, T, D) inputs than on transposed views."""
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale
    )
    return out.transpose(1, 2)


def _store(blocks: torch.Tensor, new: torch.Tensor, view: CacheView) -> torch.Tensor:
    """Write `new` (B, T, ...) at the view's slots of one layer's cache blocks
    (num_blocks + 1, block_size, ...); return the blocks flattened to slots (slots, ...)."""
    flat = blocks.view(-1, *blocks.shape[2:])
    flat[view.write] = new.to(flat.dtype)
    return flat


def _store_and_read(blocks: torch.Tensor, new: torch.Tensor, view: CacheView) -> torch.Tensor:
    """_store, then return the rows' positions [0, kv_len), (B, S, ...)."""
    return _store(blocks, new, view)[view.read]


class MLA(nn.Module):
    """Multi-Head Latent Attention.

    q = wq(x) or wq_b(q_norm(wq_a(x))); wkv_a(x) = [latent (kv_lora_rank), k_pe (qk_rope_head_dim)];
    wkv_b(kv_norm(latent)) = per-head [k_nope, v]; the rope key k_pe is shared by all heads.
    Training runs SDPA on decompressed keys/values. Cached calls store only the normed latent
    and the rotated k_pe and attend with wkv_b absorbed into the query and the output.
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_lora_rank = cfg.kv_lora_rank
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.v_head_dim = cfg.v_head_dim
        qk_head_dim = cfg.qk_head_dim
        if self.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank)
            self.wq_b = nn.Linear(cfg.q_lora_rank, cfg.n_heads * qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank)
        self.wkv_b = nn.Linear(
            cfg.kv_lora_rank, cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False
        )
        self.wo = nn.Linear(cfg.n_heads * cfg.v_head_dim, cfg.dim, bias=False)
        self.softmax_scale = qk_head_dim**-0.5 * yarn_mscale(cfg.rope_factor, cfg.mscale) ** 2

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None = None,
        cache: PagedCache | None = None,
        view: CacheView | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.n_heads
        q = self.wq(x) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(B, T, H, -1)
        q_nope, q_pe = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        assert rope is not None, "mla needs pos_emb='rope'"  # ModelConfig.validate checks
        cos, sin = rope
        q_pe = apply_rope(q_pe, cos, sin)
        latent, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        latent = self.kv_norm(latent)  # (B, T, kv_lora_rank)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin).squeeze(2)  # (B, T, rope)
        if cache is None:
            out = self._dense(q_nope, q_pe, latent, k_pe, mask)
        else:
            assert view is not None, "a cached call needs the cache's view"
            # store only the normed latent and the rotated shared key, then read the rows back
            latent = _store_and_read(cache.latent[self.layer_id], latent, view).to(x.dtype)
            k_pe = _store_and_read(cache.rope_key[self.layer_id], k_pe, view).to(x.dtype)
            if self._absorbing_is_cheaper(T):
                out = self._absorbed(q_nope, q_pe, latent, k_pe, view)
            else:
                out = self._dense(q_nope, q_pe, latent, k_pe, view.mask)
        return self.wo(out.reshape(B, T, H * self.v_head_dim))

    def _absorbing_is_cheaper(self, T: int) -> bool:
        """Whether T new tokens over a cache of S positions cost fewer FLOPs absorbed
        (~ T S H (2 r + rope)) than decompressed (~ S H r (nope + v) + T S H (qk + v)):
        T (2 r - nope - v) < r (nope + v), whatever S is. Decode steps always absorb; so do the
        short chunks a prompt adds after a long cached prefix (a chat turn)."""
        r, nope_v = self.kv_lora_rank, self.qk_nope_head_dim + self.v_head_dim
        return T == 1 or T * (2 * r - nope_v) < r * nope_v

    def _dense(self, q_nope, q_pe, latent, k_pe, mask) -> torch.Tensor:
        """Decompress keys/values of latent (B, S, r) and run SDPA; mask None means causal."""
        B, S, _ = latent.shape
        H = self.n_heads
        kv = self.wkv_b(latent).view(B, S, H, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, H, -1)], dim=-1)
        return _sdpa(q, k, v, mask, self.softmax_scale)  # (B, T, H, v_head_dim)

    def _absorbed(self, q_nope, q_pe, lat, pe, view: CacheView) -> torch.Tensor:
        """Attend over cached latents lat (B, S, r) and rope keys pe (B, S, rope) with wkv_b's
        key half folded into the query and its value half applied after attention, so keys
        and values are never decompressed. All heads share the one latent key [lat, pe], so
        the heads fold into the query rows: scores are one (H T, r + rope) x (r + rope, S)
        GEMM per row with the scale and mask fused in (baddbmm), half the passes over the
        (H, T, S) scores of separate products, add, scale and mask."""
        B, T, H, _ = q_nope.shape
        wkv_b = self.wkv_b.weight.view(H, -1, self.kv_lora_rank)
        q_lat = torch.einsum("bthd,hdc->bhtc", q_nope, wkv_b[:, : self.qk_nope_head_dim])
        q = torch.cat([q_lat, q_pe.transpose(1, 2)], dim=-1).reshape(B, H * T, -1)
        keys = torch.cat([lat, pe], dim=-1).transpose(1, 2)  # (B, r + rope, S)
        bias = view.head_folded_bias(H, q.dtype)
        scores = torch.baddbmm(bias, q, keys, alpha=self.softmax_scale)  # (B, H T, S)
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.bmm(probs, lat).view(B, H, T, self.kv_lora_rank)
        return torch.einsum("bhtc,hdc->bthd", out, wkv_b[:, self.qk_nope_head_dim :])


class Attention(nn.Module):
    """Standard causal attention: multi-head (n_kv_heads == n_heads) or grouped-query.

    Rotary positions are applied to q and k when the config uses rope.
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.attn_head_dim
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=cfg.bias)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.bias)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=cfg.bias)
        mscale = yarn_mscale(cfg.rope_factor, cfg.mscale) if cfg.pos_emb == "rope" else 1.0
        self.softmax_scale = self.head_dim**-0.5 * mscale**2

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None = None,
        cache: PagedCache | None = None,
        view: CacheView | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            assert view is not None, "a cached call needs the cache's view"
            k = _store_and_read(cache.keys[self.layer_id], k, view).to(x.dtype)
            v = _store_and_read(cache.values[self.layer_id], v, view).to(x.dtype)
            mask = view.mask
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
        out = _sdpa(q, k, v, mask, self.softmax_scale)
        return self.wo(out.reshape(B, T, -1))


class LatentAttention(Attention):
    """Causal latent-vector attention: exact attention over a sliding window of W keys plus
    n_latents memory entries per key/value head, in one softmax (design: model/latent.py).

    Projections and heads are those of Attention (n_kv_heads key/value heads, as gqa).
    latent_queries (G, L, D) summarise the unrotated keys/values so far into the memory;
    latent_keys (G, L, D) are the memory entries' keys, scored against the unrotated query.
    The paged cache holds the unrotated keys and the values of every position (as gqa's, one
    block table) and each block's end memory state (PagedCache.memory_lse/memory_mean).
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        self.window = cfg.sliding_window
        shape = (self.n_kv_heads, cfg.n_latents, self.head_dim)
        # unit-norm-ish rows: distinct latents from the start, scores of order one
        self.latent_queries = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5)
        self.latent_keys = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5)
        # cached calls rotate window keys read back from the cache at their own positions
        self.rotary = RotaryEmbedding(cfg, self.head_dim) if cfg.pos_emb == "rope" else None

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        mask: torch.Tensor | None = None,
        cache: PagedCache | None = None,
        view: CacheView | None = None,
    ) -> torch.Tensor:
        if mask is not None and mask.ndim != 2:  # 2-D: Transformer's plain sliding window
            raise ValueError(
                "attention='latent' cannot keep packed documents apart (doc_ids): its memory "
                "sums over the whole row; train or fine-tune without packing"
            )
        B, T, _ = x.shape
        G, D = self.n_kv_heads, self.head_dim
        q = self.wq(x).view(B, T, G, self.n_heads // G, D)
        k = self.wk(x).view(B, T, G, D)
        v = self.wv(x).view(B, T, G, D)
        mem_scores = torch.einsum("btgrd,gld->bgrtl", q.float(), self.latent_keys.float())
        mem_scores = mem_scores * self.softmax_scale
        q_rot = self._rotate(q.view(B, T, -1, D), rope).view_as(q)
        if cache is None:
            memory, _ = memory_all(self._latent_scores(k), v.float())
            pad = (0, 0, 0, 0, self.window - 1, 0)  # window keys of query i: i .. i + W - 1
            k_win = F.pad(self._rotate(k, rope), pad)
            v_win = F.pad(v, pad)
            valid = torch.arange(T + self.window - 1, device=x.device) >= self.window - 1
            valid = valid.expand(B, -1)
        else:
            assert view is not None, "a cached call needs the cache's view"
            memory, k_win, v_win, valid = self._cached(k, v, cache, view)
        out = window_attention(q_rot, k_win, v_win, valid, mem_scores, memory, self.window)
        return self.wo(out.reshape(B, T, -1))

    def _rotate(self, t: torch.Tensor, rope: Rope) -> torch.Tensor:
        return t if rope is None else apply_rope(t, *rope)

    def _latent_scores(self, k: torch.Tensor) -> torch.Tensor:
        """Scaled scores (B, G, L, S) of the latent queries against unrotated keys (B, S, G, D)."""
        a = torch.einsum("gld,bsgd->bgls", self.latent_queries.float(), k.float())
        return a * self.softmax_scale

    def _cached(self, k, v, cache: PagedCache, view: CacheView):
        """Store the new keys/values; return the new tokens' memory (B, G, L, T, D) and their
        window keys (rotated), values and reality (B, T + W - 1[, G, D]), and write the end
        state of every block this call completes."""
        lv, layer = view.latent, self.layer_id
        assert lv is not None, "latent attention's cache view has its LatentView"
        keys = _store(cache.keys[layer], k, view)
        values = _store(cache.values[layer], v, view)
        k_mem, v_mem = keys[lv.memory_slots], values[lv.memory_slots]  # (B, M, G, D)
        lse_blocks, mean_blocks = cache.memory_lse[layer], cache.memory_mean[layer]
        has = lv.has_init[:, None, None]
        init = (
            lse_blocks[lv.init_block].masked_fill(~has, float("-inf")),
            mean_blocks[lv.init_block].masked_fill(~has[..., None], 0.0),
        )
        memory, (lse, mean) = memory_at(
            self._latent_scores(k_mem), v_mem.float(), cache.block_size, lv.out_index, init
        )
        lse_blocks[lv.state_blocks] = lse.permute(0, 3, 1, 2)  # (B, chunks, G, L)
        mean_blocks[lv.state_blocks] = mean.permute(0, 3, 1, 2, 4)
        k_win = keys[lv.window_slots].to(k.dtype)
        if self.rotary is not None:
            k_win = apply_rope(k_win, *self.rotary(lv.window_positions))
        return memory, k_win, values[lv.window_slots].to(v.dtype), lv.window_valid


def make_attention(cfg: ModelConfig, layer_id: int) -> nn.Module:
    """The attention layer cfg.attention names."""
    if cfg.attention == "mla":
        return MLA(cfg, layer_id)
    if cfg.attention == "latent":
        return LatentAttention(cfg, layer_id)
    return Attention(cfg, layer_id)
