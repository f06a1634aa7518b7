"""`ismail export --format hf` writes everything a transformers user needs: special-token ids,
generation_config.json, the tokenizer files (no remote code for a `tokenizers` tokenizer), the
router fields DeepseekV3 readers look for, and a model card built from the run's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ismail_core.checkpoint import save_checkpoint
from ismail_core.cli import main
from ismail_core.config import ModelConfig
from ismail_core.generate import prompt_ids
from ismail_core.model import Transformer
from ismail_core.tokenizer import load_tokenizer
from ismail_core.train import train
from ismail_core.train.config import build_config

transformers = pytest.importorskip("transformers")

MOE = dict(
    vocab_size=384,
    max_seq_len=64,
    dim=64,
    n_layers=2,
    n_heads=2,
    kv_lora_rank=16,
    q_lora_rank=24,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    inter_dim=96,
    moe_inter_dim=32,
    n_expert_groups=2,
    n_limited_groups=1,
    route_scale=2.5,
    rope_factor=4.0,
    original_max_seq_len=16,
)
TEXT = "Yurtta sulh, cihanda sulh! Ankara'da okullar açıldı."


@pytest.fixture
def bpe_export(tmp_path: Path, hf_tokenizer_file: Path) -> tuple[Path, Transformer]:
    """A random MoE model with the test BPE tokenizer, exported through the CLI."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", **MOE)).eval()
    save_checkpoint(tmp_path / "ckpt", model, load_tokenizer(hf_tokenizer_file))
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    return tmp_path / "out", model


def test_deepseek_config_names_the_router_and_rope_for_every_reader(bpe_export) -> None:
    out, model = bpe_export
    config = json.loads((out / "config.json").read_text())
    # DeepSeek-V3's own config.json spells these out; converters (llama.cpp) read them.
    assert config["scoring_func"] == "sigmoid" and config["topk_method"] == "noaux_tc"
    assert (config["n_group"], config["topk_group"]) == (2, 1)
    assert config["routed_scaling_factor"] == 2.5 and config["norm_topk_prob"] is True
    assert config["q_lora_rank"] == 24 and config["n_routed_experts"] == 4
    # rope under transformers 5's name and the older names other readers use
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_scaling"]["type"] == "yarn" and config["rope_scaling"]["factor"] == 4.0
    assert config["rope_theta"] == model.cfg.rope_theta
    assert config["dtype"] == config["torch_dtype"] == "float32"
    loaded = transformers.AutoConfig.from_pretrained(out)
    assert loaded.rope_parameters["factor"] == 4.0 and loaded.n_group == 2


def test_tokenizers_checkpoint_needs_no_remote_code(bpe_export, hf_tokenizer_file) -> None:
    out, model = bpe_export
    ours = load_tokenizer(hf_tokenizer_file)
    eos, pad = ours.token_to_id("</s>"), ours.token_to_id("<pad>")
    assert not (out / "tokenization_tr_tokenizer.py").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        eos,
        eos,
        pad,
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == eos and generation["do_sample"] is True
    tok = transformers.AutoTokenizer.from_pretrained(out)  # no trust_remote_code
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    # the prompt ids `ismail generate` feeds the model: the document separator first
    assert tok(TEXT)["input_ids"] == prompt_ids(ours, TEXT)
    assert tok.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    assert (tok.eos_token_id, tok.pad_token_id) == (eos, pad)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.generation_config.eos_token_id == eos


def test_checkpoint_outside_a_run_gets_a_card_that_says_so(bpe_export) -> None:
    out, model = bpe_export
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-generation" in card
    assert "language:" not in card  # a BPE tokenizer says nothing about the language
    assert "not saved by a training run" in card and "No evaluation was recorded" in card
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"{params:.1f}M-parameter" in card and "4 routed experts" in card
    assert "trust_remote_code" not in card


def test_model_card_reports_the_runs_data_and_evaluation(
    tmp_path: Path, tiny_train_layer, tiny_data: Path
) -> None:
    cfg = build_config(tiny_train_layer(tmp_path / "run", tiny_data, **{"train.steps": 4}))
    train(cfg)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    final = [
        r
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "eval" and r["step"] == 4
    ][-1]
    meta = json.loads((tiny_data / "meta.json").read_text())
    assert f"Data: `{meta['spec']['source']}`; " in card  # what the data directory was made of
    assert f"{meta['splits']['train']['tokens']:,} tokens" in card
    assert "messages = [" not in card  # not fine-tuned for chat: no chat example
    assert "4 steps of 4 sequences" in card
    assert f"| validation bits per byte | {final['bits_per_byte']:.4g} |" in card
    assert f"| validation loss (nats per token) | {final['loss']:.4g} |" in card


def test_unexportable_model_leaves_nothing_behind(tmp_path: Path, hf_tokenizer_file) -> None:
    model = Transformer(ModelConfig.preset("tiny", **dict(MOE, sliding_window=8)))
    save_checkpoint(tmp_path / "ckpt", model, load_tokenizer(hf_tokenizer_file))
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_the_tokenizers_own_special_tokens_give_way_to_the_document_start(
    tmp_path: Path, hf_tokenizer_file: Path
) -> None:
    # A tokenizer.json that adds <s> ... </s> around what it encodes (as BERT- or Llama-style
    # ones do): ismail encodes without them, so the export must too.
    from tokenizers import Tokenizer as Tokenizers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizers.from_file(str(hf_tokenizer_file))
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B", special_tokens=[("<s>", s), ("</s>", e)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path / "tokenizer.json")
    model = Transformer(ModelConfig.preset("tiny", **MOE))
    save_checkpoint(tmp_path / "ckpt", model, ours)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf(TEXT)["input_ids"] == prompt_ids(ours, TEXT) == [e, *ours.encode(TEXT).ids]


def test_commands_given_a_transformers_folder_say_to_import_it(bpe_export, capsys) -> None:
    out, _ = bpe_export
    assert main(["generate", str(out), "--prompt", "Yurtta"]) == 1
    assert f"import it first with `ismail import {out} OUT`" in capsys.readouterr().err
