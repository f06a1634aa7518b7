"""LoRA adapters of ismail checkpoints as PEFT adapters of their transformers export.

`ismail export --format hf` writes a LoRA checkpoint's base model with `hf.export_hf` and its
adapter with `export_adapter_hf`, so that

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT), OUT / "adapter")

gives ismail's logits. Every conversion is exact (no refactoring of the low-rank factors):

- names follow the weight's row of the architecture's table (hf_tables.py):
  `layers.0.attn.wkv_b.lora_A.weight` becomes
  `base_model.model.model.layers.0.self_attn.kv_b_proj.lora_A.weight`;
- lora_B's rows go through the row's transform as the weight's rows do (w13's [gate; up]
  split into gate_proj and up_proj, Llama's rope order of q/k), and every HF weight of the
  row keeps lora_A;
- DeepseekV3's routed experts are 3-D parameters (`mlp.experts.gate_up_proj`, `down_proj`),
  adapted through peft's `target_parameters`: each layer's expert factors are stacked into
  the one lora_A/lora_B pair of peft's ParamWrapper.

DeepseekV3's dense and shared-expert MLP linears are named in `target_parameters` too (as
`mlp.gate_proj.weight`): peft rewrites gate_proj/up_proj/down_proj in a DeepseekV3
`target_modules` to the fused experts (its conversion of transformers v4 adapters), which
would leave those linears without their adapter. The saved keys are the same either way.
GPT-2 is refused: its q, k and v share one Conv1D (c_attn).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import ModelConfig
from .finetune.lora import (
    LoraSettings,
    _peft,
    read_settings,
)
from .hf import hf_architecture
from .hf_mapping import HFFormatError, WeightRow, find_row
from .hf_tables import ARCHITECTURES
from .layout import ADAPTER_WEIGHTS

# The prefix of every key PeftModel saves and loads for a causal LM.
_PEFT_PREFIX = "base_model.model."
_EXPERT = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w13|w2)\.lora_([AB])\.weight$")
# ismail's expert linears and transformers' fused parameters: w13's [gate; up] row order is
# gate_up_proj's already.
_FUSED = {"w13": "gate_up_proj", "w2": "down_proj"}
_LAYER = re.compile(r"^model\.layers\.\d+\.")


def export_adapter_hf(adapter_dir: Path, cfg: ModelConfig, out_dir: Path, base: Path) -> None:
    """Write the ismail adapter in `adapter_dir` (for a model of `cfg`) into the existing
    `out_dir` as a PEFT adapter of the transformers export of that model in `base`."""
    from safetensors.torch import load_file

    arch = hf_architecture(cfg)
    if arch == "gpt2":
        raise HFFormatError(
            "a LoRA adapter of a GPT-2 model cannot export: transformers' GPT-2 computes q, k "
            "and v in one Conv1D (c_attn), which has no exact PEFT equivalent of three adapters; "
            "fine-tune with --finetune.merge true and export the merged weights"
        )
    settings = read_settings(adapter_dir)
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    routed = {found.groups(): t for n, t in state.items() if (found := _EXPERT.match(n))}
    tensors, parameters = _fused_experts(routed)
    modules = set()
    for name in [n for n in state if not _EXPERT.match(n)]:
        for hf_name, tensor in _lora_factors(ARCHITECTURES[arch].weights, name, state[name], cfg):
            tensors[hf_name] = tensor
            target = _LAYER.sub("", hf_name.rpartition(".lora_")[0])
            if arch == "deepseek_v3" and target.startswith("mlp."):
                parameters.add(target + ".weight")
            else:
                modules.add(target)
    _write_peft_adapter(tensors, settings, sorted(modules), sorted(parameters), out_dir, base)


def _lora_factors(
    rows: Sequence[WeightRow], name: str, tensor: torch.Tensor, cfg: ModelConfig
) -> list[tuple[str, torch.Tensor]]:
    """The HF names and tensors of the LoRA factor `name` (`X.lora_A.weight` or
    `X.lora_B.weight`, adapting `X.weight`): lora_B goes through the transform of X's row,
    which acts on output rows alone in every table PEFT adapters export from; lora_A is the
    same for each HF weight of the row (copied: safetensors stores no tensor twice)."""
    module, _, factor = name.partition(".lora_")
    found, values = find_row(rows, module + ".weight")
    _, hf_names = found.names(values)
    if factor == "B.weight":
        factors = found.transform.forward([tensor], cfg)
    else:
        factors = [tensor, *(tensor.clone() for _ in hf_names[1:])]
    suffix = ".lora_" + factor
    return [
        (hf.removesuffix(".weight") + suffix, t) for hf, t in zip(hf_names, factors, strict=True)
    ]


def _fused_experts(
    routed: dict[tuple[str, ...], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The routed experts' adapters (`routed`, by the groups of their names' _EXPERT match) in
    the layout of peft's ParamWrapper on the fused expert parameters, and those parameters'
    `target_parameters` names.

    ParamWrapper reads expert e's factors as A.reshape(E, r, in)[e] and
    B.reshape(out, r, E)[:, :, e]: lora_A stacks the experts' A along its rows, lora_B
    interleaves their B columns.
    """
    factors: dict[tuple[str, str], dict[str, dict[int, torch.Tensor]]] = {}
    for (layer, expert, linear, kind), tensor in routed.items():
        factors.setdefault((layer, linear), {}).setdefault(kind, {})[int(expert)] = tensor
    tensors = {}
    for (layer, linear), per_kind in factors.items():
        a, b = ([per_kind[k][e] for e in sorted(per_kind[k])] for k in "AB")
        # peft wraps the experts module once per adapted parameter, in the module's parameter
        # order, so with both adapted gate_up_proj's wrapper is the inner one (base_layer)
        inner = ".base_layer" if linear == "w13" and (layer, "w2") in factors else ""
        prefix = f"model.layers.{layer}.mlp.experts{inner}"
        tensors[f"{prefix}.lora_A.weight"] = torch.cat(a)
        tensors[f"{prefix}.lora_B.weight"] = torch.stack(b, dim=-1).flatten(1)
    return tensors, {f"mlp.experts.{_FUSED[linear]}" for _, linear in factors}


def _write_peft_adapter(
    tensors: dict[str, torch.Tensor],
    settings: LoraSettings,
    modules: list[str],
    parameters: list[str],
    out_dir: Path,
    base: Path,
) -> None:
    """adapter_config.json and adapter_model.safetensors as `PeftModel.save_pretrained` writes
    them; targets are names inside a decoder layer ("self_attn.kv_b_proj")."""
    from safetensors.torch import save_file

    config = _peft().LoraConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=str(base),
        r=settings.rank,
        lora_alpha=settings.alpha,
        # ParamWrapper has no dropout; dropout acts in training only, the logits are the same
        lora_dropout=0.0 if parameters else settings.dropout,
        # a list, even empty: None would make peft pick default targets for the model type
        target_modules=modules,
        target_parameters=parameters or None,
    )
    config.save_pretrained(str(out_dir))
    state = {_PEFT_PREFIX + n: t.contiguous() for n, t in tensors.items()}
    save_file(state, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
