"""Fine-tuned models in transformers: a LoRA checkpoint exports as its base model plus a PEFT
adapter that gives ismail's logits, and the exported chat template renders the ids ismail
trains on."""

import json
from pathlib import Path

import pytest
import torch
from ismail_core.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from ismail_core.checkpoint import load_model, save_checkpoint
from ismail_core.config import ModelConfig
from ismail_core.finetune.lora import (
    LoraSettings,
    add_lora,
    load_with_adapter,
    merge_lora,
    save_adapter,
)
from ismail_core.hf import HFFormatError
from ismail_core.hf_export import export_checkpoint_hf
from ismail_core.model import Transformer
from ismail_core.tokenizer import HFTokenizer, load_tokenizer
from tr_tokenizer.vocab import CHAT_MARKERS

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 384  # the conftest tokenizer's
MOE = dict(
    vocab_size=VOCAB,
    n_layers=2,  # one dense layer, then 4 routed experts + 1 shared
    max_seq_len=64,
    dim=64,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    inter_dim=96,
    moe_inter_dim=32,
    init_std=0.1,  # large weights make any mismatch visible in the logits
)
LLAMA = dict(MOE, attention="gqa", n_kv_heads=2, n_routed_experts=0)
GPT2 = dict(
    LLAMA,
    attention="mha",
    n_kv_heads=None,
    pos_emb="learned",
    mlp="gelu",
    norm="layernorm",
    bias=True,
)
# (model, LoRA targets): no targets means every linear layer of the blocks
CASES = {
    "deepseek-moe": (MOE, ()),
    # experts' down_proj alone (one ParamWrapper), q through q_lora_rank
    "deepseek-moe-some": (dict(MOE, q_lora_rank=24), ("wq_b", "w2")),
    # MLPs alone: no target_modules at all
    "deepseek-moe-mlp": (MOE, ("w13",)),
    "deepseek-dense": (dict(MOE, n_routed_experts=0), ()),
    "llama-gqa": (LLAMA, ()),
}


