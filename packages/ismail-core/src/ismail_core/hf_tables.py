"""The Hugging Face architectures ismail exports to and imports from, one table each.

Each `HFArchitecture` (see hf_mapping.py for how its tables are read) says how a ModelConfig
becomes config.json and back, and how every parameter is named and laid out in transformers:
DeepseekV3 (MLA, with or without routed experts), Llama (dense RoPE with MHA or GQA), Mistral
(read as Llama plus a sliding window) and GPT-2 (learned positions, GELU, LayerNorm, biases).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from .config import ModelConfig
from .hf_mapping import (
    Const,
    Custom,
    Field,
    Fixed,
    Fuse,
    HFArchitecture,
    HFFormatError,
    RopeHalves,
    Split,
    Then,
    Transpose,
    WeightRow,
    row,
)
from .model.rope import yarn_mscale


# ---------------------------------------------------------------------------- rope settings
def _rope_parameters(cfg: ModelConfig, attention_factor: float) -> dict[str, Any]:
    if cfg.rope_factor == 1.0:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {
        "rope_type": "yarn",
        "rope_theta": cfg.rope_theta,
        "factor": cfg.rope_factor,
        "original_max_position_embeddings": cfg.yarn_original_len,
        "beta_fast": cfg.beta_fast,
        "beta_slow": cfg.beta_slow,
        # transformers multiplies cos/sin by attention_factor (so scores by its square)
        "attention_factor": attention_factor,
    }


def _rope_fields(rope: dict[str, Any]) -> dict[str, Any]:
    """The rope settings under every name readers look for: `rope_parameters` (transformers 5)
    and `rope_theta` + `rope_scaling` (transformers 4, llama.cpp's converter, vLLM)."""
    kind = rope["rope_type"]
    scaling = None if kind == "default" else {"type": kind, **rope}
    if scaling:
        del scaling["rope_theta"]
    return {"rope_parameters": rope, "rope_theta": rope["rope_theta"], "rope_scaling": scaling}


def _hf_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """transformers' rope settings: rope_parameters (v5), else rope_scaling (v4), else {}."""
    return dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})


def _read_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig rope fields from transformers' rope_parameters (v5) or rope_scaling (v4)."""
    params = _hf_rope(hf)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "default":
        return out
    if kind != "yarn":
        raise HFFormatError(f"rope_type {kind!r} is not supported (only default and yarn)")
    out.update(
        rope_factor=float(params["factor"]),
        original_max_seq_len=int(params["original_max_position_embeddings"]),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
    )
    return out


def _deepseek_rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    rope = _rope_parameters(cfg, 1.0)
    if cfg.rope_factor > 1.0:
        # DeepSeek convention: softmax scale *= mscale(factor, mscale_all_dim) ** 2
        rope.update(mscale=cfg.mscale, mscale_all_dim=cfg.mscale)
    return _rope_fields(rope)


def _deepseek_rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    rope = _read_rope(hf)
    if "rope_factor" in rope:
        rope["mscale"] = float(_hf_rope(hf).get("mscale_all_dim") or 0.0)
    return rope


def _llama_rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return _rope_fields(_rope_parameters(cfg, yarn_mscale(cfg.rope_factor, cfg.mscale)))


def _llama_rope_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    rope = _read_rope(hf)
    attention_factor = _hf_rope(hf).get("attention_factor")
    if "rope_factor" in rope and attention_factor is not None:
        # invert attention_factor = 0.1 * mscale * ln(factor) + 1
        rope["mscale"] = (attention_factor - 1) / (0.1 * math.log(rope["rope_factor"]))
    return rope


# ---------------------------------------------------------------------------- shared rows
def _swiglu(ismail: str, hf: str) -> tuple[WeightRow, ...]:
    """A SwiGLU MLP: w13 ([gate; up] stacked) is gate_proj and up_proj, w2 is down_proj."""
    return (
        row(f"{ismail}.w13.weight", (f"{hf}.gate_proj.weight", f"{hf}.up_proj.weight"), Split(2)),
        row(f"{ismail}.w2.weight", f"{hf}.down_proj.weight"),
    )


