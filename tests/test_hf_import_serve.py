"""A transformers folder served: `ismail import` turns a Llama saved by `save_pretrained`, with
its fast tokenizer and chat template, into a checkpoint, and `ismail-serve` (the real command)
answers the official openai client with transformers' own greedy text, for a completion and
for a chat turn in the folder's template."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ismail_core.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # tests/_serve.py (see its docstring)
from _serve import base_url, free_port, start_serve, stop_serve  # noqa: E402

openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

TEXTS = [
    "Türkiye Cumhuriyeti'nin başkenti Ankara'dır.",
    "Çocuklar öğretmenlerine çiçek getirdiler.",
    "Yurtta sulh, cihanda sulh! Milletimizin istikbali gençlerin ellerindedir.",
]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPT = "Türkiye Cumhuriyeti'nin"
MESSAGES = [{"role": "user", "content": "Başkent neresi?"}]
MAX_TOKENS = 10


def _fast_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few Turkish sentences, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXTS * 4, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="</s>",
        bos_token="<s>",
        pad_token="<pad>",
        chat_template=TEMPLATE,
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    directory = tmp_path_factory.mktemp("hf") / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    _fast_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def client(llama_dir, tmp_path_factory) -> Iterator[openai.OpenAI]:
    """ismail-serve on `ismail import`'s checkpoint of llama_dir."""
    out = tmp_path_factory.mktemp("imported") / "llama-tr"
    assert main(["import", str(llama_dir), str(out)]) == 0
    port = free_port()
    # float32 as transformers runs the reference; --dtype auto is bfloat16 on a CPU with native bf16
    args = [str(out), "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    proc = start_serve(
        [*args, "--max-batch", "2"],
        port=port,
        log=out.parent / "serve.log",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    yield openai.OpenAI(base_url=f"{base_url(port)}/v1", api_key="unused", max_retries=0)
    stop_serve(proc)


def _transformers_text(llama_dir: Path, ids: list[int]) -> str:
    """transformers' greedy continuation of `ids`, up to MAX_TOKENS or the eos token."""
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    fast = transformers.AutoTokenizer.from_pretrained(llama_dir)
    out = model.generate(
        torch.tensor([ids]),
        max_new_tokens=MAX_TOKENS,
        do_sample=False,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    return fast.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_completion_is_transformers_greedy_text(client, llama_dir):
    fast = transformers.AutoTokenizer.from_pretrained(llama_dir)
    # a completion prompt follows the document separator (the eos token), as in training
    ids = [fast.eos_token_id, *fast(PROMPT, add_special_tokens=False).input_ids]
    reply = client.completions.create(
        model="llama-tr", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].text == _transformers_text(llama_dir, ids)


def test_chat_turn_in_the_folders_template(client, llama_dir):
    fast = transformers.AutoTokenizer.from_pretrained(llama_dir)
    ids = fast.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    reply = client.chat.completions.create(
        model="llama-tr", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == _transformers_text(llama_dir, ids["input_ids"])
