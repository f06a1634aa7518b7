"""tr-tokenizer: a lossless, morphology-aware Turkish tokenizer.

import tr_tokenizer
tok = tr_tokenizer.load()                 # the shipped default vocabulary
enc = tok.encode("Kitaplarımızdan birini okudunuz mu?")
tok.decode(enc.ids)                       # exactly the input
"""

from tr_tokenizer.errors import TrTokenizerError
from tr_tokenizer.tokenizer import DecodeStream, Encoding, Piece, Tokenizer, load
from tr_tokenizer.trainer import TrainConfig, train
from tr_tokenizer.vocab import Vocabulary, VocabularyError

__version__ = "0.1.0"

__all__ = [
    "DecodeStream",
    "Encoding",
    "Piece",
    "Tokenizer",
    "TrainConfig",
    "TrTokenizerError",
    "Vocabulary",
    "VocabularyError",
    "load",
    "train",
    "__version__",
]
