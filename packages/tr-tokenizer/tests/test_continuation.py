"""Continuations decoded with their prefix as context (`decode_stream(context=...)`).

A shared suffix id is spelled from the text before it, so the text of new ids depends on the
ids before them. The property: for every cut of real or random Turkish text into a prefix P
and a continuation G, the stream seeded with P emits exactly the text that G adds to decode(P)
in decode(P + G). The only places where decode(P) is not a prefix of decode(P + G) are the
context's last letter voiced by G (ağaç + ı -> ağacı) and bytes of a character that G
completes; there the continuation is still the whole decode's text after that position.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# Sentences of modern and older Turkish, written for these tests (not taken from any corpus):
# case suffixes after apostrophes, consonant voicing, İ/ı casing, numbers, an emoji, newlines.
SENTENCES = [
    "Türkiye Cumhuriyeti'ye bağlı kalacağız.",
    "Ağacı kesmeyin; kitabı masaya, defteri çantaya koydum.",
    "İSTANBUL'DA yağmur yağıyor, Ankara'da güneş var.",
    "Rengi solmuş bir resim 1923'te asılmıştı 😀\nYarın gelir misiniz?",
    "Çocukların oynadığı bahçede ağaçlar çiçek açtı.",
    "Uçağa binmeden önce bileti kontrol ettiler: 3.5 saat sürdü.",
    "Meclis-i Mebusan'ın kapanışında söylenenler unutulmadı.",
]

# Consonants that voice before a vowel, lower and upper case (kitap/kitabı, renk/rengi).
VOICED_PAIRS = {("p", "b"), ("ç", "c"), ("t", "d"), ("k", "ğ"), ("k", "g")}
VOICED_PAIRS |= {(a.upper(), b.upper()) for a, b in VOICED_PAIRS}

WORD = st.sampled_from(
    ["ağaç", "kitap", "renk", "uçak", "yurt", "göz", "ev", "İzmir", "ılık", "TÜRK", "çiçek"]
)
SUFFIX = st.sampled_from(["", "ı", "i", "a", "e", "lar", "ler", "da", "de", "ta", "dan", "ın"])
APOSTROPHE = st.sampled_from(["", "'", "’"])
RANDOM_TEXT = st.lists(
    st.tuples(WORD, APOSTROPHE, SUFFIX, st.sampled_from([" ", ", ", ".\n", "  "])).map("".join),
    min_size=1,
    max_size=6,
).map("".join)


def continuation(tok, context: list[int], new: list[int]) -> str:
    stream = tok.decode_stream(skip_special_tokens=False, context=context)
    return "".join(stream.step(i) for i in new) + stream.flush()


def check_every_cut(tok, text: str) -> None:
    ids = tok.encode(text).ids
    full = tok.decode(ids)
    assert full == text
    for k in range(len(ids) + 1):
        prefix = tok.decode(ids[:k])
        cont = continuation(tok, ids[:k], ids[k:])
        assert full.endswith(cont)
        head = full[: len(full) - len(cont)]
        if full.startswith(prefix):
            assert prefix + cont == full, (k, prefix, cont)
        elif prefix.rstrip("\ufffd") == head:  # the context ended inside a character
            assert cont[:1] not in ("", "\ufffd")
        else:  # the continuation voiced the context's last letter
            assert len(head) == len(prefix) and head[:-1] == prefix[:-1], (k, prefix, cont)
            assert (prefix[-1], head[-1]) in VOICED_PAIRS, (k, prefix, cont)


@settings(max_examples=len(SENTENCES) * 3, deadline=None)
@given(st.sampled_from(SENTENCES))
def test_real_sentences_cut_at_every_token(tok, sentence: str) -> None:
    check_every_cut(tok, sentence)


@settings(max_examples=150, deadline=None)
@given(RANDOM_TEXT)
def test_random_inflected_text_cut_at_every_token(tok, text: str) -> None:
    check_every_cut(tok, text)


def test_suffix_after_context_takes_its_harmony(tok) -> None:
    ids = tok.encode("Türkiye Cumhuriyeti'ye").ids
    dative = ids[-1]  # +(y)A: "ya" or "ye", from the word before it
    assert tok.decode([dative]) == "ya"  # no context: the default spelling
    assert continuation(tok, ids[:-1], [dative]) == "ye"


def test_voiced_context_letter_is_not_written_again(tok) -> None:
    ids = tok.encode("ağacımız").ids
    assert tok.decode(ids[:1]) == "ağaç"
    assert continuation(tok, ids[:1], ids[1:]) == "ımız"


def test_context_special_tokens_and_case_marker_carry_over(tok) -> None:
    cap = tok.token_to_id("<|cap|>")
    word = tok.encode("kitap").ids
    assert continuation(tok, [tok.eos_id, cap], word) == "Kitap"


def test_context_ids_are_checked(tok) -> None:
    with pytest.raises(ValueError, match="unknown token id"):
        tok.decode_stream(context=[tok.vocab_size])
