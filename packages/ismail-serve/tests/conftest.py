"""Fixtures: a small byte-level BPE tokenizer with chat role tokens and a tiny random model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ismail_core import Transformer
from ismail_core.model.cache import blocks_for
from ismail_core.model.runner import ModelRunner
from ismail_core.tokenizer import HFTokenizer
from ismail_serve.engine import EngineConfig, LLMEngine

sys.path.insert(0, str(Path(__file__).parents[2] / "ismail-core" / "tests"))  # tiny_setup.py
from tiny_setup import tiny_config  # noqa: E402

SPECIALS = ["<|endoftext|>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "Kitaplarımızdan birini okudunuz mu? Çocuklar bahçede oynuyor.",
    "İstanbul'da güneşli bir gün; öğretmenler ışığı söndürdü.",
    "Ağaçların gölgesinde şarkı söyleyen kuşlar, üzüm bağları.",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
]


def build_tokenizer(vocab_size: int = 400) -> HFTokenizer:
    """A byte-level BPE trained on a few Turkish sentences (multi-byte ğ ş ı split over ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return HFTokenizer(tok)


@pytest.fixture(scope="session")
def make_config():
    """`tiny_config(vocab_size, max_seq_len=128)` for tests that build their own model."""
    return tiny_config


@pytest.fixture(scope="session")
def tokenizer() -> HFTokenizer:
    return build_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer: HFTokenizer) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(tokenizer.vocab_size)).eval()


@pytest.fixture
def make_engine(model, tokenizer):
    """Build (and later shut down) engines on the tiny model; not started unless asked."""
    engines: list[LLMEngine] = []

    def make(
        start: bool = True,
        model_override=None,
        num_blocks: int | None = None,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        **overrides,
    ) -> LLMEngine:
        """num_blocks defaults to room for max_batch sequences of max_model_len tokens."""
        config = EngineConfig(**{"max_batch": 4, "max_model_len": 96, **overrides})
        if num_blocks is None:
            num_blocks = config.max_batch * blocks_for(config.max_model_len, block_size)
        runner = ModelRunner(model_override or model, num_blocks, block_size, enable_prefix_caching)
        engine = LLMEngine(runner, tokenizer, config)
        if start:
            engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()
