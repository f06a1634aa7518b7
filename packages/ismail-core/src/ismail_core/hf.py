"""Export to and import from Hugging Face transformers format (config.json + safetensors).

An MLA model becomes `DeepseekV3ForCausalLM`, a dense RoPE model with standard attention
becomes `LlamaForCausalLM`, and the GPT-2 baseline becomes `GPT2LMHeadModel`; each loads with
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)`. `import_hf` reads such folders
back (including GPT-2, Llama, Mistral and DeepSeek-V3 folders saved by transformers itself).
transformers is not needed at run time: configs and weights are mapped here directly. The
whole folders, with tokenizer files, generation config and model card, are hf_export's
(`ismail export`) and hf_import's (`ismail import`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from .atomic import atomic_dir, atomic_write_json
from .config import ModelConfig
from .errors import IsmailError
from .model import Transformer
from .model.rope import yarn_mscale

# The files of a transformers folder that export and import read or write.
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


class HFFormatError(IsmailError, ValueError):
    """A model that has no Hugging Face equivalent, or a folder this module cannot read."""


# ---------------------------------------------------------------------------- architecture
def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers model_type a config exports to: deepseek_v3, llama or gpt2."""
    if cfg.attention == "latent":
        raise HFFormatError(
            "attention='latent' (a sliding window plus a causal latent memory) has no "
            "transformers equivalent, so it cannot export to a Hugging Face folder; serve the "
            "checkpoint with ismail-serve or `ismail generate`, or train with attention='mla', "
            "'mha' or 'gqa' (sliding_window=0) to export"
        )
    if cfg.sliding_window:
        raise HFFormatError("sliding-window attention has no exporter; set sliding_window=0")
    if cfg.attention == "mla":
        if cfg.n_routed_experts:
            if cfg.score_func != "sigmoid":
                raise HFFormatError(
                    "DeepseekV3 routes with sigmoid scores; softmax gates cannot export"
                )
            if cfg.capacity_factor > 0:
                raise HFFormatError(
                    "DeepseekV3 never drops tokens; a capacity_factor model cannot export exactly"
                )
            if cfg.n_shared_experts == 0:
                raise HFFormatError("DeepseekV3 always has shared experts; n_shared_experts is 0")
        if cfg.bias or cfg.norm != "rmsnorm" or cfg.mlp != "swiglu":
            raise HFFormatError("DeepseekV3 export needs bias=False, norm=rmsnorm, mlp=swiglu")
        return "deepseek_v3"
    if cfg.n_routed_experts and any(cfg.is_moe_layer(i) for i in range(cfg.n_layers)):
        raise HFFormatError("mixture-of-experts export needs attention='mla' (DeepseekV3)")
    if cfg.pos_emb == "rope":
        if cfg.bias or cfg.norm != "rmsnorm" or cfg.mlp != "swiglu":
            raise HFFormatError("Llama export needs bias=False, norm=rmsnorm, mlp=swiglu")
        return "llama"
    if cfg.attention == "mha" and cfg.mlp == "gelu" and cfg.norm == "layernorm" and cfg.bias:
        return "gpt2"
    raise HFFormatError(
        "no transformers architecture matches this config: use MLA (DeepseekV3), RoPE+SwiGLU+"
        "RMSNorm (Llama) or learned positions+GELU+LayerNorm+bias MHA (GPT-2)"
    )


def _rope_parameters(cfg: ModelConfig, attention_factor: float) -> dict:
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


def _rope_fields(rope: dict) -> dict:
    """The rope settings under every name readers look for: `rope_parameters` (transformers 5)
    and `rope_theta` + `rope_scaling` (transformers 4, llama.cpp's converter, vLLM)."""
    kind = rope["rope_type"]
    scaling = None if kind == "default" else {"type": kind, **rope}
    if scaling:
        del scaling["rope_theta"]
    return {"rope_parameters": rope, "rope_theta": rope["rope_theta"], "rope_scaling": scaling}


