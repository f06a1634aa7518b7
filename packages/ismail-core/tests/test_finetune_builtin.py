"""The built-in Turkish instruction set: determinism, the held-out split, correct Turkish forms."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ismail_core.finetune import builtin
from ismail_core.finetune.builtin import TASKS, TaskItem, builtin_tasks, is_correct
from tr_tokenizer.casing import tr_lower, tr_upper
from tr_tokenizer.suffixes import parse_form, realize

CASE_BY_NAME = {"yönelme": "dative", "bulunma": "locative", "ayrılma": "ablative"}
CASE_BY_NAME |= {"belirtme": "accusative", "-e": "dative", "-de": "locative"}
CASE_BY_NAME |= {"-den": "ablative", "-i": "accusative"}
TURKISH_LOWER = "abcçdefgğhıijklmnoöprsştuüvyz"


@pytest.fixture(scope="module")
def split() -> tuple[list[TaskItem], list[TaskItem]]:
    return builtin_tasks()


def _subject(prompt: str) -> str:
    """The word or number a prompt asks about: every phrasing opens with it."""
    return prompt.split(" ", 1)[0].removesuffix(":")


def _case(prompt: str) -> str:
    return CASE_BY_NAME[re.search(r" (\S+) hâl", prompt).group(1)]


def _answers(items: list[TaskItem]) -> dict[tuple[str, ...], str]:
    """(task, subject) -> answer, with the case name added for the case task."""
    out = {}
    for item in items:
        key = (item.task, _subject(item.prompt))
        out[key + ((_case(item.prompt),) if item.task == "case" else ())] = item.answer
    return out


# --- the split --------------------------------------------------------------------------------


def test_deterministic_and_rebuilt_identically(split) -> None:
    assert builtin_tasks() == split
    assert builtin._all_items.__wrapped__() == builtin._all_items()  # a fresh build, not the cache


def test_same_items_in_another_process_with_another_hash_seed(split) -> None:
    # Python's hash() and set order change with PYTHONHASHSEED; the items must not.
    code = (
        "import hashlib; from ismail_core.finetune.builtin import builtin_tasks; "
        "print(hashlib.sha256(repr(builtin_tasks()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(repr(split).encode()).hexdigest()


def test_held_out_is_disjoint_about_a_tenth_and_covers_every_task(split) -> None:
    train, held_out = split
    train_keys = {(i.task, i.prompt) for i in train}
    held_keys = {(i.task, i.prompt) for i in held_out}
    assert len(train_keys) == len(train) and len(held_keys) == len(held_out)  # prompts unique
    assert not train_keys & held_keys
    assert 0.08 < len(held_out) / (len(train) + len(held_out)) < 0.12
    for item in held_out:  # the documented rule: sha256 of (task, prompt) % 10 == 0
        digest = hashlib.sha256(f"{item.task}\x00{item.prompt}".encode()).hexdigest()
        assert int(digest, 16) % 10 == 0
    n_train, n_held = Counter(i.task for i in train), Counter(i.task for i in held_out)
    assert set(n_train) == set(n_held) == set(TASKS)
    for task in TASKS:
        assert 0.04 < n_held[task] / (n_train[task] + n_held[task]) < 0.17, task


def test_sizes_and_answer_shapes(split) -> None:
    items = split[0] + split[1]
    counts = Counter(i.task for i in items)
    assert 2000 < len(items) < 10_000
    assert counts["number"] == 300 and counts["plural"] > 200 and counts["stem"] > 500
    for item in items:
        assert 1 <= len(item.answer.split()) <= 4, item
        assert item.answer == item.answer.strip() and not item.answer.endswith("."), item
        assert item.task in TASKS


def test_messages() -> None:
    item = TaskItem("plural", "kitap kelimesinin çoğulu nedir?", "kitaplar")
    assert item.messages() == [
        {"role": "user", "content": "kitap kelimesinin çoğulu nedir?"},
        {"role": "assistant", "content": "kitaplar"},
    ]


# --- correct Turkish ----------------------------------------------------------------------------


def test_known_words_in_the_set(split) -> None:
    answers = _answers(split[0] + split[1])
    expected = {
        ("plural", "ev"): "evler",
        ("plural", "kitap"): "kitaplar",
        ("plural", "göz"): "gözler",
        ("plural", "millet"): "milletler",
        ("case", "kitap", "dative"): "kitaba",
        ("case", "kitap", "locative"): "kitapta",
        ("case", "kitap", "ablative"): "kitaptan",
        ("case", "kitap", "accusative"): "kitabı",
        ("case", "ev", "dative"): "eve",
        ("case", "ev", "locative"): "evde",
        ("case", "ev", "ablative"): "evden",
        ("case", "ev", "accusative"): "evi",
        ("case", "göz", "accusative"): "gözü",
        ("case", "su", "dative"): "suya",
        ("case", "su", "accusative"): "suyu",
        ("case", "sene", "dative"): "seneye",
        ("case", "yurt", "dative"): "yurda",
        ("case", "yurt", "locative"): "yurtta",
        ("case", "renk", "accusative"): "rengi",
        ("case", "millet", "accusative"): "milleti",
        ("upper", "istanbul"): "İSTANBUL",
        ("lower", "İSTANBUL"): "istanbul",
        ("number", "47"): "kırk yedi",
    }
    for key, answer in expected.items():
        assert answers.get(key) == answer, key


def test_irregular_words_are_left_out(split) -> None:
    answers = _answers(split[0] + split[1])
    # saat-ler, hal-ler take front vowels; hak-kı, şehr-e, fikr-i, hat-tı change their stem.
    assert ("plural", "saat") not in answers and ("plural", "hal") not in answers
    for word in ("hak", "şehir", "fikir", "hat"):
        assert ("case", word, "dative") not in answers
        assert ("case", word, "accusative") not in answers


def test_rules_on_known_words() -> None:
    attach, inflect = builtin._attach, builtin._inflect
    assert [attach(w, "lAr") for w in ("ev", "kitap", "göz", "kız", "gün")] == [
        "evler",
        "kitaplar",
        "gözler",
        "kızlar",
        "günler",
    ]
    assert [inflect("kitap", c, "kitab") for c in ("dative", "locative", "ablative")] == [
        "kitaba",
        "kitapta",
        "kitaptan",
    ]
    assert [inflect("ev", c, "ev") for c in ("dative", "locative", "ablative", "accusative")] == [
        "eve",
        "evde",
        "evden",
        "evi",
    ]
    assert inflect("kapı", "accusative", "kapı") == "kapıyı"
    assert inflect("şehir", "dative", None) is None  # needs the stem before a vowel: şehr-e
    assert attach("kitap", "lArImIzDAn") == "kitaplarımızdan"


@pytest.mark.parametrize(
    ("noun", "words", "stem"),
    [
        ("kitap", ["kitabı", "kitaba"], "kitab"),  # softened
        ("millet", ["milleti"], "millet"),  # not softened
        ("renk", ["rengi"], "reng"),  # k -> g after n
        ("sene", ["seneyi"], "sene"),  # buffer y
        ("at", ["ata", "adı"], None),  # both hard and soft: two different words
        ("hak", ["hakkı"], None),  # doubled consonant
        ("şehir", ["şehri"], None),  # dropped vowel
        ("mevzu", ["mevzuu", "mevzuyu"], None),  # no buffer y after some Arabic words
        ("kalem", [], None),  # no evidence
    ],
)
def test_stem_before_a_vowel_follows_the_evidence(noun, words, stem) -> None:
    assert builtin._vowel_stem(noun, Counter(words)) == stem


def test_stem_items_are_a_noun_plus_plural_and_case_endings(split) -> None:
    for item in split[0] + split[1]:
        if item.task == "stem":
            form = _subject(item.prompt)
            assert form.startswith(item.answer), item
            assert form[len(item.answer) :][:3] in ("lar", "ler"), item


@settings(max_examples=200, deadline=None)
@given(
    stem=st.text(TURKISH_LOWER, min_size=1, max_size=8).filter(builtin._last_vowel),
    form=st.sampled_from(["lAr", "DA", "DAn", "lArDAn", "lArImIz", "lArInA", "DAkI"]),
)
def test_suffix_rules_agree_with_tr_tokenizer(stem: str, form: str) -> None:
    # tr-tokenizer spells shared suffix tokens by its own implementation of the same rules.
    expected = realize(parse_form(form), stem[-1], builtin._last_vowel(stem))
    assert builtin._attach(stem, form) == stem + expected


# --- casing and numbers -------------------------------------------------------------------------


def test_casing_items_use_turkish_i() -> None:
    items = builtin._casing_items(Counter({"istanbul": 5, "ısparta": 4, "ev": 9}))
    assert [(i.task, _subject(i.prompt), i.answer) for i in items] == [
        ("upper", "istanbul", "İSTANBUL"),
        ("upper", "ısparta", "ISPARTA"),
        ("lower", "İSTANBUL", "istanbul"),
        ("lower", "ISPARTA", "ısparta"),
    ]  # "ev" has no i/ı and is too short


@settings(max_examples=200, deadline=None)
@given(st.text(TURKISH_LOWER, min_size=1, max_size=12))
def test_casing_round_trip(word: str) -> None:
    upper = tr_upper(word)
    assert tr_lower(upper) == word and upper.upper() == upper
    assert ("i" in word) == ("İ" in upper) and ("ı" in word) == ("I" in upper)


@pytest.mark.parametrize(
    ("n", "words"), [(0, "sıfır"), (7, "yedi"), (10, "on"), (47, "kırk yedi"), (99, "doksan dokuz")]
)
def test_number_words(n: int, words: str) -> None:
    assert builtin._number_words(n) == words


@given(st.integers(0, 99))
def test_number_words_read_back(n: int) -> None:
    value = {w: i for i, w in enumerate(builtin._ONES) if w}
    value |= {w: 10 * i for i, w in enumerate(builtin._TENS) if w} | {"sıfır": 0}
    words = builtin._number_words(n).split()
    assert 1 <= len(words) <= 2 and sum(value[w] for w in words) == n


def test_number_words_out_of_range() -> None:
    for n in (-1, 100):
        with pytest.raises(ValueError, match="0-99"):
            builtin._number_words(n)


# --- checking replies ---------------------------------------------------------------------------


def test_is_correct() -> None:
    item = TaskItem("plural", "kitap kelimesinin çoğulu nedir?", "kitaplar")
    for reply in ("kitaplar", " kitaplar ", "kitaplar.", "kitaplar .", "\nkitaplar.\n"):
        assert is_correct(item, reply), reply
    for reply in ("Kitaplar", "kitaplar..", "kitaplar!", "kitap", "kitaplar lar", ""):
        assert not is_correct(item, reply), reply
    assert is_correct(TaskItem("number", "Yazıyla yaz: 47", "kırk yedi"), " kırk yedi.")
