"""The Hugging Face architecture tables: export then import through a table is the identity,
row by row and on whole models, and every row of every table is used by some model."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.config import ModelConfig
from ismail_core.hf import hf_architecture
from ismail_core.hf_mapping import WeightRow, find_row, from_hf_tensors, to_hf_tensors
from ismail_core.hf_tables import ARCHITECTURES
from ismail_core.model import Transformer

sys.path.insert(0, str(Path(__file__).parent))  # tiny_setup.py (see its docstring)
from tiny_setup import SMALL_MOE  # noqa: E402

# tiny_setup's MoE shape, smaller still, with a shared expert (its rows are in the tables)
MLA = dict(SMALL_MOE, vocab_size=64, max_seq_len=32, n_layers=2, n_shared_experts=1)
LLAMA = dict(MLA, attention="gqa", n_kv_heads=1, n_routed_experts=0)
GPT2 = dict(
    MLA,
    attention="mha",
    pos_emb="learned",
    mlp="gelu",
    norm="layernorm",
    bias=True,
    n_routed_experts=0,
)
# between them, these use every row of every table
MODELS = {
    "deepseek": MLA,
    "deepseek-qlora-yarn-tied": dict(
        MLA, q_lora_rank=24, rope_factor=2.0, original_max_seq_len=16, tie_embeddings=True
    ),
    "deepseek-dense": dict(MLA, n_routed_experts=0),
    "llama-gqa": LLAMA,
    "llama-mha-yarn": dict(
        LLAMA, attention="mha", n_kv_heads=None, rope_factor=4.0, original_max_seq_len=16
    ),
    "gpt2": GPT2,
    "gpt2-tied": dict(GPT2, tie_embeddings=True),
}
ROWS = [(arch, k) for arch, a in ARCHITECTURES.items() for k in range(len(a.weights))]
HEAD_DIM = 8


def random_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A model's state dict with random values (tied weights stored once, as export has it)."""
    torch.manual_seed(0)
    state = {n: torch.randn_like(t) for n, t in Transformer(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        del state["head.weight"]
    return state


@settings(max_examples=10, deadline=None)
@given(
    layer=st.integers(0, 99),
    expert=st.integers(0, 99),
    kind=st.sampled_from(["weight", "bias"]),
    heads=st.integers(1, 3),
    columns=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("arch, index", ROWS)
def test_each_row_round_trips(arch, index, layer, expert, kind, heads, columns, seed):
    """forward then inverse gives a row's ismail tensors back bit for bit, for any layer,
    expert and tensor sizes the transforms allow (rows a multiple of 2 and of the head size)."""
    row: WeightRow = ARCHITECTURES[arch].weights[index]
    cfg = ModelConfig.from_dict(dict(LLAMA, head_dim=HEAD_DIM))
    ismail, hf = row.names({"i": str(layer), "e": str(expert), "p": kind})
    assert all(row.match(name) is not None for name in ismail)
    generator = torch.Generator().manual_seed(seed)
    shape = (2 * HEAD_DIM * heads, columns) if kind == "weight" else (2 * HEAD_DIM * heads,)
    tensors = [torch.randn(shape, generator=generator) for _ in ismail]
    out = row.transform.forward(tensors, cfg)
    assert len(out) == len(hf)
    back = row.transform.inverse([t.clone() for t in out], cfg)
    assert len(back) == len(tensors)
    for before, after in zip(tensors, back, strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("case", sorted(MODELS))
def test_export_then_import_of_a_model_is_the_identity(case):
    """Through the whole table: every HF tensor is read once and the state comes back."""
    cfg = ModelConfig.from_dict(MODELS[case])
    arch = ARCHITECTURES[hf_architecture(cfg)]
    state = random_state(cfg)
    hf = to_hf_tensors(arch.weights, state, cfg)
    read = []

    def fetch(hf_name: str, name: str) -> torch.Tensor:
        read.append(hf_name)
        return hf[hf_name]

    back = from_hf_tensors(arch.weights, state, fetch, cfg)
    assert sorted(read) == sorted(hf)
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_every_row_is_used():
    used = set()
    for overrides in MODELS.values():
        cfg = ModelConfig.from_dict(overrides)
        arch = hf_architecture(cfg)
        rows = ARCHITECTURES[arch].weights
        used |= {(arch, rows.index(find_row(rows, name)[0])) for name in random_state(cfg)}
    exported = {(a, k) for a, k in ROWS if a != "mistral"}  # import only, Llama's rows
    assert exported <= used


@pytest.mark.parametrize("case", sorted(MODELS))
def test_config_json_is_a_fixed_point_of_import_then_export(case):
    cfg = ModelConfig.from_dict(MODELS[case])
    arch = ARCHITECTURES[hf_architecture(cfg)]
    config = json.loads(json.dumps(arch.config_to_hf(cfg)))
    again = ModelConfig.from_dict(arch.config_from_hf(config))
    assert arch.config_to_hf(again) == arch.config_to_hf(cfg)
    if cfg.n_routed_experts:  # dense exports drop the unused MoE fields
        assert again == cfg