def _read_rope(hf: dict) -> dict:
    """ModelConfig rope fields from transformers' rope_parameters (v5) or rope_scaling (v4)."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    out = {"rope_theta": float(theta)}
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


# ---------------------------------------------------------------------------- configs
def _deepseek_config(cfg: ModelConfig) -> dict:
    moe = cfg.n_routed_experts > 0
    rope = _rope_parameters(cfg, 1.0)
    if cfg.rope_factor > 1.0:
        # DeepSeek convention: softmax scale *= mscale(factor, mscale_all_dim) ** 2
        rope.update(mscale=cfg.mscale, mscale_all_dim=cfg.mscale)
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.inter_dim,
        "moe_intermediate_size": cfg.moe_inter_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "n_shared_experts": cfg.n_shared_experts if moe else 1,
        "n_routed_experts": cfg.n_routed_experts if moe else 1,
        "num_experts_per_tok": cfg.n_activated_experts if moe else 1,
        # How DeepSeek's own configs name the router (transformers assumes it; llama.cpp's
        # converter and vLLM read these): sigmoid scores, group-limited top-k with the
        # aux-loss-free bias, every layer after the dense ones is MoE, no expert parallelism.
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "n_group": cfg.n_expert_groups if moe else 1,
        "topk_group": cfg.n_limited_groups if moe else 1,
        "routed_scaling_factor": cfg.route_scale,
        "norm_topk_prob": cfg.norm_topk_prob,
        "first_k_dense_replace": cfg.n_dense_layers if moe else cfg.n_layers,
        "moe_layer_freq": 1,
        "ep_size": 1,
        "kv_lora_rank": cfg.kv_lora_rank,
        "q_lora_rank": cfg.q_lora_rank or None,
        "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "qk_nope_head_dim": cfg.qk_nope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        **_rope_fields(rope),
        "rope_interleave": True,
        "attention_bias": False,
        "num_nextn_predict_layers": 0,
    }


def _deepseek_from_hf(hf: dict) -> dict:
    if hf.get("rope_interleave", True) is False:
        raise HFFormatError("rope_interleave=false DeepseekV3 checkpoints are not supported")
    rope = _read_rope(hf)
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if "rope_factor" in rope:
        rope["mscale"] = float(params.get("mscale_all_dim") or 0.0)
    n_layers = hf["num_hidden_layers"]
    dense = hf.get("first_k_dense_replace", 0)
    moe = dense < n_layers
    return dict(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        dim=hf["hidden_size"],
        n_layers=n_layers,
        n_heads=hf["num_attention_heads"],
        attention="mla",
        q_lora_rank=hf.get("q_lora_rank") or 0,
        kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"],
        inter_dim=hf["intermediate_size"],
        n_dense_layers=dense,
        n_routed_experts=hf["n_routed_experts"] if moe else 0,
        n_shared_experts=hf.get("n_shared_experts") or 0,
        n_activated_experts=hf.get("num_experts_per_tok") or 1,
        moe_inter_dim=hf["moe_intermediate_size"],
        n_expert_groups=hf.get("n_group") or 1,
        n_limited_groups=hf.get("topk_group") or 1,
        route_scale=hf.get("routed_scaling_factor", 1.0),
        norm_topk_prob=hf.get("norm_topk_prob", True),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        init_std=hf.get("initializer_range", 0.02),
        **rope,
    )


def _llama_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.inter_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.attn_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        **_rope_fields(_rope_parameters(cfg, yarn_mscale(cfg.rope_factor, cfg.mscale))),
        "attention_bias": False,
        "mlp_bias": False,
    }


def _llama_from_hf(hf: dict) -> dict:
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise HFFormatError("Llama checkpoints with attention_bias/mlp_bias are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise HFFormatError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    heads, kv = (
        hf["num_attention_heads"],
        hf.get("num_key_value_heads") or hf["num_attention_heads"],
    )
    rope = _read_rope(hf)
    if "rope_factor" in rope:
        params = hf.get("rope_parameters") or hf.get("rope_scaling")
        attention_factor = params.get("attention_factor")
        if attention_factor is not None:  # invert attention_factor = 0.1 * mscale * ln(f) + 1
            rope["mscale"] = (attention_factor - 1) / (0.1 * math.log(rope["rope_factor"]))
    return dict(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        attention="mha" if kv == heads else "gqa",
        n_kv_heads=None if kv == heads else kv,
        head_dim=hf.get("head_dim"),
        inter_dim=hf["intermediate_size"],
        n_dense_layers=hf["num_hidden_layers"],
        n_routed_experts=0,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        init_std=hf.get("initializer_range", 0.02),
        **rope,
    )


def _mistral_from_hf(hf: dict) -> dict:
    """Mistral is Llama plus an optional sliding window on every layer (layer_types, which
    MistralForCausalLM ignores, changes nothing). Both keep keys j with i - window < j <= i
    for query i, so the window carries over as it is (test_hf_import checks the logits)."""
    return dict(_llama_from_hf(hf), sliding_window=hf.get("sliding_window") or 0)


def _gpt2_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.inter_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _gpt2_from_hf(hf: dict) -> dict:
    dim = hf["n_embd"]
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise HFFormatError("only GPT-2 models with the tanh GELU (gelu_new) are supported")
    return dict(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("n_positions", 1024),
        dim=dim,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        attention="mha",
        bias=True,
        pos_emb="learned",
        mlp="gelu",
        inter_dim=hf.get("n_inner") or 4 * dim,
        n_dense_layers=hf["n_layer"],
        n_routed_experts=0,
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        init_std=hf.get("initializer_range", 0.02),
    )


# ---------------------------------------------------------------------------- weight names
_W = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
_L = r"^layers\.(\d+)\."

_DEEPSEEK_RULES = [
    (r"^embed\.", "model.embed_tokens."),
    (r"^norm\.", "model.norm."),
    (r"^head\.", "lm_head."),
    (_L + r"attn_norm\.", r"model.layers.\1.input_layernorm."),
    (_L + r"ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (_L + r"attn\.wq\.", r"model.layers.\1.self_attn.q_proj."),
    (_L + r"attn\.wq_a\.", r"model.layers.\1.self_attn.q_a_proj."),
    (_L + r"attn\.q_norm\.", r"model.layers.\1.self_attn.q_a_layernorm."),
    (_L + r"attn\.wq_b\.", r"model.layers.\1.self_attn.q_b_proj."),
    (_L + r"attn\.wkv_a\.", r"model.layers.\1.self_attn.kv_a_proj_with_mqa."),
    (_L + r"attn\.kv_norm\.", r"model.layers.\1.self_attn.kv_a_layernorm."),
    (_L + r"attn\.wkv_b\.", r"model.layers.\1.self_attn.kv_b_proj."),
    (_L + r"attn\.wo\.", r"model.layers.\1.self_attn.o_proj."),
    (_L + r"ffn\.gate\.weight$", r"model.layers.\1.mlp.gate.weight"),
    (_L + r"ffn\.gate\.bias$", r"model.layers.\1.mlp.gate.e_score_correction_bias"),
    *[
        (_L + rf"ffn\.experts\.(\d+)\.{w}\.", rf"model.layers.\1.mlp.experts.\2.{p}.")
        for w, p in _W.items()
    ],
    *[
        (_L + rf"ffn\.shared_experts\.{w}\.", rf"model.layers.\1.mlp.shared_experts.{p}.")
        for w, p in _W.items()
    ],
    *[(_L + rf"ffn\.{w}\.", rf"model.layers.\1.mlp.{p}.") for w, p in _W.items()],
]

_LLAMA_RULES = [
    (r"^embed\.", "model.embed_tokens."),
    (r"^norm\.", "model.norm."),
    (r"^head\.", "lm_head."),
    (_L + r"attn_norm\.", r"model.layers.\1.input_layernorm."),
    (_L + r"ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    *[(_L + rf"attn\.w{c}\.", rf"model.layers.\1.self_attn.{c}_proj.") for c in "qkvo"],
    *[(_L + rf"ffn\.{w}\.", rf"model.layers.\1.mlp.{p}.") for w, p in _W.items()],
]

# GPT-2's fused c_attn is split into the pseudo names c_attn.{q,k,v} here and fused on write
_GPT2_RULES = [
    (r"^embed\.", "transformer.wte."),
    (r"^pos_embed\.", "transformer.wpe."),
    (r"^norm\.", "transformer.ln_f."),
    (r"^head\.", "lm_head."),
    (_L + r"attn_norm\.", r"transformer.h.\1.ln_1."),
    (_L + r"ffn_norm\.", r"transformer.h.\1.ln_2."),
    *[(_L + rf"attn\.w{c}\.", rf"transformer.h.\1.attn.c_attn.{c}.") for c in "qkv"],
    (_L + r"attn\.wo\.", r"transformer.h.\1.attn.c_proj."),
    (_L + r"ffn\.fc\.", r"transformer.h.\1.mlp.c_fc."),
    (_L + r"ffn\.proj\.", r"transformer.h.\1.mlp.c_proj."),
]

_RULES = {"deepseek_v3": _DEEPSEEK_RULES, "llama": _LLAMA_RULES, "gpt2": _GPT2_RULES}
_CONFIG_TO_HF: dict[str, Callable[[ModelConfig], dict]] = {
    "deepseek_v3": _deepseek_config,
    "llama": _llama_config,
    "gpt2": _gpt2_config,
}
_CONFIG_FROM_HF: dict[str, Callable[[dict], dict]] = {
    "deepseek_v3": _deepseek_from_hf,
    "llama": _llama_from_hf,
    "mistral": _mistral_from_hf,
    "gpt2": _gpt2_from_hf,
}
# model types recognised only to say why they cannot be imported
_REFUSED_FROM_HF = {
    "qwen2": "Qwen2 has biases on its q/k/v projections but none on o_proj or the MLP, and an "
    "ismail model has biases on all of them or none (ModelConfig.bias): it cannot be imported "
    "exactly",
}
# model types whose weights are laid out (named, rope-ordered) as another's
_WEIGHT_LAYOUT = {"mistral": "llama"}


def _hf_name(name: str, rules) -> str:
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, name)
        if n:
            return new
    raise HFFormatError(f"no Hugging Face name for parameter {name!r}")


def _interleaved_to_half(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order turning per-head interleaved rope pairs (2i, 2i+1) into halves (i, i+d/2)."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(n_heads)[:, None] * head_dim + per_head).reshape(-1)


def _llama_qk_rows(cfg: ModelConfig, name: str) -> torch.Tensor | None:
    """Llama's order for the output rows of the q/k projection `name` (ismail's per-head
    interleaved rope pairs become halves); None when `name` is no q/k projection."""
    match = re.search(r"attn\.w([qk])\.", name)
    if match is None:
        return None
    heads = cfg.n_heads if match.group(1) == "q" else cfg.kv_heads
    return _interleaved_to_half(heads, cfg.attn_head_dim)


def _is_conv1d(hf_name: str) -> bool:
    """GPT-2 stores these linears transposed (Conv1D: in_features x out_features)."""
    return re.search(r"\.(c_attn\.[qkv]|c_proj|c_fc)\.weight$", hf_name) is not None


def _split_w13(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split each SwiGLU's stacked w13 into w1 (gate) and w3 (up), the halves HF stores."""
    out = {}
    for name, tensor in state.items():
        if ".w13." in name:
            gate, up = tensor.chunk(2, dim=0)
            out[name.replace(".w13.", ".w1.")] = gate
            out[name.replace(".w13.", ".w3.")] = up
        else:
            out[name] = tensor
    return out


