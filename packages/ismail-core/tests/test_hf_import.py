"""`ismail import HF_DIR OUT`: transformers folders (model + tokenizer) become checkpoints that
generate, evaluate and fine-tune as transformers runs them; Mistral maps exactly, Qwen2 is
refused; ismail's own HF export imports back to the same model, tokenizer and template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ismail_core.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from ismail_core.checkpoint import WEIGHTS_FILE, load_model, load_weights, save_checkpoint
from ismail_core.cli import main
from ismail_core.config import ModelConfig
from ismail_core.generate import generate_ids, prompt_ids
from ismail_core.hf import HFFormatError, import_hf
from ismail_core.hf_import import import_checkpoint, is_hf_model_folder
from ismail_core.model import Transformer
from ismail_core.sampling import SamplingParams
from ismail_core.tokenizer import HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

# A chat template in transformers' conventions (bos_token, eos_token, add_generation_prompt).
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
CHAT = [{"role": "user", "content": "Başkent neresi?"}, {"role": "assistant", "content": "Ankara."}]
PROMPT = "Türkiye Cumhuriyeti'nin"
VOCAB = 400  # above the tokenizer's 384: checkpoints pad the vocabulary
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,  # large weights make any mismatch visible in the logits
)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _fast_tokenizer(tokenizer_file: Path) -> transformers.PreTrainedTokenizerFast:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token="</s>",
        bos_token="<s>",
        pad_token="<pad>",
        chat_template=TEMPLATE,
    )


def _save_model(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, hf_tokenizer_file) -> Path:
    """A random LlamaForCausalLM and a fast tokenizer with a chat template, as save_pretrained
    writes them."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMALL, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    directory = _save_model(
        transformers.LlamaForCausalLM(config).eval(), tmp_path_factory.mktemp("hf") / "llama"
    )
    _fast_tokenizer(hf_tokenizer_file).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def imported(tmp_path_factory, llama_dir) -> Path:
    """`ismail import` of llama_dir, through the CLI."""
    out = tmp_path_factory.mktemp("imported") / "ckpt"
    assert main(["import", str(llama_dir), str(out)]) == 0
    return out


def _greedy(hf_model, ids: list[int], n: int, eos: int | None) -> list[int]:
    out = hf_model.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


# ---------------------------------------------------------------------- a transformers folder
def test_imported_llama_generates_what_transformers_generates(imported, llama_dir, capsys):
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    fast = transformers.AutoTokenizer.from_pretrained(llama_dir)
    model, tok = load_model(imported)
    assert model.cfg.vocab_size == VOCAB and tok.vocab_size == len(fast)
    ids = prompt_ids(tok, PROMPT)  # the eos separator, then the prompt
    assert ids == [fast.eos_token_id, *fast(PROMPT, add_special_tokens=False).input_ids]
    expected = _greedy(hf_model, ids, 12, tok.eos_id)
    greedy = SamplingParams(temperature=0)
    assert list(generate_ids(model, ids, 12, greedy, tok.eos_id)) == expected

    flags = ["--max-new-tokens", "12", "--temperature", "0", "--repetition-penalty", "1"]
    flags += ["--no-stream"]
    code, out, _ = _run(capsys, "generate", str(imported), "--prompt", PROMPT, *flags)
    text = fast.decode([i for i in expected if i != tok.eos_id], skip_special_tokens=True)
    assert code == 0 and out == PROMPT + text + "\n"


def test_imported_tokenizer_keeps_specials_and_chat_template(imported, llama_dir):
    fast = transformers.AutoTokenizer.from_pretrained(llama_dir)
    _, tok = load_model(imported)
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (2, 1, 0)
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (
        fast.eos_token_id,
        fast.bos_token_id,
        fast.pad_token_id,
    )
    text = "Çocuklar öğretmenlerine çiçek getirdiler."
    assert tok.encode(text).ids == fast(text, add_special_tokens=False).input_ids
    assert tok.chat_template == TEMPLATE
    expected = fast.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert render_chat(tok, CHAT).ids == list(expected)


