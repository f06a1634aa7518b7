"""A faster decode step: the model's single-token cached forward with fewer, larger ops.

Batch-1 decode of a small model on a CPU is bound by fixed per-op cost (Python, module calls,
dispatch: ~5 us an op on the 2-core test machine), not by arithmetic: `Transformer.forward`
issues ~100 small ops per layer for one token. `fast_decoder(model)` returns a drop-in
wrapper (`FastDecoder`: the model's `cfg`, `new_cache` and call signature) whose
single-token cached calls (`T == 1`: the decode steps of `ismail_core.generate` and
ismail-serve) run a hand-fused path:

* MLA attends in the latent space with `bmm`/`baddbmm` on views of `wkv_b` (no einsum, the
  softmax scale folded into the `baddbmm`), the query's and the key's rope halves rotate
  together in one complex multiply, the cache is written with `index_copy_` and read with
  `index_select`, and the attention mask becomes one additive bias built once per step (none
  for a single row without a sliding window, which sees every cached position);
* a one-token MoE layer runs only its top-k experts and the shared experts: the gate's
  choice on the device, its k combine weights on the host (two small `tolist`s; the
  batched path reads its expert counts to the host too), no sort, scatter or index_add;
* residual additions ride on the output projections (`addmm`), a one-row RMSNorm is five
  small ops (x * rsqrt(x.x + dim * eps) * weight * sqrt(dim)), modules are read for their
  weights instead of being called;
* with several torch threads, the layers and the LM head each run on 1 thread or on all,
  whichever `_ThreadChoice` timed faster (5 steps of each, again every 200 steps): dozens of
  tiny parallel regions per token can cost more in fork/join than they save, and when
  another process holds a core each of them waits for a time slice (measured under load:
  2 threads ran the model's own step 10-26x slower than 1, the bf16 head GEMV 2.7x slower);
  which wins depends on the dtype and the load (bench/RESULTS.md).

The LM head on a CPU is multiplied from a contiguous float32 (dim, vocab) copy (`head_copy`,
default on for float32 models and for bf16 ones without native bf16 arithmetic; it costs a
float32 head's size in memory): MKL's GEMV over the (vocab, dim) parameter ran at ~8 GB/s on
the AMD test machine, over the transposed copy 2-2.7x faster (tiny preset, float32: 11.1 ->
9.2 ms a token), and faster than the emulated bf16 GEMV over half the bytes (2.9 ms against
~1.5 ms). A bf16 (dim, vocab) copy would be far slower (44 ms a token); for the small
matrices the layout measured mixed and stays as it is. From 3 rows on (serving batches) a
float32 head multiplies vocab-major instead (W @ h^T; MKL's small-M GEMM was slow in both
row-major layouts: 4 rows ~10 ms against 4.7 ms).

bfloat16 on a CPU without native bf16 arithmetic (`native_bf16()` False, e.g. AVX2 only):
by default (`upcast_bf16=None`) the fused path decodes from float32 copies of the matrices
(the embedding stays bf16) with a float32 residual stream, since bf16 GEMM is emulated there:
with bf16 matrices the tiny preset decoded 8-15% slower than the float32 model, with the
copies level with or faster than it. The copies cost memory (a float32 copy of every matrix
but the embedding, made at the first decode step); `upcast_bf16=False` keeps bf16 matrices.

Every other call (prefill chunks, training, gradient-enabled calls, learned positions) goes
to the model unchanged, so training numerics are untouched; a batch of several rows uses
the fused attention and the model's own batched MoE. Logits equal the model's within float
rounding (`tests/test_decode_fast.py`). `bench/decode.py` measures it against the memory
bandwidth bound. torch.compile of this step was measured and left out: see bench/RESULTS.md.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLA
from .cache import make_view
from .mlp import SwiGLU
from .moe import MoE
from .norm import RMSNorm
from .transformer import Block, Transformer


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX); without it PyTorch
    emulates bf16 matmuls through float32 conversions."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return False
    if "AMX" in cap:
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover
        return False


class FastDecoder(nn.Module):
    """Wraps a Transformer; single-token cached calls take the fused path (see module doc).

    `ModelRunner` (so `ismail_core.generate` and ismail-serve) wraps its model in one on a
    CPU; pass one as the model for other options: it has the model's `cfg`, `new_cache`, call
    signature and (through `__getattr__`) its other attributes. Options: upcast_bf16 (float32
    copies of a bf16 model's matrices; None = on for CPUs without native bf16), layer_threads
    (threads for everything but the LM head: "auto" = the faster of 1 and all, timed; an
    int; None = all), head_threads (the same for the LM head), head_copy (a float32
    (dim, vocab) copy of the LM head; None = on for CPU float32, and CPU bf16 without native
    bf16).
    """

    def __init__(
        self,
        model: Transformer,
        upcast_bf16: bool | None = None,
        layer_threads: int | str | None = "auto",
        head_threads: int | str | None = "auto",
        head_copy: bool | None = None,
    ):
        super().__init__()
        head = model.head.weight
        if head_copy is None:  # float32 on CPU, and bf16 where bf16 arithmetic is emulated
            head_copy = head.device.type == "cpu" and (
                head.dtype == torch.float32 or (head.dtype == torch.bfloat16 and not native_bf16())
            )
        self.head_copy = head_copy
        self.layer_threads = layer_threads
        self.head_threads = head_threads
        self._head_choice = _ThreadChoice()
        self._layer_choice = _ThreadChoice()
        self.model = model
        self.cfg = model.cfg
        self.supported = fused_decode_supported(model)
        if upcast_bf16 is None:
            upcast_bf16 = head.device.type == "cpu" and not native_bf16()
        self.upcast = upcast_bf16 and model.embed.weight.dtype == torch.bfloat16
        self._weights: dict | None = None
        self._weights_key: list[int] = []
        self.fused_steps = 0  # decode calls the fused path has run

    # the model's interface -------------------------------------------------------------
    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

    def __getattr__(self, name: str):
        """Anything else (moe_layers, num_parameters, ...) is the model's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self._modules["model"], name)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cache=None,
        start_pos: int | torch.Tensor = 0,
        block_tables: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        **kwargs,
    ):
        fast = (
            self.supported
            and cache is not None
            and labels is None
            and not kwargs
            and input_ids.ndim == 2
            and input_ids.shape[1] == 1
            and not self.model.training
            and not torch.is_grad_enabled()
        )
        if not fast:
            return self.model(
                input_ids,
                labels,
                cache=cache,
                start_pos=start_pos,
                block_tables=block_tables,
                logits_at=logits_at,
                **kwargs,
            )
        B = input_ids.shape[0]
        view = make_view(
            cache, B, 1, start_pos, block_tables, self.cfg.sliding_window, input_ids.device
        )
        bias = None
        if B > 1 or self.cfg.sliding_window:
            # (B, 1, S): 0 where a row may attend, -inf elsewhere; shared by every layer
            bias = view.head_folded_bias(1, torch.float32)
        weights = self._layer_weights()
        self.fused_steps += 1
        logits = self._fused(
            weights["layers"], weights["norm"], weights["head"], input_ids, view, bias, cache
        )
        return logits if logits_at is not None else logits[:, None]

    # the fused step --------------------------------------------------------------------
    def _layer_weights(self) -> dict:
        """Per-layer weights of the fused path (views of the parameters, float32 copies when
        upcasting bf16, and a few derived vectors); rebuilt when a parameter is replaced or
        updated in place (its version counter moves)."""
        if self._weights is not None:
            params = self._weights["params"]
            if self._versions(params) == self._weights["versions"] and all(
                p.data_ptr() == ptr for p, ptr in zip(params, self._weights_key)
            ):
                return self._weights
        up = (lambda w: w.detach().float()) if self.upcast else (lambda w: w.detach())
        layers = []
        for block in cast(list[Block], list(self.model.layers)):
            layers.append(
                {
                    "attn_norm": _norm_weights(block.attn_norm, up),
                    "attn": _attn_weights(block.attn, up),
                    "ffn_norm": _norm_weights(block.ffn_norm, up),
                    "ffn": _ffn_weights(block.ffn, up),
                }
            )
        params = [*self.model.parameters(), *self.model.buffers()]
        head = self.model.head.weight.detach()
        self._weights = {
            "layers": layers,
            "norm": _norm_weights(self.model.norm, up),
            # (dim, vocab): a contiguous copy with head_copy (see the module docstring)
            "head": head.t().float().contiguous() if self.head_copy else head.t(),
            "params": params,
            "versions": self._versions(params),
        }
        self._weights_key = [p.data_ptr() for p in params]
        return self._weights

    @staticmethod
    def _versions(params) -> list[int]:
        return [p._version for p in params]

    def _fused(self, layers, final_norm, head, ids, view, bias, cache):
        """(B, 1) ids at the view's (B, 1) positions -> (B, vocab) logits in the model's
        dtype."""
        model = self.model
        dtype = model.embed.weight.dtype
        h = F.embedding(ids[:, 0], model.embed.weight)  # (B, dim)
        if self.upcast:
            h = h.float()
        freqs = None
        rope = None
        if model.rotary is not None:
            cos, sin = model.rotary(view.positions)  # (B, 1, rot / 2)
            freqs = torch.complex(cos, sin)
            rope = (cos, sin)
        slots = (view.write.reshape(-1), view.read.reshape(-1), view.read.shape[1])  # (B,) (B*S,) S
        cpu = h.device.type == "cpu"  # torch threads only matter there
        threads = torch.get_num_threads() if cpu else 1
        auto = self.layer_threads == "auto" and threads > 1
        if auto:
            n = self._layer_choice.pick(threads)
            t0 = time.perf_counter()
        elif self.layer_threads in (None, "auto"):
            n = threads
        else:
            n = min(int(self.layer_threads), threads)
        narrow = n != threads
        if narrow:
            torch.set_num_threads(n)
        try:
            for layer_id, (block, w) in enumerate(zip(model.layers, layers)):
                x = _norm(w["attn_norm"], h)
                if w["attn"] is not None:
                    h = _mla(w["attn"], h, x, freqs, cache, layer_id, slots, bias)
                else:  # standard attention: the module itself
                    out = block.attn(x[:, None].to(dtype), rope, None, cache, view)
                    h = h + out[:, 0].to(h.dtype)
                x = _norm(w["ffn_norm"], h)
                h = _ffn(w["ffn"], block.ffn, h, x, dtype)
            h = _norm(final_norm, h)
        finally:
            if narrow:
                torch.set_num_threads(threads)
        if auto:
            self._layer_choice.record(n, time.perf_counter() - t0)
        param = model.head.weight
        if h.shape[0] > 2 and param.dtype == torch.float32:
            # several rows: MKL's small-M GEMM is slow in both layouts here (B=4: ~10 ms);
            # vocab-major (W @ h^T) ran 4.7 ms
            return self._head(h, param, threads, rows_last=True)
        return self._head(h.to(head.dtype), head, threads).to(dtype)

    def _head(
        self, h: torch.Tensor, weight: torch.Tensor, threads: int, rows_last: bool = False
    ) -> torch.Tensor:
        """h (B, dim) @ weight (dim, vocab), the LM head GEMV (rows_last: weight is the
        (vocab, dim) parameter, multiplied as (W @ h^T)^T), on `head_threads` threads;
        "auto" times it on 1 and on all `threads` now and then and uses whichever is faster
        (a second thread helps only when it has a core to itself)."""
        mm = _vocab_major if rows_last else torch.mm
        if self.head_threads is None or threads == 1:
            return mm(h, weight)
        if self.head_threads != "auto":
            n = min(int(self.head_threads), threads)
            if n == threads:
                return mm(h, weight)
            return _on_threads(n, threads, mm, h, weight)
        n = self._head_choice.pick(threads)
        t0 = time.perf_counter()
        out = mm(h, weight) if n == threads else _on_threads(n, threads, mm, h, weight)
        self._head_choice.record(n, time.perf_counter() - t0)
        return out


