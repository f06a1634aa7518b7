"""The transformers wrapper gives the same ids and exact decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from tr_tokenizer.hf import TrTextGenerationPipeline, TrTokenizerHF  # noqa: E402
from transformers.pipelines.text_generation import ReturnType  # noqa: E402

# Words whose suffixes take their surface form from the word before them.
WORDS = [
    "Türk",
    "milletiye",
    "kitaplarımızdan",
    "evde",
    "okulda",
    "gözlerinden",
    ",",
    "İSTANBUL'DA",
]
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


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=8),
    cut=st.integers(min_value=0, max_value=40),
    skip=st.booleans(),
)
def test_continuation_is_decoded_after_its_context(tok, words, cut, skip) -> None:
    hf = TrTokenizerHF(tokenizer=tok)
    ids = tok.encode("<|user|>" + " ".join(words), allow_special=True).ids
    cut = min(cut, len(ids))
    whole, head = hf.decode(ids, skip), hf.decode(ids[:cut], skip)
    assert hf.decode_continuation(ids[cut:], ids[:cut], skip) == whole[len(head) :]


def test_export_pipeline_decodes_a_suffix_after_the_prompt(tok) -> None:
    # "milleti" then the dative: alone the suffix reads "ya"; after the prompt, "ye".
    import torch

    prompt = tok.encode("Türk milleti").ids
    dative = tok.token_to_id("+(y)A")
    reply = [*prompt, dative]  # what a model may generate: the prompt, then the dative id
    assert tok.decode([dative]) == "ya" and tok.decode(reply) == "Türk milletiye"
    pipe = TrTextGenerationPipeline.__new__(TrTextGenerationPipeline)  # no model needed
    pipe.tokenizer = TrTokenizerHF(tokenizer=tok)
    outputs = {
        "generated_sequence": torch.tensor([[reply]]),
        "input_ids": torch.tensor([prompt]),
        "prompt_text": "Türk milleti",
    }
    record = pipe.postprocess(outputs, return_type=ReturnType.NEW_TEXT)
    assert record == [{"generated_text": "ye"}]
    assert isinstance(pipe.tokenizer, TrTokenizerHF)  # put back after the call