def test_imported_checkpoint_evaluates(imported, tmp_path, corpus, capsys):
    text = tmp_path / "metin.txt"
    text.write_text("\n".join(corpus), encoding="utf-8")
    code, out, _ = _run(capsys, "eval", str(imported), "--data", str(text), "--seq-len", "32")
    assert code == 0 and json.loads(out.splitlines()[-1])["bits_per_byte"] > 0


def _finetune_flags(chat_file: Path, out: Path) -> list[str]:
    """Two steps of full fine-tuning, with no reply generation: the cheapest run."""
    flags = {
        "--data": chat_file,
        "--run.out_dir": out,
        "--train.steps": 2,
        "--train.batch_size": 2,
        "--train.precision": "fp32",
        "--finetune.eval_replies": 0,
        "--eval.interval": 2,
        "--log.progress": "false",
    }
    return [str(x) for item in flags.items() for x in item]


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    lines = [json.dumps({"messages": CHAT}, ensure_ascii=False)] * 10
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_finetune_from_the_checkpoint_or_the_folder(imported, llama_dir, chat_file, tmp_path):
    assert (
        main(["finetune", "--base", str(imported), *_finetune_flags(chat_file, tmp_path / "a")])
        == 0
    )
    assert load_model(tmp_path / "a")[0].cfg.n_kv_heads == 2
    # the folder itself: imported into RUN/base first, and fine-tuned from there
    assert (
        main(["finetune", "--base", str(llama_dir), *_finetune_flags(chat_file, tmp_path / "b")])
        == 0
    )
    base, _ = load_model(tmp_path / "b" / "base")
    ours, _ = load_model(imported)
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(base(ids), ours(ids), atol=0, rtol=0)
    assert load_model(tmp_path / "b")[1].chat_template == TEMPLATE


def test_is_hf_model_folder(imported, llama_dir, tmp_path):
    assert is_hf_model_folder(llama_dir)
    assert not is_hf_model_folder(imported)  # an ismail checkpoint's config has no model_type
    assert not is_hf_model_folder(tmp_path)


# ---------------------------------------------------------------------- GPT-2 vocab + merges
def test_gpt2_folder_with_vocab_and_merges(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus * 4, trainer)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=320,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.1,
    )
    folder = _save_model(transformers.GPT2LMHeadModel(config).eval(), tmp_path / "gpt2")
    bpe.model.save(str(folder))  # vocab.json + merges.txt, and nothing else
    assert sorted(p.name for p in folder.glob("*.txt")) == ["merges.txt"]
    reference = transformers.GPT2Tokenizer.from_pretrained(folder)

    import_checkpoint(folder, tmp_path / "ckpt")
    model, tok = load_model(tmp_path / "ckpt")
    text = "Yurtta sulh, cihanda sulh!<|endoftext|> Hayatta en hakiki mürşit ilimdir."
    assert tok.encode(text).ids == reference(text)["input_ids"]
    assert tok.eos_id == 0 and tok.special_tokens == {"<|endoftext|>": 0}
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text.replace(
        "<|endoftext|>", ""
    )
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok.encode(text).ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- Mistral and Qwen2
@pytest.mark.parametrize("window", [None, 8])
def test_mistral_matches_transformers(window, tmp_path):
    torch.manual_seed(0)
    config = transformers.MistralConfig(**SMALL, sliding_window=window)
    hf_model = transformers.MistralForCausalLM(config).eval()
    model = import_hf(_save_model(hf_model, tmp_path / "mistral")).eval()
    assert model.cfg.sliding_window == (window or 0)
    ids = torch.randint(0, VOCAB, (2, 40))  # five times the window
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-4, rtol=1e-4)
    # and through the KV cache, generating past the window
    prompt = ids[0, :6].tolist()
    expected = _greedy(hf_model, prompt, 20, None)
    assert list(generate_ids(model, prompt, 20, SamplingParams(temperature=0))) == expected