def _hf_side_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict as HF lays it out: tied weights once (the embedding), w13 split."""
    state = model.state_dict()
    if model.cfg.tie_embeddings:
        del state["head.weight"]
    return _split_w13(state)


def _to_hf_tensors(model: Transformer, arch: str) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    state = _hf_side_state(model)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        hf_name = _hf_name(name, _RULES[arch])
        tensor = tensor.detach().cpu()
        rows = _llama_qk_rows(cfg, name) if arch == "llama" else None
        if rows is not None:
            tensor = tensor[rows]
        if arch == "gpt2" and _is_conv1d(hf_name):
            tensor = tensor.t()
        out[hf_name] = tensor.contiguous()
    if arch == "gpt2":
        for i in range(cfg.n_layers):
            prefix = f"transformer.h.{i}.attn.c_attn"
            w = [out.pop(f"{prefix}.{c}.weight") for c in "qkv"]
            b = [out.pop(f"{prefix}.{c}.bias") for c in "qkv"]
            out[f"{prefix}.weight"] = torch.cat(w, dim=1).contiguous()
            out[f"{prefix}.bias"] = torch.cat(b).contiguous()
    return out


# ---------------------------------------------------------------------------- public API
def export_hf(model: Transformer, out_dir: str | Path) -> Path:
    """Write `model` as a transformers folder (config.json + model.safetensors), atomically.

    Returns the folder, which `AutoModelForCausalLM.from_pretrained` loads as DeepseekV3, Llama
    or GPT-2 depending on the config (see hf_architecture); raises HFFormatError otherwise.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        _write_hf(model, tmp)
    return out_dir


