"""Model configuration: one dataclass, named presets, validation, config.json round trip."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .layout import CONFIG_FILE

ATTENTION_KINDS = ("mla", "mha", "gqa", "latent")
POSITION_KINDS = ("rope", "learned")
MLP_KINDS = ("swiglu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm")
SCORE_FUNCS = ("sigmoid", "softmax")


@dataclass
class ModelConfig:
    """Every hyper-parameter of a Transformer; saved as config.json in each checkpoint.

    Attention is Multi-Head Latent Attention ("mla", DeepSeek-V3), standard multi-head ("mha") or
    grouped-query ("gqa", n_kv_heads shared key/value heads); any of them may use a sliding window.
    "latent" is a sliding window of exact attention (sliding_window > 0 required) plus n_latents
    causal, prefix-normalised latent memory entries per key/value head (model/latent.py).
    Feed-forward layers are dense for the first n_dense_layers and mixture-of-experts afterwards
    when n_routed_experts > 0.
    """

    vocab_size: int = 32768
    max_seq_len: int = 512
    dim: int = 512
    n_layers: int = 16
    n_heads: int = 12
    # attention
    attention: str = "mla"
    n_kv_heads: int | None = None  # gqa and latent; mha uses n_heads
    head_dim: int | None = None  # mha/gqa/latent; default dim // n_heads
    n_latents: int = 16  # latent only: memory entries per key/value head
    q_lora_rank: int = 0  # mla query compression, 0 = off
    kv_lora_rank: int = 256
    qk_nope_head_dim: int = 64
    qk_rope_head_dim: int = 32
    v_head_dim: int = 64
    sliding_window: int = 0  # 0 = full causal attention
    bias: bool = False  # biases on attention and MLP projections (mha/gqa, GPT-2 style)
    # positions
    pos_emb: str = "rope"
    rope_theta: float = 10000.0
    rope_factor: float = 1.0  # YaRN context extension factor, 1 = plain RoPE
    original_max_seq_len: int = 0  # YaRN: context the model was trained at, 0 = max_seq_len
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    # feed-forward
    mlp: str = "swiglu"
    inter_dim: int = 1536  # dense feed-forward hidden size
    n_dense_layers: int = 1
    n_routed_experts: int = 4  # 0 = dense model
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    moe_inter_dim: int = 768
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    score_func: str = "sigmoid"  # sigmoid = DeepSeek-V3 gate, softmax = Switch/GShard gate
    route_scale: float = 1.0
    norm_topk_prob: bool = True
    bias_update_speed: float = 1e-3  # aux-loss-free balancing step, 0 = off
    aux_loss_coeff: float = 0.0  # optional auxiliary load-balancing loss
    router_noise: float = 0.0  # std of Gaussian noise on router logits while training
    capacity_factor: float = 0.0  # > 0 drops assignments beyond capacity (Switch-style)
    # other
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived quantities
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads of standard attention (mha: n_heads)."""
        if self.attention in ("gqa", "latent"):
            return self.n_kv_heads or self.n_heads
        return self.n_heads

    @property
    def attn_head_dim(self) -> int:
        """Head size of standard attention (mha/gqa)."""
        return self.head_dim or self.dim // self.n_heads

    @property
    def qk_head_dim(self) -> int:
        """Query/key size per head used by the attention score."""
        if self.attention == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.attn_head_dim

    @property
    def value_head_dim(self) -> int:
        return self.v_head_dim if self.attention == "mla" else self.attn_head_dim

    @property
    def yarn_original_len(self) -> int:
        return self.original_max_seq_len or self.max_seq_len

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.n_routed_experts > 0 and layer_id >= self.n_dense_layers

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the first impossible setting and how to fix it."""
        for name in ("vocab_size", "max_seq_len", "dim", "n_layers", "n_heads"):
            _need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _need(self.attention in ATTENTION_KINDS, f"attention must be one of {ATTENTION_KINDS}")
        _need(self.pos_emb in POSITION_KINDS, f"pos_emb must be one of {POSITION_KINDS}")
        _need(self.mlp in MLP_KINDS, f"mlp must be one of {MLP_KINDS}")
        _need(self.norm in NORM_KINDS, f"norm must be one of {NORM_KINDS}")
        _need(self.score_func in SCORE_FUNCS, f"score_func must be one of {SCORE_FUNCS}")
        _need(self.sliding_window >= 0, "sliding_window must be >= 0 (0 disables it)")
        if self.attention == "mla":
            self._validate_mla()
        else:
            if self.attention == "latent":
                self._validate_latent()
            self._validate_heads()
        _need(self.rope_factor >= 1.0, "rope_factor must be >= 1 (1 = no YaRN scaling)")
        _need(self.mscale >= 0.0, "mscale must be >= 0")
        _need(self.beta_fast > self.beta_slow > 0, "need beta_fast > beta_slow > 0 for YaRN")
        _need(self.inter_dim > 0, "inter_dim must be positive")
        _need(0 <= self.n_dense_layers, "n_dense_layers must be >= 0")
        if self.n_routed_experts > 0:
            self._validate_moe()
        _need(self.norm_eps > 0, "norm_eps must be positive")
        _need(self.init_std > 0, "init_std must be positive")

    def _validate_mla(self) -> None:
        _need(self.kv_lora_rank > 0, "kv_lora_rank must be positive for mla")
        _need(self.q_lora_rank >= 0, "q_lora_rank must be >= 0 (0 disables query compression)")
        _need(self.qk_nope_head_dim > 0 and self.v_head_dim > 0, "mla head dims must be > 0")
        _need(
            self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0,
            f"qk_rope_head_dim must be a positive even number, got {self.qk_rope_head_dim}",
        )
        _need(self.pos_emb == "rope", "mla needs pos_emb='rope' (its decoupled key is rotary)")

    def _validate_latent(self) -> None:
        _need(
            self.sliding_window > 0,
            "attention='latent' attends exactly within a sliding window: set sliding_window "
            "> 0 (e.g. 64; --model.sliding_window 64)",
        )
        _need(self.n_latents > 0, f"n_latents must be positive, got {self.n_latents}")

    def _validate_heads(self) -> None:
        """Head sizes and counts of standard attention (mha, gqa, latent)."""
        if self.head_dim is None:
            _need(
                self.dim % self.n_heads == 0,
                f"dim {self.dim} is not divisible by n_heads {self.n_heads}; "
                "change n_heads or set head_dim explicitly",
            )
        _need(self.attn_head_dim % 2 == 0 or self.pos_emb != "rope", "rope needs even head_dim")
        if self.attention == "mha":
            _need(
                self.n_kv_heads in (None, self.n_heads),
                "attention='mha' uses n_heads key/value heads; use attention='gqa' "
                "to set n_kv_heads",
            )
        kv = self.kv_heads
        _need(
            kv > 0 and self.n_heads % kv == 0,
            f"n_heads {self.n_heads} must be a multiple of n_kv_heads {kv}",
        )

    def _validate_moe(self) -> None:
        _need(self.mlp == "swiglu", "mixture-of-experts layers use SwiGLU experts: set mlp=swiglu")
        _need(self.moe_inter_dim > 0, "moe_inter_dim must be positive")
        _need(
            0 < self.n_activated_experts <= self.n_routed_experts,
            f"n_activated_experts {self.n_activated_experts} must be in "
            f"1..n_routed_experts ({self.n_routed_experts})",
        )
        _need(self.n_shared_experts >= 0, "n_shared_experts must be >= 0")
        _need(
            self.n_routed_experts % self.n_expert_groups == 0,
            f"n_routed_experts {self.n_routed_experts} must be divisible by "
            f"n_expert_groups {self.n_expert_groups}",
        )
        _need(
            1 <= self.n_limited_groups <= self.n_expert_groups,
            "n_limited_groups must be in 1..n_expert_groups",
        )
        per_group = self.n_routed_experts // self.n_expert_groups
        _need(
            self.n_activated_experts <= self.n_limited_groups * per_group,
            "n_activated_experts exceeds the experts reachable in n_limited_groups groups",
        )
        _need(self.capacity_factor >= 0.0, "capacity_factor must be >= 0 (0 = no dropping)")
        _need(self.router_noise >= 0.0, "router_noise must be >= 0")
        _need(self.aux_loss_coeff >= 0.0, "aux_loss_coeff must be >= 0")
        _need(self.bias_update_speed >= 0.0, "bias_update_speed must be >= 0")
        _need(self.route_scale > 0.0, "route_scale must be positive")

    # ----------------------------------------------------------------- presets and io
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration with overrides; names: tiny, ismail-512, ismail-1024, gpt2-124m."""
        if name not in PRESETS:
            close = difflib.get_close_matches(name, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown preset {name!r}{hint}; choose from {sorted(PRESETS)}")
        values = {**PRESETS[name], **overrides}
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build and validate a config; an unknown key raises an error naming the closest field."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown ModelConfig field {key!r}{hint}")
        for key, value in d.items():
            _check_type(key, value)
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Write config.json atomically (path may be the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        """Read config.json (path may be the file or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"no model config at {path}; expected a config.json")
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _need(cond: bool, msg: str) -> None:
    """Raise the ValueError of an invalid ModelConfig unless cond holds."""
    if not cond:
        raise ValueError(f"invalid ModelConfig: {msg}")


@functools.cache
def _field_types() -> dict[str, tuple[type, ...]]:
    """The types each ModelConfig field accepts: `int | None` -> (int, NoneType)."""
    hints = typing.get_type_hints(ModelConfig)
    return {name: typing.get_args(hint) or (hint,) for name, hint in hints.items()}


def _check_type(name: str, value: Any) -> None:
    """Raise TypeError naming a ModelConfig field whose value has the wrong JSON type.

    Without it `dim: "abc"` fails inside validate() as "'>' not supported between str and
    int", which names neither the field nor the value. An int is accepted for a float field
    (a hand-written `"rope_theta": 10000`); a bool is not accepted for a number.
    """
    allowed = _field_types()[name]
    if isinstance(value, bool):
        ok = bool in allowed
    else:
        ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if not ok:
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise TypeError(
            f"ModelConfig field {name!r} is {value!r} ({type(value).__name__}); expected {expected}"
        )


PRESETS: dict[str, dict[str, Any]] = {
    # trains on a 2-core CPU in minutes
    "tiny": dict(
        vocab_size=32768,
        max_seq_len=256,
        dim=256,
        n_layers=6,
        n_heads=4,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        inter_dim=768,
        n_dense_layers=1,
        n_routed_experts=4,
        n_activated_experts=2,
        n_shared_experts=1,
        moe_inter_dim=256,
    ),
    # fits a 12 GB GPU for training
    "ismail-512": dict(
        vocab_size=32768,
        max_seq_len=512,
        dim=512,
        n_layers=16,
        n_heads=12,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        inter_dim=1536,
        n_dense_layers=1,
        n_routed_experts=4,
        n_activated_experts=2,
        n_shared_experts=1,
        moe_inter_dim=768,
    ),
    "ismail-1024": dict(
        vocab_size=32768,
        max_seq_len=2048,
        dim=1024,
        n_layers=20,
        n_heads=16,
        q_lora_rank=512,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        inter_dim=2816,
        n_dense_layers=3,
        n_routed_experts=6,
        n_activated_experts=2,
        n_shared_experts=1,
        moe_inter_dim=1024,
    ),
    # dense GPT-2 small baseline: MHA, learned positions, GELU MLP, LayerNorm, tied embeddings
    "gpt2-124m": dict(
        vocab_size=50257,
        max_seq_len=1024,
        dim=768,
        n_layers=12,
        n_heads=12,
        attention="mha",
        bias=True,
        pos_emb="learned",
        mlp="gelu",
        inter_dim=3072,
        n_dense_layers=12,
        n_routed_experts=0,
        norm="layernorm",
        norm_eps=1e-5,
        tie_embeddings=True,
    ),
}
