"""Shared fixtures for ismail-core's tests: a small byte-level BPE tokenizer and a text corpus.

A 384-token vocabulary keeps test models tiny (the embedding dominates small models).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CORPUS = [
    "Arkadaşlar, bu gece burada sizleri toplamaktan maksadım şudur.",
    "Memleketin yaşadığı vahim anları size söylemeye lüzum görmüyorum.",
    "Bu bedbaht memlekete karşı mühim vazifelerimiz vardır. Onu kurtarmak yegâne hedefimizdir.",
    "Türkiye Cumhuriyeti'nin temeli kültürdür; İstanbul'da ve Ankara'da okullar açıldı.",
    "Çocuklar öğretmenlerine çiçek getirdiler, ığdır ve şırnak'tan gelen öğrenciler de vardı.",
    "Yurtta sulh, cihanda sulh! Milletimizin istikbali gençlerin ellerindedir.",
    "Hayatta en hakiki mürşit ilimdir, fendir.",
    "Ne mutlu Türküm diyene! Egemenlik kayıtsız şartsız milletindir.",
]


def _train_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return list(CORPUS)


@pytest.fixture(scope="session")
def hf_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json trained on the test corpus (384 tokens)."""
    path = tmp_path_factory.mktemp("hf-tokenizer") / "tokenizer.json"
    _train_bpe(CORPUS * 4, vocab_size=384).save(str(path))
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The CI machine has two cores shared by several jobs; tiny tensors gain nothing from more.
    torch.set_num_threads(1)
