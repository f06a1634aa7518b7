"""decode(encode(s)) == s for every string, with offsets that cover the input in order."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TURKISH = "abcçdefgğhıijklmnoöprsştuüvyzâîûABCÇDEFGĞHIİJKLMNOÖPRSŞTUÜVYZ"
TURKISH_ISH = st.lists(
    st.sampled_from(list(TURKISH) + list(" '’.,;!?-\n\t0123456789") + ["  ", "😀", "\u0307"]),
    max_size=80,
).map("".join)
ANY_UNICODE = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=60
)
WORDS = st.lists(
    st.sampled_from(
        [
            "kitap", "Kitaplarımızdan", "ANKARA'DA", "Ankara'ya", "saatler", "Google'da",
            "1920'de", "hayatı", "başlatılmış", "maçı", "halde", "İSTANBUL", "ışık", "IŞIK",
            "iPhone", "McDonald's", "ǅemal", "ß", "ﬁ", "İ̇", "ΣΑΣ", " ", "\n", "\t", "  ", "\r\n",
            "evlerinden", "gelecekmiş", "okudunuz", "mu", "?", "...", "<|eos|>", "<0x41>", "+lAr",
        ]
    ),
    max_size=25,
).map("".join)  # fmt: skip


def check(tok, text: str) -> None:
    enc = tok.encode(text)
    assert tok.decode(enc.ids) == text
    assert len(enc.offsets) == len(enc.ids) == len(enc.tokens)
    pos = 0
    for a, b in enc.offsets:
        assert a == pos and b >= a
        pos = b
    assert pos == len(text)
    assert tok.encode_ids(text) == enc.ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TURKISH_ISH)
def test_round_trip_turkish_alphabet(tok, text: str) -> None:
    check(tok, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_UNICODE)
def test_round_trip_any_unicode_including_surrogates(tok, text: str) -> None:
    check(tok, text)


@settings(max_examples=200, deadline=None)
@given(WORDS)
def test_round_trip_tricky_words(tok, text: str) -> None:
    check(tok, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "Kitaplarımızdan birini okudunuz mu?",
        "İSTANBUL'DA saatler, Google'da 1920'de hayatı başlatılmış maçı halde.",
        "def f(x):\n\treturn x  # kod\r\n",
        "a" * 200,
        " " * 100 + "\n" * 10,
        "<|user|>merhaba<|end|>",
        "\ud800 lone surrogate \udfff",
    ],
)
def test_round_trip_examples(tok, text: str) -> None:
    check(tok, text)


@pytest.mark.slow
def test_round_trip_ten_megabyte_single_line(tok) -> None:
    sentence = (
        "Türkiye'nin başkenti Ankara'dır; 1923'te kurulan Cumhuriyet'in ilk yıllarında "
        "KİTAPLARIMIZDAN birini okudunuz mu?\tEvet, 3,14 kez okudum 😀 ve   beğendim. "
    )
    text = (sentence * (10_000_000 // len(sentence) + 1))[:10_000_000]
    assert "\n" not in text
    ids = tok.encode_ids(text)
    assert tok.decode(ids) == text


@pytest.mark.slow
def test_round_trip_long_runs(tok) -> None:
    for text in ("ğ" * 1_000_000, " " * 1_000_000, "-" * 300_000, "9" * 300_000):
        assert tok.decode(tok.encode_ids(text)) == text