def _write_hf(model: Transformer, directory: Path, token_ids: dict | None = None) -> None:
    """Write config.json and model.safetensors of `model` into the existing `directory`;
    `token_ids` (bos/eos/pad_token_id) go into the config, else they are null."""
    from safetensors.torch import save_file

    arch = hf_architecture(model.cfg)
    tensors = _to_hf_tensors(model, arch)
    config = _CONFIG_TO_HF[arch](model.cfg)
    config.update(token_ids or dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id")))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config.update(dtype=dtype, torch_dtype=dtype)  # transformers 5's name and 4's
    save_file(tensors, str(directory / HF_WEIGHTS_FILE), metadata={"format": "pt"})
    atomic_write_json(directory / HF_CONFIG_FILE, config)


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = directory / HF_WEIGHTS_FILE
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(directory / shard)).items()}
    if (directory / "pytorch_model.bin").exists():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise HFFormatError(
        f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _normalise_hf_names(weights: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Bring variants transformers itself writes to the names export_hf uses."""
    out = {}
    for name, tensor in weights.items():
        if arch == "gpt2":
            if re.search(r"\.attn\.(masked_)?bias$", name):
                continue  # causal-mask buffers of old GPT-2 checkpoints
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name  # the original openai checkpoints have no prefix
        fused = re.match(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if fused:  # transformers v5 keeps experts as 3-D tensors
            prefix, kind = fused.groups()
            for e, w in enumerate(tensor):
                if kind == "down_proj":
                    out[f"{prefix}.{e}.down_proj.weight"] = w
                else:
                    gate, up = w.chunk(2, dim=0)
                    out[f"{prefix}.{e}.gate_proj.weight"] = gate
                    out[f"{prefix}.{e}.up_proj.weight"] = up
            continue
        out[name] = tensor
    if arch == "gpt2":
        for name in [n for n in out if n.endswith(".attn.c_attn.weight")]:
            prefix = name.removesuffix(".weight")
            for c, w in zip("qkv", out.pop(name).chunk(3, dim=1)):
                out[f"{prefix}.{c}.weight"] = w
            for c, b in zip("qkv", out.pop(prefix + ".bias").chunk(3)):
                out[f"{prefix}.{c}.bias"] = b
    return out


def read_hf_config(directory: str | Path) -> dict:
    """The config.json of a transformers folder, checked to be of a model_type import_hf
    reads; raises HFFormatError naming the problem otherwise."""
    config_file = Path(directory) / HF_CONFIG_FILE
    if not config_file.is_file():
        raise HFFormatError(f"{directory} has no config.json; pass a Hugging Face model folder")
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HFFormatError(f"{config_file} is not valid JSON ({exc})") from exc
    arch = hf.get("model_type") if isinstance(hf, dict) else None
    if arch is None:
        raise HFFormatError(f"{config_file} names no model_type: it is no transformers model")
    if arch in _REFUSED_FROM_HF:
        raise HFFormatError(f"{directory}: {_REFUSED_FROM_HF[arch]}")
    if arch not in _CONFIG_FROM_HF:
        raise HFFormatError(
            f"model_type {arch!r} is not supported; import needs one of {sorted(_CONFIG_FROM_HF)}"
        )
    return hf


def import_hf(directory: str | Path, dtype: torch.dtype | None = None) -> Transformer:
    """Load a transformers folder (DeepseekV3, Llama, Mistral or GPT-2 causal LM) as a
    Transformer."""
    directory = Path(directory)
    hf = read_hf_config(directory)
    arch = hf["model_type"]
    cfg = ModelConfig.from_dict(_CONFIG_FROM_HF[arch](hf))
    layout = _WEIGHT_LAYOUT.get(arch, arch)
    weights = _normalise_hf_names(_read_hf_weights(directory), layout)
    model = Transformer(cfg)
    state = {}
    for name in _hf_side_state(model):
        hf_name = _hf_name(name, _RULES[layout])
        if hf_name not in weights:
            raise HFFormatError(f"{directory}: weight {hf_name!r} (for {name}) is missing")
        tensor = weights[hf_name]
        if layout == "gpt2" and _is_conv1d(hf_name):
            tensor = tensor.t()
        rows = _llama_qk_rows(cfg, name) if layout == "llama" else None
        if rows is not None:
            tensor = tensor[torch.argsort(rows)]
        state[name] = tensor
    for name in [n for n in state if ".w1." in n]:
        up = state.pop(name.replace(".w1.", ".w3."))
        state[name.replace(".w1.", ".w13.")] = torch.cat([state.pop(name), up])
    if cfg.tie_embeddings:
        state["head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model.to(dtype)
    return model
