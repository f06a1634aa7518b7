"""Training: roots from a lexicon, shared vs literal suffixes, BPE fill, determinism, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import tr_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tr_tokenizer.trainer import TrainConfig

CORPUS = """Kitaplarımızdan birini okudunuz mu? Evet, kitabı dün akşam okudum.
Evlerimizde çok kitap var. Kitaplar evlerde, defterler okullarda kalır.
Öğrenciler okula gittiler ve öğretmenlerine sorular sordular.
Ankara'da yaşıyorum; İstanbul'a her yıl gidiyorum. Google'da aradım, 1920'de kurulmuş.
Saatler geçti, gözlerimiz yoruldu. Gözlüklerini evde unutmuşsun.
Yollarda arabalar, denizlerde gemiler vardı. Gemilerden biri limandan ayrıldı.
Çocuklar bahçede oynuyorlar, kediler ağaçların altında uyuyorlar.
"""
LEXICON = ["kitap", "kitab", "ev", "defter", "okul", "öğrenci", "öğretmen", "soru", "sor",
           "oku", "git", "gel", "göz", "gözlük", "yol", "araba", "deniz", "gemi", "liman",
           "ayrıl", "çocuk", "bahçe", "oyna", "kedi", "ağaç", "alt", "uyu", "saat", "geç",
           "yorul", "unut", "bir", "var", "çok", "kal", "yaşa", "ara", "kur", "yıl"]  # fmt: skip
# no whole words: these tests are about the morphology layer
SMALL = TrainConfig(suffix_chains=200, alphabet_size=120, word_fraction=0.0)


@pytest.fixture(scope="module")
def small() -> tr_tokenizer.Tokenizer:
    return tr_tokenizer.train([CORPUS * 3], vocab_size=1200, lexicon=LEXICON, config=SMALL)


@pytest.fixture(scope="module")
def small_literal() -> tr_tokenizer.Tokenizer:
    return tr_tokenizer.train(
        [CORPUS * 3], vocab_size=1200, lexicon=LEXICON, share_allomorphs=False,
        config=TrainConfig(suffix_chains=200, alphabet_size=120),
    )  # fmt: skip


def test_vocabulary_has_roots_suffixes_and_bpe(small) -> None:
    assert small.vocab_size <= 1200
    kinds = [small.kind(i) for i in range(small.vocab_size)]
    assert {"root", "suffix", "bpe"} <= set(kinds)
    assert small.kind(small.token_to_id(" kitap")) == "root"
    assert small.encode(" kitaplarımızdan").tokens[0] == " kitap"


def test_share_allomorphs_option(small, small_literal) -> None:
    assert small.token_to_id("+lAr") is not None
    assert small.encode(" evler").ids[-1] == small.encode(" yollar").ids[-1]
    assert small_literal.token_to_id("+lAr") is None
    suffixes = [
        small_literal.id_to_token(i)
        for i in range(small_literal.vocab_size)
        if small_literal.kind(i) == "suffix"
    ]
    assert suffixes and not any(name.startswith("+") for name in suffixes)
    assert small_literal.encode(" evler").ids[-1] != small_literal.encode(" yollar").ids[-1]
    assert small.fingerprint != small_literal.fingerprint


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcçdeğıiİIoöşuü KLMŞ'’.\n1😀")), max_size=50))
def test_trained_tokenizers_round_trip(small, small_literal, text: str) -> None:
    assert small.decode(small.encode(text).ids) == text
    assert small_literal.decode(small_literal.encode(text).ids) == text


VOICING_CORPUS = (
    "Kitabı okudum. Kitapta resimler var. Kitabın kapağı güzel. Ağacın altında kitaplar. "
    "Ağaçta kuşlar. Renginiz güzel, rengi mavi, renk.\n"
) * 20
VOICING_LEXICON = ["kitap\tkitab", "oku", "var", "resim", "kapak\tkapağ", "güzel",
                   "ağaç\tağac", "alt", "kuş", "renk\treng", "mavi"]  # fmt: skip


@pytest.fixture(scope="module")
def voicing() -> tr_tokenizer.Tokenizer:
    return tr_tokenizer.train(
        [VOICING_CORPUS], vocab_size=900, lexicon=VOICING_LEXICON,
        config=TrainConfig(suffix_chains=100, alphabet_size=120, word_fraction=0.0),
    )  # fmt: skip


def test_root_alternants_share_an_id(voicing) -> None:
    kitap = voicing.token_to_id(" kitap")
    assert voicing.vocab.voicing[kitap] == "b"
    assert voicing.token_to_id(" kitab") is None
    for word in (" kitabı", " kitapta", " Kitabın", " KİTABI", " kitap"):
        assert voicing.encode(word).ids[-2 if word != " kitap" else -1] == kitap, word
    assert voicing.encode(" rengi").tokens[0] == " renk"  # nk -> ng
    # the rule would give "kitabı", so "kitapı" must not use the shared root id
    assert kitap not in voicing.encode(" kitapı").ids


def test_a_name_spelled_like_a_voiced_stem_leaves_the_root_alternating() -> None:
    """zemberek lists the name Kitab besides kitap/kitab: kitabı is still kitap + ı, and the
    name takes its suffixes after an apostrophe only."""
    tok = tr_tokenizer.train(
        [VOICING_CORPUS], vocab_size=900, lexicon=[*VOICING_LEXICON, "Kitab"],
        config=TrainConfig(suffix_chains=100, alphabet_size=120, word_fraction=0.0),
    )  # fmt: skip
    kitap = tok.token_to_id(" kitap")
    assert tok.vocab.voicing[kitap] == "b"
    assert tok.encode(" kitabı").ids[0] == kitap


def test_root_alternants_without_sharing_are_separate_roots() -> None:
    tok = tr_tokenizer.train(
        [VOICING_CORPUS], vocab_size=900, lexicon=VOICING_LEXICON, share_allomorphs=False,
        config=TrainConfig(suffix_chains=100, alphabet_size=120),
    )  # fmt: skip
    assert not tok.vocab.voicing
    assert tok.kind(tok.token_to_id(" kitab")) == "root"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([" kitap", " kitab", "ı", "ta", "KİTAP", "'", "ı", "😀", " ",
                                 "ağaç", "ağac", "ın", "renk", "reng", "i", "Renk"]),
                max_size=12).map("".join))  # fmt: skip
def test_root_alternants_round_trip_and_stream(voicing, text: str) -> None:
    ids = voicing.encode(text).ids
    assert voicing.decode(ids) == text
    stream = voicing.decode_stream()
    assert "".join([stream.step(i) for i in ids]) + stream.flush() == text


def test_training_is_deterministic_and_sources_equivalent(small, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS * 3, encoding="utf-8")
    lexicon = tmp_path / "roots.txt"
    lexicon.write_text("\n".join(LEXICON), encoding="utf-8")
    again = tr_tokenizer.train(corpus, vocab_size=1200, lexicon=lexicon, config=SMALL)
    assert again.fingerprint == small.fingerprint
    small.save(tmp_path / "saved")
    assert tr_tokenizer.load(tmp_path / "saved").fingerprint == small.fingerprint


def test_word_counts_add_frequency(tmp_path) -> None:
    counts = tmp_path / "counts.tsv"
    counts.write_text("kalemlerimizden\t500\nkalem\t300\n", encoding="utf-8")
    tok = tr_tokenizer.train(
        [CORPUS], vocab_size=1000, lexicon=LEXICON + ["kalem"], word_counts=counts, config=SMALL
    )
    assert tok.encode(" kalemlerimizden").tokens[0] == " kalem"


def test_frequent_inflected_words_become_whole_pieces(tmp_path) -> None:
    counts = {"kalemlerimizden": 500.0, "kalem": 300.0, "kalemler": 5.0}
    config = TrainConfig(suffix_chains=200, alphabet_size=120, word_fraction=0.02)
    tok = tr_tokenizer.train(
        [CORPUS], vocab_size=1000, lexicon=LEXICON + ["kalem"], word_counts=counts, config=config
    )
    whole = tok.token_to_id(" kalemlerimizden")
    assert whole is not None and tok.kind(whole) == "word"
    assert tok.encode(" kalemlerimizden").ids == [whole]
    assert tok.token_to_id("kalemlerimizden") is not None  # its unspaced use (sentence starts)
    assert tok.encode(" kalemlerimizden").ids != tok.encode(" kalemler").ids
    assert tok.decode(tok.encode(" Kalemlerimizden kalemler").ids) == " Kalemlerimizden kalemler"


def test_derived_stems_become_roots_of_their_own() -> None:
    """yaşlı (yaş + lI) and mutsuzluk (mut + sIz + lIk) are lemmas of their own: roots that
    take suffixes, the k of -lIk voicing like a root's (mutsuzluğu)."""
    counts = {"yaşlılar": 300.0, "yaşlıyı": 200.0, "yaş": 400.0, "mutsuzluğu": 200.0,
              "mutsuzluktan": 200.0}  # fmt: skip
    lexicon = [*LEXICON, "yaş", "mut"]
    tok = tr_tokenizer.train([CORPUS], vocab_size=1000, lexicon=lexicon, word_counts=counts,
                             config=SMALL)  # fmt: skip
    yasli, mutsuzluk = tok.token_to_id(" yaşlı"), tok.token_to_id(" mutsuzluk")
    assert tok.kind(yasli) == "root" and tok.kind(mutsuzluk) == "root"
    assert tok.vocab.voicing[mutsuzluk] == "ğ"
    assert tok.encode(" yaşlılar").ids[0] == yasli
    for word in (" mutsuzluğu", " Mutsuzluktan"):
        ids = tok.encode(word).ids
        assert mutsuzluk in ids and len(ids) <= 3 and tok.decode(ids) == word
    roots_only = replace(SMALL, derived_stems=False)
    tok = tr_tokenizer.train([CORPUS], vocab_size=1000, lexicon=lexicon, word_counts=counts,
                             config=roots_only)  # fmt: skip
    assert tok.token_to_id(" yaşlı") is None and tok.token_to_id(" mutsuzluk") is None