def test_qwen2_is_refused_with_the_reason(tmp_path):
    config = transformers.Qwen2Config(**SMALL)
    folder = _save_model(transformers.Qwen2ForCausalLM(config), tmp_path / "qwen2")
    with pytest.raises(HFFormatError, match="biases on its q/k/v"):
        import_hf(folder)


# ---------------------------------------------------------------------- ismail -> HF -> ismail
@pytest.mark.parametrize("kind", ["hf", "tr"])
def test_export_then_import_round_trips(
    kind, tmp_path, hf_tokenizer_file, tiny_model_config, capsys
):
    tok = load_tokenizer("tr" if kind == "tr" else hf_tokenizer_file)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    torch.manual_seed(0)
    vocab = max(VOCAB, tok.vocab_size)  # padded for the test tokenizer; tr-tokenizer's 32768
    model = Transformer(ModelConfig.from_dict({**tiny_model_config, "vocab_size": vocab})).eval()
    save_checkpoint(tmp_path / "ckpt", model, tok)
    hf, back = str(tmp_path / "hf"), str(tmp_path / "back")
    assert _run(capsys, "export", "--format", "hf", str(tmp_path / "ckpt"), hf)[0] == 0
    code, out, _ = _run(capsys, "import", hf, back)
    assert code == 0 and f"{kind} tokenizer" in out
    again, tok2 = load_model(back)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)
    text = "Kitaplarımızdan birini okudunuz mu? Ne mutlu Türküm diyene!"
    assert (tok2.kind, tok2.vocab_size, tok2.encode(text).ids) == (
        tok.kind,
        tok.vocab_size,
        tok.encode(text).ids,
    )
    assert (tok2.eos_id, tok2.pad_id) == (tok.eos_id, tok.pad_id)
    assert tok2.chat_template == DEFAULT_CHAT_TEMPLATE
    assert render_chat(tok2, CHAT).ids == render_chat(tok, CHAT).ids
    if kind == "tr":  # the vocabulary file travels as it is
        assert (tok2.fingerprint, tok2.bos_id) == (tok.fingerprint, tok.bos_id)
    # A tokenizer.json comes back with the export's document-start post-processor (which
    # ismail never applies: it encodes without special tokens) and the eos token as its
    # bos_token, so its fingerprint and bos id are the export's, not the original's.


# ---------------------------------------------------------------------- special ids, errors
def test_given_special_ids_survive_save_and_load(hf_tokenizer_file, tmp_path):
    tok = HFTokenizer.from_file(hf_tokenizer_file)
    assert tok.eos_id == tok.token_to_id("</s>")
    tok.set_special_ids({"eos": 5, "pad": 7})
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert (again.eos_id, again.pad_id, again.bos_id) == (5, 7, tok.token_to_id("<s>"))
    with pytest.raises(Exception, match="outside"):
        tok.set_special_ids({"eos": 10_000})


def test_specials_and_template_from_the_config_files(llama_dir, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(llama_dir, folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("eos_token"), config.pop("pad_token")
    config["chat_template"] = [
        {"name": "tool_use", "template": "{{ tools }}"},
        {"name": "default", "template": TEMPLATE},
    ]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    # special_tokens_map.json holds AddedToken objects; config.json an id (here another one)
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<s>"}}))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": [3, 2]}))
    import_checkpoint(folder, tmp_path / "ckpt")
    _, tok = load_model(tmp_path / "ckpt")
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (3, 1, 1)  # bos and pad: the <s> both name
    assert tok.chat_template == TEMPLATE