def lora_checkpoint(
    tmp_path: Path, overrides: dict, targets: tuple[str, ...], tokenizer
) -> tuple[Path, Transformer, LoraSettings]:
    """A random tiny base checkpoint and a LoRA checkpoint (adapter only, rank 4) on it;
    returns the latter with its model and settings. B is made non-zero: peft starts it at
    zero, where the adapter would change nothing."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", **overrides)).eval()
    base = save_checkpoint(tmp_path / "base", model, tokenizer)
    settings = LoraSettings(rank=4, alpha=8.0, targets=targets)
    add_lora(model, settings)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    lora = save_checkpoint(
        tmp_path / "lora",
        model,
        tokenizer,
        adapter=lambda d: save_adapter(model, settings, d, base),
    )
    return lora, model, settings


@pytest.fixture
def tokenizer(hf_tokenizer_file):
    return load_tokenizer(hf_tokenizer_file)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_gives_ismail_logits_in_transformers(case, tmp_path, tokenizer):
    overrides, targets = CASES[case]
    lora, _, _ = lora_checkpoint(tmp_path, overrides, targets, tokenizer)
    out = export_checkpoint_hf(lora, tmp_path / "hf")
    ids = torch.randint(0, VOCAB, (2, 24))
    base, _ = load_model(tmp_path / "base")
    unmerged = load_with_adapter(lora, merge=False).eval()
    merged, _ = load_model(lora)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        want = unmerged(ids)
        torch.testing.assert_close(merged(ids), want, atol=1e-5, rtol=0)
        assert (want - base(ids)).abs().max() > 1e-2  # the adapter matters
        # OUT holds the base model, the adapter is beside it
        torch.testing.assert_close(hf(ids).logits, base(ids), atol=1e-4, rtol=0)
        model = peft.PeftModel.from_pretrained(hf, out / "adapter").eval()
        torch.testing.assert_close(model(ids).logits, want, atol=1e-4, rtol=0)
    # the keys are the ones peft itself saves for this adapter: none missing, none ignored
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    stored = peft.utils.load_peft_weights(str(out / "adapter"))
    assert set(stored) == set(peft.get_peft_model_state_dict(model))
    assert saved["base_model_name_or_path"] == str(out.resolve())
    assert saved["task_type"] == "CAUSAL_LM" and saved["r"] == 4


def test_ismail_export_says_where_the_adapter_is(tmp_path, tokenizer, capsys):
    from ismail_core.cli import main

    lora, _, _ = lora_checkpoint(tmp_path, LLAMA, ("wo",), tokenizer)
    assert main(["export", "--format", "hf", str(lora), str(tmp_path / "hf")]) == 0
    assert f"LoRA adapter to {tmp_path / 'hf' / 'adapter'}" in capsys.readouterr().out


def test_merged_checkpoint_exports_its_merged_weights(tmp_path, tokenizer):
    lora, model, settings = lora_checkpoint(tmp_path, LLAMA, (), tokenizer)
    merged = merge_lora(load_with_adapter(lora, merge=False)).eval()
    ckpt = save_checkpoint(
        tmp_path / "merged",
        model,
        tokenizer,
        state_dict=merged.state_dict(),
        adapter=lambda d: save_adapter(model, settings, d, tmp_path / "base"),
    )
    out = export_checkpoint_hf(ckpt, tmp_path / "hf")
    assert not (out / "adapter").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, merged(ids), atol=1e-4, rtol=0)


def test_gpt2_adapter_is_refused(tmp_path, tokenizer):
    lora, _, _ = lora_checkpoint(tmp_path, GPT2, (), tokenizer)
    with pytest.raises(HFFormatError, match="c_attn"):
        export_checkpoint_hf(lora, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------- chat template
CONVERSATIONS = [
    [{"role": "user", "content": "Merhaba!"}],
    [
        {"role": "system", "content": "Sen yardımsever bir asistansın."},
        {"role": "user", "content": "İstanbul'un nüfusu kaç?"},
        {"role": "assistant", "content": "Yaklaşık on altı milyon."},
        {"role": "user", "content": "Peki IĞDIR'ınki? Kitaplarımızdan öğrenemedik."},
    ],
    [
        {"role": "user", "content": "  İki satır\nyazdım, ılık bir günde.  "},
        {"role": "assistant", "content": "Okudunuz mu? Evlerimizdekiler ışıl ışıl."},
    ],
]


def exported_template(tmp_path: Path, tokenizer) -> str:
    """The chat_template.jinja `ismail export --format hf` writes for a model with `tokenizer`."""
    cfg = ModelConfig.preset(
        "tiny",
        **dict(LLAMA, vocab_size=tokenizer.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1),
    )
    save_checkpoint(tmp_path / "ckpt", Transformer(cfg), tokenizer)
    out = export_checkpoint_hf(tmp_path / "ckpt", tmp_path / "hf")
    return (out / "chat_template.jinja").read_text(encoding="utf-8")


def hf_ids(hf_tokenizer, messages, template: str, add_generation_prompt: bool) -> list[int]:
    encoded = hf_tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        add_generation_prompt=add_generation_prompt,
    )
    return list(encoded["input_ids"])


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tr_tokenizer_chat_template_gives_the_same_ids_in_transformers(
    add_generation_prompt, tmp_path
):
    from tr_tokenizer.hf import TrTokenizerHF

    tok = load_tokenizer("tr")
    template = exported_template(tmp_path, tok)
    assert template == DEFAULT_CHAT_TEMPLATE
    hf_tok = TrTokenizerHF(tokenizer=tok._tok)
    for messages in CONVERSATIONS:
        want = render_chat(tok, messages, add_generation_prompt).ids
        assert hf_ids(hf_tok, messages, template, add_generation_prompt) == want


def small_bpe():
    """A byte-level BPE `tokenizers.Tokenizer` with an end-of-sequence token and the chat
    markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", *CHAT_MARKERS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [m["content"] for messages in CONVERSATIONS for m in messages]
    tok.train_from_iterator(texts * 4, trainer)
    return tok


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tokenizers_chat_template_gives_the_same_ids_in_transformers(
    add_generation_prompt, tmp_path
):
    tok = HFTokenizer(small_bpe())
    # a stored template (here: a newline after each turn) is the one exported
    tok.chat_template = DEFAULT_CHAT_TEMPLATE.replace("<|end|>", "<|end|>\n")
    template = exported_template(tmp_path, tok)
    assert template == tok.chat_template
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok._tok, eos_token="<|endoftext|>"
    )
    for messages in CONVERSATIONS:
        want = render_chat(tok, messages, add_generation_prompt).ids
        assert hf_ids(hf_tok, messages, template, add_generation_prompt) == want
