"""Preference pairs from the built-in instruction set: real preferences, the SFT answers as the
chosen replies, the SFT held-out split, and the wrong-reply rules on known words."""

from __future__ import annotations

from collections import Counter

import pytest
from ismail_core.finetune.builtin import TASKS, builtin_tasks
from ismail_core.finetune.builtin_preferences import builtin_preference_pairs


@pytest.fixture(scope="module")
def pset():
    return builtin_preference_pairs()


@pytest.fixture(scope="module")
def sft():
    return builtin_tasks()


def _subject(prompt: str) -> str:
    return prompt.split()[0].rstrip(":")


def test_every_pair_is_a_preference(pset):
    assert pset.pairs
    for pair in pset.pairs:
        assert pair.prompt.strip()
        assert pair.rejected.strip()
        assert pair.chosen != pair.rejected, pair


def test_chosen_is_the_sft_answer(pset, sft):
    answers = {(item.task, item.prompt): item.answer for item in sft[0] + sft[1]}
    for pair in pset.pairs:
        assert answers[(pair.task, pair.prompt)] == pair.chosen


def test_same_held_out_split_as_sft(pset, sft):
    train, held_out = sft
    keys = {(p.task, p.prompt) for p in pset.pairs}
    assert {(p.task, p.prompt) for p in pset.pairs if p.heldout} == {
        (i.task, i.prompt) for i in held_out if (i.task, i.prompt) in keys
    }
    assert {(p.task, p.prompt) for p in pset.pairs if not p.heldout} == {
        (i.task, i.prompt) for i in train if (i.task, i.prompt) in keys
    }
    # Every item is either a pair or counted as skipped.
    per_task = Counter(p.task for p in pset.pairs)
    items = Counter(i.task for i in train + held_out)
    assert {t: per_task[t] + pset.skipped[t] for t in TASKS} == dict(items)


def test_each_task_contributes(pset):
    per_task = Counter(p.task for p in pset.pairs)
    for task in TASKS:
        assert per_task[task] > 0, task
    # each task splits into training and held-out pairs
    assert {p.task for p in pset.pairs if p.heldout} == set(TASKS)


@pytest.mark.parametrize(
    ("task", "subject", "chosen", "rejected", "error"),
    [
        ("plural", "kitap", "kitaplar", "kitapler", "harmony"),
        ("plural", "ev", "evler", "evlar", "harmony"),
        ("case", "ev", "evden", "evdan", "harmony"),
        ("case", "kitap", "kitabı", "kitabi", "harmony"),
        ("case", "kitap", "kitaba", "kitabe", "harmony"),
        ("case", "millet", "milleti", "milletı", "harmony"),
        ("case", "yıl", "yılda", "yılde", "harmony"),  # no dative of yıl among training items
        ("case", "ev", "evde", "eve", "case"),  # locative -> the dative
        ("case", "kitap", "kitapta", "kitaba", "case"),
        ("stem", "düşmanlarımız", "düşman", "düşmanlar", "cut"),
        ("upper", "istanbul", "İSTANBUL", "ISTANBUL", "casing"),
        ("lower", "İSTANBUL", "istanbul", "ıstanbul", "casing"),
        ("upper", "yıl", "YIL", "YİL", "casing"),
        ("lower", "YALNIZ", "yalnız", "yalniz", "casing"),
        ("number", "47", "kırk yedi", "kırk altı", "neighbour"),
        ("number", "0", "sıfır", "bir", "neighbour"),
        ("number", "99", "doksan dokuz", "doksan sekiz", "neighbour"),
    ],
)
def test_known_words(pset, task, subject, chosen, rejected, error):
    found = [
        p
        for p in pset.pairs
        if p.task == task and _subject(p.prompt) == subject and p.chosen == chosen
    ]
    assert found, f"{subject} -> {chosen} is not in the set"
    for pair in found:
        assert (pair.rejected, pair.error) == (rejected, error)


def _vowels(word: str) -> list[int]:
    return [i for i, ch in enumerate(word) if ch in "aeıioöuü"]


def test_harmony_changes_only_the_last_vowel(pset):
    pairs = [p for p in pset.pairs if p.error == "harmony"]
    assert {p.task for p in pairs} == {"plural", "case"}
    for pair in pairs:
        diff = [i for i, (a, b) in enumerate(zip(pair.chosen, pair.rejected)) if a != b]
        assert len(pair.chosen) == len(pair.rejected)
        assert diff == [_vowels(pair.chosen)[-1]], pair


def test_casing_swaps_dotted_and_dotless_i(pset):
    for pair in (p for p in pset.pairs if p.error == "casing"):
        assert len(pair.chosen) == len(pair.rejected)
        for a, b in zip(pair.chosen, pair.rejected):
            assert a == b or {a, b} in ({"i", "ı"}, {"İ", "I"}), pair


def test_cut_stops_after_the_plural(pset):
    for pair in (p for p in pset.pairs if p.error == "cut"):
        form = _subject(pair.prompt)
        assert pair.rejected in (pair.chosen + "lar", pair.chosen + "ler"), pair
        assert form.startswith(pair.rejected) and form != pair.rejected, pair


def test_borrowed_wrong_replies_are_training_answers(pset, sft):
    """A wrong reply taken from another item (the dative, a neighbouring number) is a training
    answer: no held-out answer leaks into a training pair."""
    train_answers = {(i.task, i.answer) for i in sft[0]}
    borrowed = [p for p in pset.pairs if p.error in ("case", "neighbour")]
    assert borrowed
    for pair in borrowed:
        assert (pair.task, pair.rejected) in train_answers, pair
