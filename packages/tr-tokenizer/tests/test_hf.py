"""The transformers wrapper gives the same ids and exact decoding."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tr_tokenizer.hf import TrTokenizerHF  # noqa: E402

TEXT = "<|user|>Kitaplarımızdan birini okudunuz mu?<|end|>  İSTANBUL'DA 😀"


def test_same_ids_and_exact_decode(tok, tmp_path) -> None:
    hf = TrTokenizerHF(tokenizer=tok)
    ids = hf(TEXT)["input_ids"]
    assert ids == tok.encode(TEXT, allow_special=True).ids
    assert hf.decode(ids) == TEXT
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id
    assert len(hf) == tok.vocab_size
    hf.save_pretrained(tmp_path)
    again = TrTokenizerHF.from_pretrained(tmp_path)
    assert again(TEXT)["input_ids"] == ids
