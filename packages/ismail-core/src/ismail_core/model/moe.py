"""Mixture of experts: DeepSeek-V3 sigmoid gate with aux-loss-free balancing, or a Switch/GShard
softmax gate with router noise and a capacity factor; SwiGLU routed and shared experts."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .mlp import SwiGLU


@dataclass
class Routing:
    """The routing decision of one MoE layer for a (B, T) input (Transformer.forward with
    return_routing=True).

    layer: index of the block in model.layers; expert_ids: (B, T, k) int64 routed experts of
    each token, best first; weights: (B, T, k) their combine weights (route_scale included,
    the bias that steers selection excluded), detached; kept: (B, T, k) bool, False where the
    capacity factor dropped the assignment (None without a capacity factor).
    """

    layer: int
    expert_ids: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor | None = None


@dataclass
class RouterStats:
    """Per-layer routing statistics of one forward call.

    load: (n_routed_experts,) int64 token-to-expert assignments before capacity dropping;
    dropped: int64 scalar, assignments dropped by the capacity factor; aux_loss: float scalar;
    entropy: float32 scalar, mean entropy (nats) of the tokens' routing distributions, in
    training mode only (None otherwise); layer: the block's index in model.layers.
    indices, weights (N, k) and keep (N, k) or None are the gate's decision, kept by reference
    (they exist anyway, so holding them costs nothing) for `routing`.
    """

    load: torch.Tensor
    dropped: torch.Tensor
    aux_loss: torch.Tensor
    entropy: torch.Tensor | None = None
    layer: int = -1
    indices: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    def routing(self, batch_shape: tuple[int, int]) -> Routing:
        """This layer's decision as a Routing for an input of shape batch_shape (B, T)."""
        assert self.indices is not None and self.weights is not None, "MoE.forward sets them"
        shape = (*batch_shape, self.indices.shape[-1])
        keep = None if self.keep is None else self.keep.view(shape)
        weights = self.weights.detach().view(shape)
        return Routing(self.layer, self.indices.view(shape), weights, keep)