def _vocab_major(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.mm(weight, h.t()).t().contiguous()


def _on_threads(n: int, threads: int, fn, *args):
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


class _ThreadChoice:
    """Chooses between 1 thread and all threads for an op by timing both: `samples` calls of
    each, then the faster (by median) for `period` calls, then measure again (the machine's
    other load comes and goes)."""

    def __init__(self, samples: int = 5, period: int = 200):
        self.samples, self.period = samples, period
        self.times: dict[int, list[float]] = {}
        self.choice: int | None = None
        self.threads = 0
        self.left = 0

    def pick(self, threads: int) -> int:
        if threads != self.threads:  # the thread count changed: measure afresh
            self.threads, self.choice, self.times = threads, None, {1: [], threads: []}
        if self.choice is not None:
            self.left -= 1
            if self.left > 0:
                return self.choice
            self.choice, self.times = None, {1: [], threads: []}
        one, many = self.times[1], self.times[threads]
        return 1 if len(one) <= len(many) else threads

    def record(self, n: int, seconds: float) -> None:
        if self.choice is not None:
            return
        self.times[n].append(seconds)
        if all(len(v) >= self.samples for v in self.times.values()):
            self.choice = min(self.times, key=lambda k: statistics.median(self.times[k]))
            self.left = self.period


# ------------------------------------------------------------------------- weights
def _norm_weights(norm: nn.Module, up) -> dict:
    if isinstance(norm, RMSNorm):
        weight = up(norm.weight)
        dim = weight.shape[0]
        return {
            "kind": "rms",
            "weight": weight,
            "eps": norm.eps,
            # one row: x * rsqrt(x.x + dim * eps) * (weight * sqrt(dim)), x.x one mm
            "weight_sqrt_dim": weight * math.sqrt(dim),
            "dim_eps": dim * norm.eps,
        }
    return {"kind": "module", "module": norm}


def _attn_weights(attn: nn.Module, up) -> dict | None:
    if not isinstance(attn, MLA):
        return None
    H = attn.n_heads
    nope, r = attn.qk_nope_head_dim, attn.kv_lora_rank
    wkv_b = up(attn.wkv_b.weight).view(H, nope + attn.v_head_dim, r)
    w = {
        "H": H,
        "nope": nope,
        "rope": attn.qk_rope_head_dim,
        "v": attn.v_head_dim,
        "r": r,
        "scale": attn.softmax_scale,
        "wkv_a": up(attn.wkv_a.weight).t(),
        "kv_norm": _norm_weights(attn.kv_norm, up),
        "wk": wkv_b[:, :nope],  # (H, nope, r)
        "wv_t": wkv_b[:, nope:].transpose(1, 2),  # (H, r, v)
        "wo": up(attn.wo.weight).t(),
    }
    if attn.q_lora_rank == 0:
        w["wq"] = up(attn.wq.weight).t()
    else:
        w["wq_a"] = up(attn.wq_a.weight).t()
        w["q_norm"] = _norm_weights(attn.q_norm, up)
        w["wq_b"] = up(attn.wq_b.weight).t()
    return w


def _swiglu_weights(mlp: SwiGLU, up) -> dict:
    """Matrices transposed (views): the fused path multiplies x @ W^T with torch.mm."""
    return {
        "w13": up(mlp.w13.weight).t(),
        "b13": None if mlp.w13.bias is None else up(mlp.w13.bias),
        "w2": up(mlp.w2.weight).t(),
        "b2": None if mlp.w2.bias is None else up(mlp.w2.bias),
    }


def _ffn_weights(ffn: nn.Module, up) -> dict:
    if isinstance(ffn, SwiGLU):
        return {"kind": "swiglu", **_swiglu_weights(ffn, up)}
    if isinstance(ffn, MoE):
        gate = ffn.gate
        shared = None if ffn.shared_experts is None else _swiglu_weights(ffn.shared_experts, up)
        return {  # group-limited routing: the module
            "kind": "moe" if gate.n_groups <= 1 else "module",
            "gate": gate.weight.detach().float().t(),
            "bias": gate.bias,
            "topk": gate.topk,
            "sigmoid": gate.score_func == "sigmoid",
            "norm_topk": gate.norm_topk_prob,
            "route_scale": gate.route_scale,
            "experts": [_swiglu_weights(e, up) for e in ffn.routed_experts()],
            "shared": shared,
        }
    return {"kind": "module"}


# torch modules the fused path reads as they are; every other module must be ismail's own
_PLAIN_TORCH = (nn.Linear, nn.Embedding, nn.ModuleList, nn.LayerNorm)


def fused_decode_supported(model: nn.Module) -> bool:
    """Whether the fused path covers this model (else every call goes to the model): a
    Transformer of plain modules. Anything that changes what a layer computes from its
    weights (FP8 layers from ismail-kernels, peft's LoRA layers, a test double) is left to
    the model's own forward, since the fused path reads the weights directly; so is
    latent-vector attention (attention="latent"), which the fused path does not implement."""
    cfg = getattr(model, "cfg", None)
    plain = all(
        type(m) in _PLAIN_TORCH or type(m).__module__.startswith("ismail_core.model.")
        for m in model.modules()
    )
    return (
        plain
        and cfg is not None
        # latent-vector attention's memory is not in the fused path: the model's own forward
        and getattr(cfg, "attention", None) != "latent"
        and getattr(model, "pos_embed", None) is None
        and hasattr(model, "layers")
        and hasattr(model, "head")
    )


# ------------------------------------------------------------------------- ops
def _norm(w: dict, x: torch.Tensor) -> torch.Tensor:
    if w["kind"] == "rms" and x.dtype == torch.float32 and w["weight"].dtype == torch.float32:
        if x.shape[0] == 1:  # five small ops instead of rms_norm's eight
            inv_rms = torch.mm(x, x.t()).add_(w["dim_eps"]).rsqrt_()
            return torch.mul(x, inv_rms).mul_(w["weight_sqrt_dim"])
        return F.rms_norm(x, (x.shape[-1],), w["weight"], w["eps"])
    if w["kind"] == "rms":  # the module's own formula (normalise in float32, cast, scale)
        weight = w["weight"]
        return F.rms_norm(x.float(), (x.shape[-1],), eps=w["eps"]).to(x.dtype) * weight
    module = w["module"]
    dtype = next(module.parameters(), x).dtype
    return module(x.to(dtype)).to(x.dtype)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, N, D) by freqs (B, 1, D / 2) complex (as apply_rope)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def _mla(w: dict, h, x, freqs, cache, layer_id, slots, bias) -> torch.Tensor:
    """One decode step of MLA for x (B, dim), the normed residual h: store the token's latent
    and rope key, attend over the row's cached positions in the latent space, return h plus
    the attention output (B, dim)."""
    B = x.shape[0]
    H, nope, rope, r = w["H"], w["nope"], w["rope"], w["r"]
    write, read, S = slots
    if "wq" in w:
        q = torch.mm(x, w["wq"])
    else:
        q = torch.mm(_norm(w["q_norm"], torch.mm(x, w["wq_a"])), w["wq_b"])
    q = q.view(B, H, nope + rope)
    kv = torch.mm(x, w["wkv_a"])  # (B, r + rope)
    latent = _norm(w["kv_norm"], kv[:, :r])
    # the query's rope halves and the shared rope key rotate together: (B, H + 1, rope)
    pe = _rotate(torch.cat([q[:, :, nope:], kv[:, None, r:]], dim=1), freqs)
    lat_cache = cache.latent[layer_id].view(-1, r)
    pe_cache = cache.rope_key[layer_id].view(-1, rope)
    lat_cache.index_copy_(0, write, latent.to(lat_cache.dtype))
    pe_cache.index_copy_(0, write, pe[:, H].to(pe_cache.dtype))
    lat = lat_cache.index_select(0, read).view(B, S, r).to(x.dtype)
    k_pe = pe_cache.index_select(0, read).view(B, S, rope).to(x.dtype)
    q_lat = torch.bmm(q[:, :, :nope].transpose(0, 1), w["wk"]).transpose(0, 1)  # (B, H, r)
    scale = w["scale"]
    pe_scores = torch.bmm(pe[:, :H], k_pe.transpose(1, 2))
    if x.dtype == torch.float32:  # scale * (pe_scores + q_lat lat^T) in one op
        scores = torch.baddbmm(pe_scores, q_lat, lat.transpose(1, 2), beta=scale, alpha=scale)
    else:  # as MLA._absorbed: add in x's dtype, scale in float32
        scores = torch.baddbmm(pe_scores, q_lat, lat.transpose(1, 2)).float() * scale
    if bias is not None:
        scores = scores + bias
    probs = scores.softmax(dim=-1).to(x.dtype)  # (B, H, S)
    out = torch.bmm(torch.bmm(probs, lat).transpose(0, 1), w["wv_t"])  # (H, B, v)
    return torch.addmm(h, out.transpose(0, 1).reshape(B, H * w["v"]), w["wo"])