_L = "model.layers.{i}"
# the rows DeepseekV3 and Llama share: embeddings, norms, the output head and the dense MLP
_LLAMA_LIKE = (
    row("embed.weight", "model.embed_tokens.weight"),
    row("norm.weight", "model.norm.weight"),
    row("head.weight", "lm_head.weight"),
    row("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
    row("layers.{i}.ffn_norm.weight", f"{_L}.post_attention_layernorm.weight"),
    *_swiglu("layers.{i}.ffn", f"{_L}.mlp"),
)
# the config entries DeepseekV3 and Llama share (GPT-2 names these keys otherwise)
_LLAMA_LIKE_SIZES = (
    Field("vocab_size", "vocab_size"),
    Field("dim", "hidden_size"),
    Field("inter_dim", "intermediate_size"),
)
_LLAMA_LIKE_INIT = (
    Field("norm_eps", "rms_norm_eps", 1e-6),
    Field("init_std", "initializer_range", 0.02),
    Field("tie_embeddings", "tie_word_embeddings", False),
)


# ---------------------------------------------------------------------------- DeepseekV3
def _deepseek_routed_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    # a dense model exports one (unused) expert
    return {"n_routed_experts": cfg.n_routed_experts or 1}


def _deepseek_routed_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    dense = hf.get("first_k_dense_replace", 0) >= hf["num_hidden_layers"]
    return {"n_routed_experts": 0 if dense else hf["n_routed_experts"]}


def _deepseek_dense_layers_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    # a dense model exports all layers as dense
    dense = cfg.n_dense_layers if cfg.n_routed_experts else cfg.n_layers
    return {"first_k_dense_replace": dense}


def _deepseek_check(hf: dict[str, Any]) -> None:
    if hf.get("rope_interleave", True) is False:
        raise HFFormatError("rope_interleave=false DeepseekV3 checkpoints are not supported")


def _deepseek_fused_experts(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 keeps each layer's experts as 3-D tensors (gate_up_proj, down_proj):
    one tensor per expert, as transformers 4 and the table name them."""
    out = {}
    for name, tensor in weights.items():
        fused = re.match(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if not fused:
            out[name] = tensor
            continue
        prefix, kind = fused.groups()
        for e, w in enumerate(tensor):
            if kind == "down_proj":
                out[f"{prefix}.{e}.down_proj.weight"] = w
            else:
                gate, up = w.chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"] = gate
                out[f"{prefix}.{e}.up_proj.weight"] = up
    return out


DEEPSEEK_V3 = HFArchitecture(
    model_type="deepseek_v3",
    model_class="DeepseekV3ForCausalLM",
    config=(
        *_LLAMA_LIKE_SIZES,
        Field("moe_inter_dim", "moe_intermediate_size"),
        Field("n_layers", "num_hidden_layers"),
        Field("n_heads", "num_attention_heads"),
        Field("n_heads", "num_key_value_heads", read=False),
        Fixed("attention", "mla"),
        Field("n_shared_experts", "n_shared_experts", 0, or_default=True, dense=1),
        Custom(_deepseek_routed_to_hf, _deepseek_routed_from_hf),
        Field("n_activated_experts", "num_experts_per_tok", 1, or_default=True, dense=1),
        # How DeepSeek's own configs name the router (transformers assumes it; llama.cpp's
        # converter and vLLM read these): sigmoid scores, group-limited top-k with the
        # aux-loss-free bias, every layer after the dense ones is MoE, no expert parallelism.
        Const("scoring_func", "sigmoid"),
        Const("topk_method", "noaux_tc"),
        Field("n_expert_groups", "n_group", 1, or_default=True, dense=1),
        Field("n_limited_groups", "topk_group", 1, or_default=True, dense=1),
        Field("route_scale", "routed_scaling_factor", 1.0),
        Field("norm_topk_prob", "norm_topk_prob", True),
        Custom(
            _deepseek_dense_layers_to_hf,
            lambda hf: {"n_dense_layers": hf.get("first_k_dense_replace", 0)},
        ),
        Const("moe_layer_freq", 1),
        Const("ep_size", 1),
        Field("kv_lora_rank", "kv_lora_rank"),
        Custom(
            lambda cfg: {"q_lora_rank": cfg.q_lora_rank or None},
            lambda hf: {"q_lora_rank": hf.get("q_lora_rank") or 0},
        ),
        Field("qk_rope_head_dim", "qk_rope_head_dim"),
        Field("qk_nope_head_dim", "qk_nope_head_dim"),
        Field("v_head_dim", "v_head_dim"),
        Const("hidden_act", "silu"),
        Field("max_seq_len", "max_position_embeddings", 4096),
        *_LLAMA_LIKE_INIT,
        Custom(_deepseek_rope_to_hf, _deepseek_rope_from_hf),
        Const("rope_interleave", True),
        Const("attention_bias", False),
        Const("num_nextn_predict_layers", 0),
    ),
    weights=(
        *_LLAMA_LIKE,
        *(
            row(f"layers.{{i}}.attn.{ours}.weight", f"{_L}.self_attn.{theirs}.weight")
            for ours, theirs in (
                ("wq", "q_proj"),
                ("wq_a", "q_a_proj"),
                ("q_norm", "q_a_layernorm"),
                ("wq_b", "q_b_proj"),
                ("wkv_a", "kv_a_proj_with_mqa"),
                ("kv_norm", "kv_a_layernorm"),
                ("wkv_b", "kv_b_proj"),
                ("wo", "o_proj"),
            )
        ),
        row("layers.{i}.ffn.gate.weight", f"{_L}.mlp.gate.weight"),
        row("layers.{i}.ffn.gate.bias", f"{_L}.mlp.gate.e_score_correction_bias"),
        *_swiglu("layers.{i}.ffn.experts.{e}", f"{_L}.mlp.experts.{{e}}"),
        *_swiglu("layers.{i}.ffn.shared_experts", f"{_L}.mlp.shared_experts"),
    ),
    check=_deepseek_check,
    normalise=_deepseek_fused_experts,
)


# ---------------------------------------------------------------------------- Llama, Mistral
def _kv_heads_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    return {"attention": "mha" if kv == heads else "gqa", "n_kv_heads": None if kv == heads else kv}


def _llama_check(hf: dict[str, Any]) -> None:
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise HFFormatError("Llama checkpoints with attention_bias/mlp_bias are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFFormatError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")


LLAMA = HFArchitecture(
    model_type="llama",
    model_class="LlamaForCausalLM",
    config=(
        *_LLAMA_LIKE_SIZES,
        Field("n_layers", "num_hidden_layers"),
        Field("n_dense_layers", "num_hidden_layers", write=False),
        Fixed("n_routed_experts", 0),
        Field("n_heads", "num_attention_heads"),
        Custom(lambda cfg: {"num_key_value_heads": cfg.kv_heads}, _kv_heads_from_hf),
        # export writes the head size in use, import leaves None as the default it stands for
        Field("attn_head_dim", "head_dim", read=False),
        Field("head_dim", "head_dim", None, write=False),
        Const("hidden_act", "silu"),
        Field("max_seq_len", "max_position_embeddings", 2048),
        *_LLAMA_LIKE_INIT,
        Custom(_llama_rope_to_hf, _llama_rope_from_hf),
        Const("attention_bias", False),
        Const("mlp_bias", False),
    ),
    weights=(
        *_LLAMA_LIKE,
        row("layers.{i}.attn.wq.weight", f"{_L}.self_attn.q_proj.weight", RopeHalves()),
        row("layers.{i}.attn.wk.weight", f"{_L}.self_attn.k_proj.weight", RopeHalves()),
        row("layers.{i}.attn.wv.weight", f"{_L}.self_attn.v_proj.weight"),
        row("layers.{i}.attn.wo.weight", f"{_L}.self_attn.o_proj.weight"),
    ),
    check=_llama_check,
)

# Mistral (import only) is Llama plus an optional sliding window on every layer (layer_types,
# which MistralForCausalLM ignores, changes nothing). Both keep keys j with i - window < j <= i
# for query i, so the window carries over as it is (test_hf_import checks the logits).
MISTRAL = HFArchitecture(
    model_type="mistral",
    model_class="MistralForCausalLM",
    config=(*LLAMA.config, Field("sliding_window", "sliding_window", 0, or_default=True)),
    weights=LLAMA.weights,
    check=_llama_check,
)


# ---------------------------------------------------------------------------- GPT-2
def _gpt2_check(hf: dict[str, Any]) -> None:
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise HFFormatError("only GPT-2 models with the tanh GELU (gelu_new) are supported")


def _gpt2_legacy_names(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names of transformers' GPT2LMHeadModel: the original openai checkpoints have no
    `transformer.` prefix, and old ones store causal-mask buffers (dropped)."""
    out = {}
    for name, tensor in weights.items():
        if re.search(r"\.attn\.(masked_)?bias$", name):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        out[name] = tensor
    return out


_H = "transformer.h.{i}"
GPT2 = HFArchitecture(
    model_type="gpt2",
    model_class="GPT2LMHeadModel",
    config=(
        Field("vocab_size", "vocab_size"),
        Field("max_seq_len", "n_positions", 1024),
        Field("dim", "n_embd"),
        Field("n_layers", "n_layer"),
        Field("n_dense_layers", "n_layer", write=False),
        Field("n_heads", "n_head"),
        Custom(
            lambda cfg: {"n_inner": cfg.inter_dim},
            lambda hf: {"inter_dim": hf.get("n_inner") or 4 * hf["n_embd"]},
        ),
        Const("activation_function", "gelu_new"),
        Field("norm_eps", "layer_norm_epsilon", 1e-5),
        Field("init_std", "initializer_range", 0.02),
        Const("resid_pdrop", 0.0),
        Const("embd_pdrop", 0.0),
        Const("attn_pdrop", 0.0),
        Const("scale_attn_weights", True),
        Field("tie_embeddings", "tie_word_embeddings", True),
        Fixed("attention", "mha"),
        Fixed("bias", True),
        Fixed("pos_emb", "learned"),
        Fixed("mlp", "gelu"),
        Fixed("norm", "layernorm"),
        Fixed("n_routed_experts", 0),
    ),
    weights=(
        row("embed.weight", "transformer.wte.weight"),
        row("pos_embed.weight", "transformer.wpe.weight"),
        row("norm.{p}", "transformer.ln_f.{p}"),
        row("head.weight", "lm_head.weight"),
        row("layers.{i}.attn_norm.{p}", f"{_H}.ln_1.{{p}}"),
        row("layers.{i}.ffn_norm.{p}", f"{_H}.ln_2.{{p}}"),
        # GPT-2's Conv1D linears are stored transposed; q, k and v are one (c_attn)
        row(
            tuple(f"layers.{{i}}.attn.w{c}.{{p}}" for c in "qkv"),
            f"{_H}.attn.c_attn.{{p}}",
            Then(Fuse(3), Transpose()),
        ),
        row("layers.{i}.attn.wo.{p}", f"{_H}.attn.c_proj.{{p}}", Transpose()),
        row("layers.{i}.ffn.fc.{p}", f"{_H}.mlp.c_fc.{{p}}", Transpose()),
        row("layers.{i}.ffn.proj.{p}", f"{_H}.mlp.c_proj.{{p}}", Transpose()),
    ),
    check=_gpt2_check,
    normalise=_gpt2_legacy_names,
)

# The architectures import reads, by config.json model_type (export writes all but Mistral).
ARCHITECTURES = {a.model_type: a for a in (DEEPSEEK_V3, LLAMA, MISTRAL, GPT2)}
# model types recognised only to say why they cannot be imported
REFUSED = {
    "qwen2": "Qwen2 has biases on its q/k/v projections but none on o_proj or the MLP, and an "
    "ismail model has biases on all of them or none (ModelConfig.bias): it cannot be imported "
    "exactly",
}
