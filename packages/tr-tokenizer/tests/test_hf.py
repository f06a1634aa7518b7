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


def test_prepend_bos_puts_the_document_start_first_and_survives_saving(tok, tmp_path) -> None:
    # An ismail export's tokenizer: documents start after <|eos|>, so prompts must too.
    hf = TrTokenizerHF(tokenizer=tok, bos_token="<|eos|>", prepend_bos=True)
    ids = tok.encode("Kitaplarımızdan birini").ids
    assert hf("Kitaplarımızdan birini")["input_ids"] == [tok.eos_id, *ids]
    assert hf("Kitaplarımızdan birini", add_special_tokens=False)["input_ids"] == ids
    pair = hf("Kitap", "okudu")["input_ids"]
    assert pair == [tok.eos_id, *tok.encode("Kitap").ids, tok.eos_id, *tok.encode("okudu").ids]
    mask = hf("Kitap", return_special_tokens_mask=True)["special_tokens_mask"]
    assert mask == [1] + [0] * len(tok.encode("Kitap").ids)
    hf.save_pretrained(tmp_path)
    again = TrTokenizerHF.from_pretrained(tmp_path)
    assert again("Kitaplarımızdan birini")["input_ids"] == [tok.eos_id, *ids]
    assert TrTokenizerHF(tokenizer=tok)("Kitap")["input_ids"] == tok.encode("Kitap").ids