def _swiglu_into(w: dict, h: torch.Tensor, x: torch.Tensor, alpha: float = 1.0):
    """h + alpha * swiglu(x), the down projection and the sum in one addmm."""
    if w["b13"] is None:
        gate, up = torch.mm(x, w["w13"]).chunk(2, dim=-1)
    else:
        gate, up = torch.addmm(w["b13"], x, w["w13"]).chunk(2, dim=-1)
    if w["b2"] is not None:
        return h + torch.addmm(w["b2"], F.silu(gate) * up, w["w2"]) * alpha
    return torch.addmm(h, F.silu(gate) * up, w["w2"], alpha=alpha)


def _ffn(w: dict, module: nn.Module, h: torch.Tensor, x: torch.Tensor, dtype) -> torch.Tensor:
    """h plus the feed-forward of x (B, dim)."""
    kind = w["kind"]
    if kind == "swiglu":
        return _swiglu_into(w, h, x)
    if kind == "moe" and x.shape[0] == 1:
        return _moe_one(w, h, x)
    out = module(x[:, None].to(dtype))
    out = out[0] if isinstance(out, tuple) else out
    return h + out[:, 0].to(x.dtype)


def _moe_one(w: dict, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h plus the MoE of one token x (1, dim): the gate's choice as Gate.forward makes it,
    its combine weights (normalised over the top k, times route_scale) computed on the host
    from the k chosen scores, then the shared and the chosen experts, each added by its down
    projection's addmm. With one token no capacity limit can drop an assignment."""
    logits = torch.mm(x.float(), w["gate"])
    scores = logits.sigmoid() if w["sigmoid"] else logits.softmax(dim=-1)
    indices = (scores + w["bias"]).topk(w["topk"], dim=-1).indices[0].tolist()
    host_scores = scores[0].tolist()
    weights = [host_scores[e] for e in indices]
    if w["norm_topk"]:
        total = sum(weights) + 1e-20
        weights = [v / total for v in weights]
    if w["shared"] is not None:
        h = _swiglu_into(w["shared"], h, x)
    for expert, weight in zip(indices, weights):
        h = _swiglu_into(w["experts"][expert], h, x, weight * w["route_scale"])
    return h


def fast_decoder(model: Transformer, **options) -> FastDecoder:
    """The model wrapped for fast single-token decode steps (see the module docstring);
    options: upcast_bf16, layer_threads, head_threads, head_copy (FastDecoder)."""
    return FastDecoder(model, **options)
