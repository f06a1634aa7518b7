"""Hugging Face parity: exported models give transformers' logits, and imports give ours."""

import pytest
import torch
from ismail_core.config import ModelConfig
from ismail_core.hf import HFFormatError, export_hf, hf_architecture, import_hf
from ismail_core.model import Transformer

transformers = pytest.importorskip("transformers")

MLA = dict(
    vocab_size=101,
    max_seq_len=128,
    dim=64,
    n_layers=3,
    n_heads=4,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    inter_dim=96,
    moe_inter_dim=32,
    n_dense_layers=1,
    n_routed_experts=8,
    n_activated_experts=2,
    n_shared_experts=1,
    n_expert_groups=4,
    n_limited_groups=2,
    route_scale=2.5,
    init_std=0.1,  # large weights make any mismatch visible in the logits
)
LLAMA = dict(MLA, attention="gqa", n_heads=4, n_kv_heads=2, n_routed_experts=0)
GPT2 = dict(
    MLA,
    attention="mha",
    pos_emb="learned",
    mlp="gelu",
    norm="layernorm",
    norm_eps=1e-5,
    bias=True,
    n_routed_experts=0,
    tie_embeddings=True,
)

CASES = {
    "deepseek": MLA,
    "deepseek-yarn": dict(MLA, rope_factor=4.0, original_max_seq_len=32, mscale=0.707),
    "deepseek-qlora": dict(MLA, q_lora_rank=24),
    "deepseek-qlora-yarn-tied": dict(
        MLA, q_lora_rank=24, rope_factor=2.0, original_max_seq_len=64, tie_embeddings=True
    ),
    "deepseek-dense": dict(MLA, n_routed_experts=0),
    "llama-gqa": LLAMA,
    "llama-mha-yarn": dict(
        LLAMA, attention="mha", n_kv_heads=None, rope_factor=4.0, original_max_seq_len=32
    ),
    "gpt2": GPT2,
}
EXPECTED_CLASS = {
    "deepseek": "DeepseekV3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


@torch.no_grad()
def perturb_vectors(model: torch.nn.Module) -> None:
    """Move norm weights and biases away from their 1/0 init so their mapping is tested."""
    for p in model.parameters():
        if p.ndim == 1:
            p.add_(torch.randn_like(p) * 0.1)


def random_model(overrides: dict, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_dict(overrides)).eval()
    perturb_vectors(model)
    with torch.no_grad():  # and non-zero balancing biases
        for moe in model.moe_layers():
            moe.gate.bias.copy_(torch.randn_like(moe.gate.bias) * 0.05)
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_matches_transformers_logits(case, tmp_path):
    model = random_model(CASES[case])
    export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == EXPECTED_CLASS[case.split("-")[0]]
    # longer than original_max_seq_len so YaRN's interpolated frequencies matter
    ids = torch.randint(0, 101, (2, 80))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # and back: importing the export reproduces the same model
    again = import_hf(tmp_path / "hf").eval()
    if model.cfg.n_routed_experts:  # dense exports drop the unused MoE fields
        assert again.cfg == model.cfg
    assert again.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["deepseek-qlora-yarn-tied", "llama-gqa", "gpt2"])
def test_import_of_a_model_saved_by_transformers(case, tmp_path):
    """A transformers-native model (its own init and save_pretrained layout) imports exactly."""
    model = random_model(CASES[case])
    export_hf(model, tmp_path / "ours")
    hf_cfg = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    torch.manual_seed(1)
    native = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    perturb_vectors(native)
    native.save_pretrained(tmp_path / "native")
    imported = import_hf(tmp_path / "native").eval()
    ids = torch.randint(0, 101, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(imported(ids), native(ids).logits, atol=1e-4, rtol=1e-4)


def test_unexportable_configs_say_why(tmp_path):
    with pytest.raises(HFFormatError, match="sliding_window"):
        hf_architecture(ModelConfig.from_dict(dict(MLA, sliding_window=8)))
    with pytest.raises(HFFormatError, match="softmax"):
        hf_architecture(ModelConfig.from_dict(dict(MLA, score_func="softmax")))
    with pytest.raises(HFFormatError, match="capacity_factor"):
        hf_architecture(ModelConfig.from_dict(dict(MLA, capacity_factor=1.0)))
    with pytest.raises(HFFormatError, match="attention='mla'"):
        hf_architecture(ModelConfig.from_dict(dict(LLAMA, n_routed_experts=4)))
    with pytest.raises(HFFormatError, match="no config.json"):
        import_hf(tmp_path)


def test_import_of_original_openai_gpt2_layout(tmp_path):
    """openai-community/gpt2 stores names without `transformer.` plus causal-mask buffers."""
    from safetensors.torch import load_file, save_file

    model = random_model(GPT2)
    export_hf(model, tmp_path / "gpt2")
    weights = load_file(str(tmp_path / "gpt2" / "model.safetensors"))
    legacy = {k.removeprefix("transformer."): v for k, v in weights.items()}
    legacy["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
    save_file(legacy, str(tmp_path / "gpt2" / "model.safetensors"))
    ids = torch.randint(0, 101, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(import_hf(tmp_path / "gpt2").eval()(ids), model(ids))


@pytest.mark.slow
def test_ismail_export_cli_writes_a_folder_transformers_loads(tmp_path, hf_tokenizer_file):
    import subprocess
    import sys

    from ismail_core.checkpoint import save_checkpoint
    from ismail_core.tokenizer import load_tokenizer

    model = random_model(dict(MLA, vocab_size=384))
    save_checkpoint(tmp_path / "ckpt", model, load_tokenizer(hf_tokenizer_file))
    cmd = [sys.executable, "-m", "ismail_core", "export", "--format", "hf"]
    subprocess.run([*cmd, str(tmp_path / "ckpt"), str(tmp_path / "out")], check=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 384, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
