"""Preference pairs from the built-in Turkish instruction set, for preference tuning (DPO).

Each item of `builtin.builtin_tasks()` becomes a pair: the same prompt, the item's answer as the
chosen reply, and a plausible wrong reply of the kind a small model makes:

  plural  kitaplar -> kitapler           the suffix's vowel with the wrong harmony
  case    evde     -> eve                locative: the dative of the same noun instead, where
                                         the training items have it; otherwise, and for
          evden    -> evdan              the other cases, the wrong harmony
  stem    kitaplarımızdan: kitap -> kitaplar   cut after the plural instead of before it
  upper   İSTANBUL -> ISTANBUL           dotted and dotless I swapped (what str.upper gives)
  lower   ısparta  -> isparta            dotted and dotless i swapped
  number  kırk yedi -> kırk altı         a neighbouring number: n + 1 for even n, n - 1 for odd

The rejected reply is never the chosen one; an item for which no distinct wrong reply can be
made is skipped and counted. Pairs keep the instruction set's held-out split: a pair is held
out exactly when its item is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ismail_core.finetune.builtin import TASKS, TaskItem, builtin_tasks

# front <-> back partner of each vowel: the same height and rounding, the other harmony
_HARMONY_SWAP = str.maketrans("aeıiouöü", "eaiıöüou")
_DOT_SWAP = str.maketrans("iıİI", "ıiIİ")


@dataclass(frozen=True)
class PreferencePair:
    """One prompt with a preferred and a dispreferred reply.

    error names the kind of wrong reply: "harmony", "case", "cut", "casing" or "neighbour".
    """

    task: str
    prompt: str
    chosen: str
    rejected: str
    error: str
    heldout: bool


@dataclass(frozen=True)
class PreferenceSet:
    """The pairs in the instruction set's order (train items first, then held-out ones), and
    per task the number of items skipped because no distinct wrong reply could be made."""

    pairs: list[PreferencePair]
    skipped: dict[str, int]


def builtin_preference_pairs() -> PreferenceSet:
    """Preference pairs for every built-in instruction whose answer has a plausible wrong twin.

    Deterministic: the same pairs in the same order wherever the instruction set is the same.
    """
    train, held_out = builtin_tasks()
    tagged = [(item, False) for item in train] + [(item, True) for item in held_out]
    # Other items' answers used as wrong replies come from the training items only, so that no
    # held-out answer appears in a training pair, even as the rejected reply.
    case_forms = _case_forms(train)
    numbers = {int(_subject(i.prompt)): i.answer for i in train if i.task == "number"}
    pairs, skipped = [], Counter({task: 0 for task in TASKS})
    for item, heldout in tagged:
        wrong = _wrong_reply(item, case_forms, numbers)
        if wrong is None or wrong[0] == item.answer:
            skipped[item.task] += 1
            continue
        rejected, error = wrong
        pairs.append(PreferencePair(item.task, item.prompt, item.answer, rejected, error, heldout))
    return PreferenceSet(pairs, dict(skipped))


def _subject(prompt: str) -> str:
    """The word or number an instruction is about: every built-in phrasing opens with it
    ("kitap kelimesinin ...", "47: yazıyla yaz.")."""
    return prompt.split()[0].rstrip(":")


def _case_forms(items: list[TaskItem]) -> dict[str, list[str]]:
    """Each noun of the case task with its case forms among `items`."""
    forms: dict[str, list[str]] = {}
    for item in items:
        if item.task == "case":
            forms.setdefault(_subject(item.prompt), []).append(item.answer)
    return forms


def _wrong_reply(
    item: TaskItem, case_forms: dict[str, list[str]], numbers: dict[int, str]
) -> tuple[str, str] | None:
    """(a plausible wrong reply, the kind of error) for the item, or None if none is made."""
    subject = _subject(item.prompt)
    if item.task == "plural":
        return _tagged(_wrong_harmony(item.answer), "harmony")
    if item.task == "case":
        dative = _dative_for_locative(subject, item.answer, case_forms.get(subject, []))
        if dative is not None:
            return dative, "case"
        return _tagged(_wrong_harmony(item.answer), "harmony")
    if item.task == "stem":
        return _tagged(_cut_after_plural(subject, item.answer), "cut")
    if item.task in ("upper", "lower"):
        return item.answer.translate(_DOT_SWAP), "casing"  # unchanged without i: skipped
    if item.task == "number":
        n = int(subject)
        return _tagged(numbers.get(n + 1 if n % 2 == 0 else n - 1), "neighbour")
    raise ValueError(f"no wrong-reply rule for task {item.task!r}")


def _tagged(reply: str | None, error: str) -> tuple[str, str] | None:
    """(reply, error), or None when a rule made no reply."""
    return None if reply is None else (reply, error)


def _wrong_harmony(answer: str) -> str | None:
    """The answer with its last vowel in the other harmony (kitaplar -> kitapler, evde ->
    evda). In the plural and case answers the last vowel is the suffix's own (-lAr, -DA, -DAn,
    -(y)A, -(y)I), so only the ending goes wrong, as in a learner's or a small model's slip."""
    for i in range(len(answer) - 1, -1, -1):
        swapped = answer[i].translate(_HARMONY_SWAP)
        if swapped != answer[i]:
            return answer[:i] + swapped + answer[i + 1 :]
    return None


def _dative_for_locative(noun: str, answer: str, forms: list[str]) -> str | None:
    """For a locative answer (noun + -DA: evde, kitapta), the noun's dative among its `forms`
    (eve, kitaba); None for other cases or when the forms hold no dative.

    Of a noun's case forms only the locative and the dative end in a or e (the ablative ends in
    n, the accusative in a high vowel), and only the locative is the noun plus d/t and a/e.
    """

    def is_locative(form: str) -> bool:
        ending = form[len(noun) :]
        return form.startswith(noun) and ending in ("da", "de", "ta", "te")

    if not is_locative(answer):
        return None
    datives = [form for form in forms if form[-1] in "ae" and not is_locative(form)]
    return datives[0] if len(datives) == 1 else None


def _cut_after_plural(form: str, stem: str) -> str | None:
    """The inflected form cut after its plural suffix (kitaplarımızdan -> kitaplar): a real
    word, one suffix short of the answer's cut. None if the form is not stem + -lAr + more."""
    plural = form[: len(stem) + 3]
    if form.startswith(stem) and plural[len(stem) :] in ("lar", "ler") and plural != form:
        return plural
    return None