def test_a_frequent_short_root_does_not_take_the_stems_it_starts() -> None:
    """Hard EM's first estimate shares a word among its shortest parses only: da, frequent on
    its own, would otherwise collect half of dayanır (da + yan + ır) and keep it."""
    counts = {"da": 5000.0, "dayanır": 50.0, "dayandı": 50.0, "dayanmak": 50.0}
    tok = tr_tokenizer.train([CORPUS], vocab_size=1000, lexicon=[*LEXICON, "da", "dayan"],
                             word_counts=counts, config=SMALL)  # fmt: skip
    dayan = tok.token_to_id(" dayan")
    assert dayan is not None and tok.kind(dayan) == "root"
    assert tok.encode(" dayanır").ids[0] == dayan


def test_training_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="no text"):
        tr_tokenizer.train([], vocab_size=1000)
    with pytest.raises(FileNotFoundError, match="lexicon file"):
        tr_tokenizer.train([CORPUS], vocab_size=1000, lexicon=tmp_path / "missing.txt")
    bad = tmp_path / "counts.tsv"
    bad.write_text("word\tmany\n", encoding="utf-8")
    with pytest.raises(ValueError, match="counts.tsv:1"):
        tr_tokenizer.train([CORPUS], vocab_size=1000, word_counts=bad)
    with pytest.raises(ValueError, match="vocab_size"):
        tr_tokenizer.train([CORPUS], vocab_size=100)
