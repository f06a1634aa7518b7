"""The decoder: Block (attention + feed-forward) and Transformer (embedding, blocks, LM head)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .attention import make_attention
from .cache import CacheView, make_view, new_cache
from .loss import lm_cross_entropy
from .mlp import GeluMLP, SwiGLU
from .moe import MoE, RouterStats, Routing
from .norm import make_norm
from .rope import RotaryEmbedding


@dataclass
class ModelOutput:
    """What Transformer.forward returns when labels are given (or return_output=True).

    loss: lm_loss + aux_loss (None without labels); logits: (B, T, vocab), or (N, vocab) for
    the N positions with a target under loss_only;
    aux_loss: summed MoE balance loss; expert_load: per-MoE-layer (n_routed_experts,) int64 counts
    of token-to-expert assignments; dropped_tokens: assignments dropped by the capacity factor;
    router_entropy: per-MoE-layer mean routing entropy (training mode only); routing: each MoE
    layer's Routing (expert ids and combine weights per token), only with return_routing=True.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    expert_load: list[torch.Tensor] = field(default_factory=list)
    dropped_tokens: torch.Tensor | None = None
    router_entropy: list[torch.Tensor] = field(default_factory=list)
    routing: list[Routing] | None = None


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)).

    The feed-forward is dense (SwiGLU or GELU) for the first n_dense_layers, MoE afterwards.
    forward returns (x, RouterStats or None).
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = make_attention(cfg, layer_id)
        self.ffn_norm = make_norm(cfg)
        self.ffn: MoE | GeluMLP | SwiGLU
        if cfg.is_moe_layer(layer_id):
            self.ffn = MoE(cfg, layer_id)
        elif cfg.mlp == "gelu":
            self.ffn = GeluMLP(cfg.dim, cfg.inter_dim, bias=cfg.bias)
        else:
            self.ffn = SwiGLU(cfg.dim, cfg.inter_dim, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None = None,
        cache=None,
        view: CacheView | None = None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, view)
        if isinstance(self.ffn, MoE):
            out, stats = self.ffn(self.ffn_norm(x))
            return x + out, stats
        return x + self.ffn(self.ffn_norm(x)), None


