"""Byte-level BPE for languages other than Turkish (`ismail data --tokenizer-type bpe`).

tr-tokenizer's roots and suffixes are Turkish morphology; a Tatar, Kazakh or Azerbaijani corpus
needs a tokenizer learnt from its own text. This one is GPT-2 style: NFC normalisation (as the
cleaning step), text split into words and punctuation, each mapped to bytes, merges learnt by
the Hugging Face `tokenizers` trainer. Every string encodes (no unknown token) and decodes back
to its NFC form. Saved as a plain tokenizer.json, it loads in ismail (HFTokenizer) and in
transformers (AutoTokenizer) without remote code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ismail_core.chat import CHAT_MARKERS
from ismail_core.corpus.errors import DataError
from ismail_core.tokenizer import HFTokenizer

# Names HFTokenizer recognises as padding, beginning and end of sequence, in tr-tokenizer's
# order; the chat markers follow, as in tr-tokenizer, so chat fine-tuning adds no tokens.
PAD, BOS, EOS = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, *CHAT_MARKERS)
# Byte-level BPE starts from one symbol per byte value.
BYTE_ALPHABET = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS)


def check_vocab_size(vocab_size: int) -> None:
    """Raise DataError for a vocabulary that cannot hold the byte alphabet and special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE: its {BYTE_ALPHABET} "
            f"byte symbols and {len(SPECIAL_TOKENS)} special tokens take {MIN_VOCAB_SIZE} ids "
            f"before any merge; use at least {MIN_VOCAB_SIZE} (thousands for a real corpus)"
        )


def train_bpe(
    batches: Iterable[list[str]], vocab_size: int, length: int | None = None
) -> HFTokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (special tokens included) on the
    texts in `batches`; `length` (the number of batches) only sizes the progress bar.

    A corpus with fewer distinct pairs than merges asked for gives a smaller vocabulary.
    """
    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    # No prefix space: a word at the start of a text is not tokenized as if a space preceded
    # it, so decoding gives back exactly the text encoded.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte, seen in the corpus or not, so any text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # The progress display also writes blank lines to stdout: only on a terminal.
        show_progress=sys.stdout.isatty(),
    )
    tok.train_from_iterator(batches, trainer, length=length)
    return HFTokenizer(tok)