class Gate(nn.Module):
    """Top-k router.

    scores = sigmoid(x W^T) (DeepSeek-V3) or softmax(x W^T + noise) (Switch/GShard). A float32
    bias, updated outside autograd by update_bias, is added for expert *selection* only; the
    combine weights come from the unbiased scores (normalised over the top-k when norm_topk_prob)
    times route_scale. Group-limited routing keeps the n_limited_groups best groups (scored by
    the sum of their two best experts) and masks the others with -inf.
    """

    bias: torch.Tensor  # a buffer (see __init__)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.topk = cfg.n_activated_experts
        self.n_groups = cfg.n_expert_groups
        self.topk_groups = cfg.n_limited_groups
        self.score_func = cfg.score_func
        self.route_scale = cfg.route_scale
        self.norm_topk_prob = cfg.norm_topk_prob
        self.router_noise = cfg.router_noise
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, dim) -> combine weights (N, k), expert ids (N, k), fp32 scores (N, E)."""
        logits = F.linear(x.float(), self.weight.float())
        if self.training and self.router_noise > 0:
            logits = logits + torch.randn_like(logits) * self.router_noise
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores + self.bias
        if self.n_groups > 1:
            grouped = choice.view(x.shape[0], self.n_groups, -1)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            best_groups = group_scores.topk(self.topk_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).flatten(1)
        indices = choice.topk(self.topk, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return (weights * self.route_scale).type_as(x), indices, scores

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, speed: float) -> None:
        """Aux-loss-free balancing: bias += speed * sign(mean_load - load), re-centred at 0."""
        if load.sum() == 0:
            return
        load = load.float()
        self.bias += speed * torch.sign(load.mean() - load)
        self.bias -= self.bias.mean()


class MoE(nn.Module):
    """Routed SwiGLU experts (top-k of n_routed_experts) plus always-active shared experts.

    Tokens are sorted by expert and the experts run over their slices of the sorted rows: one
    torch._grouped_mm per projection where the device supports it (the expert weights stacked
    inside forward, so autograd still reaches each expert's own w13/w2), else one batched
    matmul per expert (a loop over experts, never over tokens). With capacity_factor > 0 each
    expert takes at most ceil(capacity_factor * tokens * k / experts) assignments, first
    choices before second choices, earlier tokens first; the rest are dropped (the token keeps
    its residual and the shared experts) and counted. Set `grouped_mm = False` to force the
    per-expert loop (the reference the grouped path is tested against).
    """

    # Stacking copies every used expert's weights on each call, which only pays off when the
    # matmuls are much larger than that copy: calls with fewer assignments than this per
    # expert (decode steps of a few rows) keep the per-expert loop.
    GROUPED_MIN_ROWS_PER_EXPERT = 16

    load_since_update: torch.Tensor  # a buffer (see __init__)

    def __init__(self, cfg: ModelConfig, layer_id: int = -1):
        super().__init__()
        self.layer_id = layer_id  # reported with the routing decision
        self.n_experts = cfg.n_routed_experts
        self.topk = cfg.n_activated_experts
        self.capacity_factor = cfg.capacity_factor
        self.aux_loss_coeff = cfg.aux_loss_coeff
        self.grouped_mm = True
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(
            SwiGLU(cfg.dim, cfg.moe_inter_dim) for _ in range(cfg.n_routed_experts)
        )
        self.shared_experts = (
            SwiGLU(cfg.dim, cfg.moe_inter_dim * cfg.n_shared_experts)
            if cfg.n_shared_experts > 0
            else None
        )
        # assignments counted since the last update_expert_bias(); filled by Transformer.forward
        self.register_buffer(
            "load_since_update",
            torch.zeros(cfg.n_routed_experts, dtype=torch.long),
            persistent=False,
        )

    def routed_experts(self) -> list[SwiGLU]:
        """The routed experts, typed (iterating an nn.ModuleList yields plain Modules)."""
        return cast(list[SwiGLU], list(self.experts))

    def _keep_within_capacity(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (N, k) -> bool (N, k): assignments that fit in their expert's capacity."""
        n_tokens = indices.shape[0]
        capacity = math.ceil(self.capacity_factor * n_tokens * self.topk / self.n_experts)
        choice_major = indices.t().reshape(-1)  # all first choices, then all second choices, ...
        onehot = F.one_hot(choice_major, self.n_experts)
        position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in the expert queue
        return (position < capacity).view(self.topk, n_tokens).t()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, indices, scores = self.gate(x)
        flat_experts = indices.reshape(-1)  # (N * k,), token-major
        with torch.no_grad():
            load = torch.bincount(flat_experts, minlength=self.n_experts)
        dropped = torch.zeros((), dtype=torch.long, device=x.device)
        counts = load  # nothing dropped: the per-expert counts are the load
        keep = None
        if self.capacity_factor > 0:
            keep = self._keep_within_capacity(indices).reshape(-1)
            dropped = (~keep).sum()
            # dropped assignments sort after every real expert and are never computed
            flat_experts = flat_experts.masked_fill(~keep, self.n_experts)
            counts = torch.bincount(flat_experts, minlength=self.n_experts + 1)[: self.n_experts]
        order = flat_experts.argsort(stable=True)
        host_counts = counts.tolist()  # one device sync per forward
        order = order[: sum(host_counts)]
        token_ids = order // self.topk
        y = torch.zeros_like(x)
        if token_ids.numel():
            # index_select, not x[token_ids]: its backward is an index_add, cheaper than the
            # accumulating index_put that advanced indexing needs
            routed_out = self._run_experts(x.index_select(0, token_ids), host_counts)
            routed_out = routed_out * weights.reshape(-1)[order, None]
            y = y.index_add(0, token_ids, routed_out)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        aux = self._aux_loss(scores, load, x.shape[0])
        stats = RouterStats(load, dropped, aux, self._entropy(scores), self.layer_id)
        stats.indices, stats.weights, stats.keep = indices, weights, keep
        return y.view(shape), stats

    def _entropy(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Mean entropy (nats) of the tokens' routing distributions, the gate's scores
        normalised per token (softmax scores already are; sigmoid ones are made so, as the
        aux loss does): ln(E) for a router that cannot tell experts apart, 0 for one that
        is certain. Training only, where the trainer logs it; a device scalar, no sync."""
        if not self.training:
            return None
        with torch.no_grad():
            probs = scores / scores.sum(dim=-1, keepdim=True)
            return -(probs * probs.clamp_min(1e-20).log()).sum(dim=-1).mean()

    def _run_experts(self, routed_in: torch.Tensor, host_counts: list[int]) -> torch.Tensor:
        """Expert outputs for rows sorted by expert (host_counts[e] rows for expert e); experts
        without rows are not called, so their weights get no gradient (None, as before)."""
        used = [(e, n) for e, n in zip(self.routed_experts(), host_counts) if n]
        dtype = self._grouped_dtype(routed_in, len(used))
        if dtype is None:
            parts = routed_in.split([n for _, n in used])
            return torch.cat([expert(part) for (expert, _), part in zip(used, parts)])
        w13 = torch.stack([e.w13.weight for e, _ in used]).to(dtype)  # (E', 2I, dim)
        w2 = torch.stack([e.w2.weight for e, _ in used]).to(dtype)  # (E', dim, I)
        ends = list(itertools.accumulate(n for _, n in used))  # group ends in the sorted rows
        offs = torch.tensor(ends, dtype=torch.int32).to(routed_in.device)
        h = torch._grouped_mm(routed_in.to(dtype), w13.transpose(1, 2), offs=offs)
        gate, up = h.chunk(2, dim=-1)
        return torch._grouped_mm(F.silu(gate) * up, w2.transpose(1, 2), offs=offs)

    def _grouped_dtype(self, routed_in: torch.Tensor, n_used: int) -> torch.dtype | None:
        """The dtype the grouped path computes in (autocast's where it is on, as nn.Linear
        would), or None when it cannot run or would not pay off: no torch._grouped_mm on this
        device, experts that are not plain bias-free nn.Linear pairs (LoRA or FP8 layers
        compute more than their .weight), rows not 16-byte aligned, or too few rows."""
        device = routed_in.device.type
        if not (self.grouped_mm and hasattr(torch, "_grouped_mm") and device in ("cpu", "cuda")):
            return None
        if routed_in.shape[0] < self.GROUPED_MIN_ROWS_PER_EXPERT * n_used:
            return None
        plain = all(
            type(layer) is nn.Linear and layer.bias is None
            for expert in self.experts
            for layer in (expert.w13, expert.w2)
        )
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else routed_in.dtype
        weight = self.routed_experts()[0].w2.weight  # (dim, I): both sizes a row stride must align
        if not plain or not (autocast or dtype == weight.dtype):
            return None  # outside autocast, mixed dtypes are left to nn.Linear to reject
        # CPU: measured here in float32 and bfloat16; CUDA: bf16 on Hopper (sm90) and newer
        # only, the case its grouped GEMM kernels are built for (as torchtitan uses it; not
        # measured in this repository yet): older GPUs keep the loop
        if device == "cuda" and torch.cuda.get_device_capability(routed_in.device) < (9, 0):
            return None
        supported = (torch.bfloat16,) if device == "cuda" else (torch.float32, torch.bfloat16)
        if dtype not in supported:
            return None
        return dtype if all(d * dtype.itemsize % 16 == 0 for d in weight.shape) else None

    def _aux_loss(self, scores: torch.Tensor, load: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Switch-style balance loss coeff * E * sum_i f_i * P_i (f: share of assignments,
        P: mean routing probability with scores normalised per token); 0 when disabled."""
        if self.aux_loss_coeff == 0 or not self.training:
            return torch.zeros((), device=scores.device)
        probs = scores / scores.sum(dim=-1, keepdim=True)
        frac = load.float() / (n_tokens * self.topk)
        return self.aux_loss_coeff * self.n_experts * (frac * probs.mean(dim=0)).sum()