class Transformer(nn.Module):
    """DeepSeek-V3-style decoder (MLA or MHA/GQA attention, dense or MoE feed-forward).

    model(input_ids) -> logits (B, T, vocab); model(input_ids, labels=ids) -> ModelOutput with
    the shifted LM loss (ignore_index -100) plus MoE aux loss. With cache=model.new_cache(...)
    the call writes the new tokens at positions start_pos (int or (B,) tensor) onwards of each
    row's blocks (block_tables (B, W), see model.cache) and attends to the row's positions
    < start_pos + T.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = cfg.activation_checkpointing
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = (
            nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.pos_emb == "learned" else None
        )
        rope_dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.attn_head_dim
        self.rotary = RotaryEmbedding(cfg, rope_dim) if cfg.pos_emb == "rope" else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; residual output projections
        scaled by 1/sqrt(2 * n_layers) (GPT-2) so a fresh model's loss is close to ln(vocab)."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(weight := getattr(module, "weight", None), torch.Tensor) and (
                weight.ndim == 1
            ):
                nn.init.ones_(weight)  # RMSNorm / LayerNorm
                if isinstance(bias := getattr(module, "bias", None), torch.Tensor):
                    nn.init.zeros_(bias)
        for name, param in self.named_parameters():
            if name.endswith(("attn.wo.weight", "w2.weight", "ffn.proj.weight")):
                nn.init.normal_(param, std=std / math.sqrt(2 * self.cfg.n_layers))
            elif name.endswith("gate.weight"):
                nn.init.normal_(param, std=std)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cache=None,
        start_pos: int | torch.Tensor = 0,
        block_tables: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        return_output: bool = False,
        loss_only: bool = False,
        logits_at: torch.Tensor | None = None,
        return_routing: bool = False,
    ) -> torch.Tensor | ModelOutput:
        """input_ids (B, T) -> logits (B, T, vocab), or ModelOutput when labels are given or
        return_output is True.

        doc_ids (B, T), for sequences packed from several documents (non-decreasing along T):
        a token attends only to earlier tokens of its own document, and positions restart at
        each document, so a packed document gets the logits it would get alone.

        loss_only (with labels): compute logits only at positions that have a target; the
        output's `logits` is then (N, vocab) for those N positions in row-major order (row of
        position t scores labels[:, t + 1]). Fine-tuning, whose targets are the assistant turns
        only, spends far less on the LM head.

        logits_at (B,), without labels: the LM head runs only at that position of each row and
        the logits are (B, vocab); generation, which samples after a prompt's last token, skips
        the head for the rest of the prompt.

        return_routing: return a ModelOutput whose `routing` holds each MoE layer's decision
        for every input token (moe.Routing), taken from this same pass; off, nothing extra is
        kept or computed."""
        h, stats = self.hidden_states(
            input_ids, cache=cache, start_pos=start_pos, block_tables=block_tables, doc_ids=doc_ids
        )
        h, targets = self._head_positions(h, labels, logits_at, loss_only)
        logits = self.head(h)
        if labels is None and not return_output and not return_routing:
            return logits
        device = input_ids.device
        aux = sum((s.aux_loss for s in stats), torch.zeros((), device=device))
        out = ModelOutput(
            logits=logits,
            aux_loss=aux,
            expert_load=[s.load for s in stats],
            dropped_tokens=sum((s.dropped for s in stats), torch.zeros((), device=device).long()),
            router_entropy=[s.entropy for s in stats if s.entropy is not None],
        )
        if return_routing:
            batch, seq = input_ids.shape
            out.routing = [s.routing((batch, seq)) for s in stats]
        if targets is not None:
            # shift the labels, not the logits: slicing (B, T, vocab) logits would copy them
            out.lm_loss = lm_cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
            )
            out.loss = out.lm_loss + aux
        return out

    def _head_positions(
        self,
        h: torch.Tensor,
        labels: torch.Tensor | None,
        logits_at: torch.Tensor | None,
        loss_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the hidden states the LM head runs on, their targets or None without labels): all
        positions, each row's logits_at position, or under loss_only those with a target."""
        if logits_at is not None:
            if labels is not None:
                raise ValueError("logits_at is for inference; the loss needs every position")
            h = h[torch.arange(h.shape[0], device=h.device), logits_at]
        targets = None if labels is None else F.pad(labels[:, 1:], (0, 1), value=-100)
        if loss_only and targets is not None:
            # the LM head (a large share of a small model's compute) runs only where a target is
            keep = targets != -100
            h, targets = h[keep], targets[keep]
        return h, targets

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        cache=None,
        start_pos: int | torch.Tensor = 0,
        block_tables: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[RouterStats]]:
        """The final normalised hidden states (B, T, dim) and each MoE layer's router
        statistics: everything before the LM head (heads other than it, such as a classifier's,
        start here). Arguments as for forward."""
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}"
            )
        T = input_ids.shape[1]
        positions, mask, view = self._positions(input_ids, cache, start_pos, block_tables, doc_ids)
        h = self.embed(input_ids)
        if self.pos_embed is not None:
            # positions are arange(T), or start + arange(T) with kv_len = max(start) + T: the
            # largest is known on the host without a device sync
            max_pos = T - 1 if view is None else view.kv_len - 1  # packing only lowers it
            if max_pos >= self.cfg.max_seq_len:
                raise ValueError(
                    f"position {max_pos} exceeds max_seq_len {self.cfg.max_seq_len} "
                    "of this learned-position model; shorten the input"
                )
            h = h + self.pos_embed(positions)
        rope = self.rotary(positions) if self.rotary is not None else None

        stats: list[RouterStats] = []
        checkpointing = self.activation_checkpointing and self.training and cache is None
        for layer in self.layers:
            if checkpointing:
                h, layer_stats = checkpoint(layer, h, rope, mask, use_reentrant=False)
            else:
                h, layer_stats = layer(h, rope, mask, cache, view)
            if layer_stats is not None:
                stats.append(layer_stats)
        h = self.norm(h)
        # loads are accumulated here, outside any checkpointed region, so recomputation in the
        # backward pass never counts a token twice
        if self.training and stats:
            with torch.no_grad():
                for moe, s in zip(self.moe_layers(), stats):
                    moe.load_since_update += s.load
        return h, stats

    def _positions(
        self,
        input_ids: torch.Tensor,
        cache,
        start_pos: int | torch.Tensor,
        block_tables: torch.Tensor | None,
        doc_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, CacheView | None]:
        """(positions, attention mask or None for plain causal, cache view or None) of a call."""
        B, T = input_ids.shape
        device = input_ids.device
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("doc_ids (packed training sequences) cannot be used with a cache")
            view = make_view(cache, B, T, start_pos, block_tables, self.cfg.sliding_window, device)
            return view.positions, None, view
        if not isinstance(start_pos, int) or start_pos != 0 or block_tables is not None:
            raise ValueError(
                "start_pos and block_tables need a cache: pass cache=model.new_cache(...)"
            )
        positions = torch.arange(T, device=device)
        mask = None
        if self.cfg.sliding_window and T > self.cfg.sliding_window:
            mask = sliding_window_mask(T, self.cfg.sliding_window, device)
        if doc_ids is not None:
            positions, mask = document_positions_and_mask(doc_ids, mask)
        return positions, mask, None

    # ------------------------------------------------------------------ inference cache
    def new_cache(self, num_blocks: int, block_size: int = 16, device=None, dtype=None):
        """An empty paged cache of num_blocks blocks of block_size positions (model.cache);
        device/dtype default to the model's."""
        param = self.embed.weight
        return new_cache(
            self.cfg, num_blocks, block_size, device or param.device, dtype or param.dtype
        )

    # ------------------------------------------------------------------ mixture of experts
    def moe_layers(self) -> list[MoE]:
        return [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoE)]

    @torch.no_grad()
    def update_expert_bias(self, enabled: bool = True) -> None:
        """Aux-loss-free balancing step: nudge each gate's selection bias toward uniform load
        using the assignments counted since the previous call, then reset the counts (only
        reset them when not `enabled`). The trainer calls this after each optimizer step."""
        for moe in self.moe_layers():
            if enabled and self.cfg.bias_update_speed > 0:
                moe.gate.update_bias(moe.load_since_update, self.cfg.bias_update_speed)
            moe.load_since_update.zero_()

    def set_trainable_experts(self, expert_ids: Iterable[int] | None) -> None:
        """Train only the routed experts in expert_ids (in every MoE layer); freeze the others
        (requires_grad=False and grad=None, so optimizers keep no state for them).
        None makes every expert trainable again."""
        chosen = None if expert_ids is None else {int(e) for e in expert_ids}
        n = self.cfg.n_routed_experts
        if chosen is not None and not all(0 <= e < n for e in chosen):
            raise ValueError(f"expert ids must be in [0, {n}), got {sorted(chosen)}")
        for moe in self.moe_layers():
            for i, expert in enumerate(moe.experts):
                trainable = chosen is None or i in chosen
                for p in expert.parameters():
                    p.requires_grad_(trainable)
                    if not trainable:
                        p.grad = None

    # ------------------------------------------------------------------ accounting
    def num_parameters(self, active_only: bool = False) -> int:
        """Parameter count (tied weights once); active_only counts only the routed experts a
        token uses (n_activated_experts of n_routed_experts)."""
        total = sum(p.numel() for p in self.parameters())
        if active_only:
            for moe in self.moe_layers():
                per_expert = sum(p.numel() for p in moe.experts[0].parameters())
                total -= (moe.n_experts - moe.topk) * per_expert
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token as nanoGPT counts them: 6 N + attention, with N the active
        non-embedding parameters (the LM head counts) and attention 6 L H T (d_qk + d_v)
        (= 12 L H Q T for equal head sizes), T limited by the sliding window."""
        cfg = self.cfg
        n = self.num_parameters(active_only=True)
        if not cfg.tie_embeddings:
            n -= self.embed.weight.numel()
        if self.pos_embed is not None:
            n -= self.pos_embed.weight.numel()
        span = min(seq_len, cfg.sliding_window) if cfg.sliding_window else seq_len
        attn = 6 * cfg.n_layers * cfg.n_heads * span * (cfg.qk_head_dim + cfg.value_head_dim)
        return 6 * n + attn


def document_positions_and_mask(
    doc_ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, T) counted from each document's first token, and the (B, 1, T, T) mask
    letting a token attend to earlier tokens of its own document (within `mask`, a (T, T)
    sliding window, when given)."""
    B, T = doc_ids.shape
    index = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = index[:, :, None] >= index[:, None, :]
    allowed = same_doc & causal
    if mask is not None:
        allowed = allowed & mask
    return index - first, allowed[:, None]


def sliding_window_mask(seq_len: int, window: int, device) -> torch.Tensor:
    """(T, T) bool mask: query i attends to keys j with i - window < j <= i."""
    i = torch.arange(seq_len, device=device)
    dist = i[:, None] - i[None, :]
    return (dist >= 0) & (dist < window)