def _folder_without(llama_dir: Path, tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(llama_dir, folder)
    for name in names:
        (folder / name).unlink()
    return folder


def test_errors_say_what_to_do(llama_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    code, _, err = _run(capsys, "import", str(tmp_path), out)
    assert code == 1 and "no config.json" in err
    folder = _folder_without(llama_dir, tmp_path, "tokenizer.json")
    code, _, err = _run(capsys, "import", str(folder), out)
    assert code == 1 and "--tokenizer SPEC" in err and "holds no tokenizer" in err
    code, _, err = _run(capsys, "import", str(folder), out, "--tokenizer", "tr")
    assert code == 1 and "32768 tokens" in err and "no embedding" in err
    code, _, err = _run(capsys, "import", str(llama_dir), str(llama_dir))
    assert code == 1 and "another directory" in err
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    code, _, err = _run(capsys, "import", str(folder), out)
    assert code == 1 and "'bert' is not supported" in err and "mistral" in err
    assert not Path(out).exists()


def test_help_and_dtype(llama_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "--help"])
    assert exit_info.value.code == 0 and "--tokenizer" in capsys.readouterr().out
    out = tmp_path / "bf16"
    assert _run(capsys, "import", str(llama_dir), str(out), "--dtype", "bfloat16")[0] == 0
    assert {t.dtype for t in load_weights(out / WEIGHTS_FILE).values()} == {torch.bfloat16}


@pytest.mark.parametrize("how", ["post_processor", "add_bos_token"])
def test_a_model_whose_tokenizer_puts_bos_first_is_prompted_with_it(
    how: str, llama_dir: Path, tmp_path: Path, capsys
) -> None:
    # Llama's tokenizer puts <s> before what it encodes (in tokenizer.json's post-processor, or
    # by add_bos_token in older folders): the model was trained to see it first, so ismail's
    # prompts, training documents and exports must start with it too, not with eos.
    from tokenizers import Tokenizer as Tokenizers
    from tokenizers.processors import TemplateProcessing

    folder = tmp_path / "llama"
    shutil.copytree(llama_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if how == "post_processor":
        tok_json = Tokenizers.from_file(str(folder / "tokenizer.json"))
        tok_json.post_processor = TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
        tok_json.save(str(folder / "tokenizer.json"))
        config.pop("add_bos_token", None)
    else:
        config["add_bos_token"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(["import", str(folder), str(tmp_path / "ckpt")]) == 0
    model, tok = load_model(tmp_path / "ckpt")
    assert tok.document_start_id == tok.bos_id == 1 and tok.eos_id == 2
    ids = prompt_ids(tok, PROMPT)
    fast = transformers.AutoTokenizer.from_pretrained(folder)
    assert ids == [1, *fast(PROMPT, add_special_tokens=False).input_ids]
    if how == "post_processor":
        assert ids == fast(PROMPT).input_ids  # what a transformers user feeds the model
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    greedy = list(generate_ids(model, ids, 8, SamplingParams(temperature=0), {2}))
    assert greedy == _greedy(hf_model, ids, 8, 2)
    # exported again, the folder's tokenizer puts <s> first and config.json names it bos
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "again")]) == 0
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "again")
    assert again(PROMPT).input_ids == ids
    assert json.loads((tmp_path / "again" / "config.json").read_text())["bos_token_id"] == 1
    # and the documents of data tokenized with it start with <s> and end with </s>
    if how == "post_processor":
        import numpy as np
        from ismail_core.corpus import DataSpec, prepare_data

        source = tmp_path / "docs.jsonl"
        docs = ["Ankara başkenttir.", "Yurtta sulh, cihanda sulh."]
        source.write_text("\n".join(json.dumps({"text": d * 4}) for d in docs))
        data = tmp_path / "data"
        spec = DataSpec(
            source=str(source),
            out=str(data),
            tokenizer=str(tmp_path / "ckpt" / "tokenizer"),
            val_fraction=0.0,
            min_chars=1,
            cache_dir=str(tmp_path / "cache"),
        )
        meta = prepare_data(spec)
        stream = np.fromfile(data / "train-00000.bin", dtype=meta["dtype"]).tolist()
        first, second = ([1, *tok.encode(d * 4).ids, 2] for d in docs)
        assert stream in ([*first, *second], [*second, *first])  # in either order
