"""Export to and import from Hugging Face transformers format (config.json + safetensors).

An MLA model becomes `DeepseekV3ForCausalLM`, a dense RoPE model with standard attention
becomes `LlamaForCausalLM`, and the GPT-2 baseline becomes `GPT2LMHeadModel`; each loads with
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)`. `import_hf` reads such folders
back (including GPT-2, Llama, Mistral and DeepSeek-V3 folders saved by transformers itself).
transformers is not needed at run time: configs and weights are mapped directly, through one
table per architecture (hf_tables.py) that export and import both read (hf_mapping.py). The
whole folders, with tokenizer files, generation config and model card, are hf_export's
(`ismail export`) and hf_import's (`ismail import`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_dir, atomic_write_json
from .config import ModelConfig
from .hf_mapping import HFFormatError, from_hf_tensors, to_hf_tensors
from .hf_tables import ARCHITECTURES, REFUSED
from .model import Transformer

__all__ = [
    "GENERATION_CONFIG_FILE",
    "HF_CONFIG_FILE",
    "HF_WEIGHTS_FILE",
    "TOKENIZER_CONFIG_FILE",
    "HFFormatError",
    "export_hf",
    "hf_architecture",
    "import_hf",
    "read_hf_config",
    "write_hf",
]

# The files of a transformers folder that export and import read or write.
HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


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


# ---------------------------------------------------------------------------- public API
def export_hf(model: Transformer, out_dir: str | Path) -> Path:
    """Write `model` as a transformers folder (config.json + model.safetensors), atomically.

    Returns the folder, which `AutoModelForCausalLM.from_pretrained` loads as DeepseekV3, Llama
    or GPT-2 depending on the config (see hf_architecture); raises HFFormatError otherwise.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_hf(model, tmp)
    return out_dir


def write_hf(
    model: Transformer, directory: Path, token_ids: dict[str, int | None] | None = None
) -> None:
    """Write config.json and model.safetensors of `model` into the existing `directory`;
    `token_ids` (bos/eos/pad_token_id) go into the config, else they are null."""
    from safetensors.torch import save_file

    arch = ARCHITECTURES[hf_architecture(model.cfg)]
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        del state["head.weight"]  # HF stores tied weights once, as the embedding
    tensors = to_hf_tensors(arch.weights, state, model.cfg)
    config: dict[str, Any] = arch.config_to_hf(model.cfg)
    config.update(token_ids or dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id")))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config.update(dtype=dtype, torch_dtype=dtype)  # transformers 5's name and 4's
    contiguous = {name: t.contiguous() for name, t in tensors.items()}
    save_file(contiguous, str(directory / HF_WEIGHTS_FILE), metadata={"format": "pt"})
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
    if arch in REFUSED:
        raise HFFormatError(f"{directory}: {REFUSED[arch]}")
    if arch not in ARCHITECTURES:
        raise HFFormatError(
            f"model_type {arch!r} is not supported; import needs one of {sorted(ARCHITECTURES)}"
        )
    return hf


def import_hf(directory: str | Path, dtype: torch.dtype | None = None) -> Transformer:
    """Load a transformers folder (DeepseekV3, Llama, Mistral or GPT-2 causal LM) as a
    Transformer."""
    directory = Path(directory)
    hf = read_hf_config(directory)
    arch = ARCHITECTURES[hf["model_type"]]
    cfg = ModelConfig.from_dict(arch.config_from_hf(hf))
    weights = arch.normalise(_read_hf_weights(directory))

    def fetch(hf_name: str, name: str) -> torch.Tensor:
        if hf_name not in weights:
            raise HFFormatError(f"{directory}: weight {hf_name!r} (for {name}) is missing")
        return weights[hf_name]

    model = Transformer(cfg)
    names = [n for n in model.state_dict() if not (cfg.tie_embeddings and n == "head.weight")]
    state = from_hf_tensors(arch.weights, names, fetch, cfg)
    if cfg.tie_embeddings:
        state["head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model.to(dtype)
    return model
