"""The Turkish suffix inventory and the rules that realize a suffix from its left context.

Suffixes are written with archiphonemes, as in Turkish grammars:
  A    a/e by two-way vowel harmony (back/front of the last vowel)
  I    ı/i/u/ü by four-way vowel harmony (back/front x unrounded/rounded)
  D    d/t (t after a voiceless consonant: f s t k ç ş h p)
  C    c/ç (ç after a voiceless consonant)
  (y) (n) (s) (ş)  buffer consonants, present only after a vowel
  (I) (A)          connecting vowels, present only after a consonant
The k/ğ alternation before a vowel is written explicitly (-(y)AcAk / -(y)AcAğ, -lIk / -lIğ).

A shared suffix token stores one such form; the decoder spells it out from the text to its left.
The encoder uses a shared token only where this spelling reproduces the input exactly, so
exceptions (saat-ler, Google'da, 1920'de) are written with explicit surface pieces instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

VOWELS = frozenset("aeıioöuüâîû")
BACK_VOWELS = frozenset("aıouâû")
ROUNDED_VOWELS = frozenset("oöuüû")
VOICELESS = frozenset("fstkçşhp")
APOSTROPHES = frozenset("'’")
_CONTEXT_CHARS = 40  # how far back the rules look for the last vowel

# Nominal inflection, copula and person endings, verbal voice, tense/aspect/mood, participles,
# converbs and common derivation. Several morphemes share a spelling; the inventory is a set.
NOMINAL = [
    "lAr",
    "(I)m",
    "(I)mIz",
    "(I)n",
    "(I)nIz",
    "(s)I",
    "lArI",
    "(y)I",
    "(n)In",
    "(y)A",
    "DA",
    "DAn",
    "(y)lA",
    "ki",
    "nI",
    "nA",
    "nDA",
    "nDAn",
    "nIn",
    "(I)ncI",
    "(ş)Ar",
]
COPULA = ["(y)Im", "(y)Iz", "sIn", "sInIz", "DIr", "(y)DI", "(y)mIş", "(y)sA", "(y)ken", "lAr"]
# Voice: passive, reflexive, causative, reciprocal (they make new verb stems).
VOICE = ["Il", "In", "n", "DIr", "t", "Ir", "Ar", "It", "(I)ş"]
VERBAL = [
    *VOICE,
    "mA",
    "mAz",
    "mAm",
    "mAyIz",
    "(y)Abil",
    "(y)AmA",
    "DI",
    "mIş",
    "(y)AcAk",
    "(y)AcAğ",
    "Iyor",
    "yor",
    "(A)r",
    "(I)r",
    "mAlI",
    "sA",
    "mAktA",
    "k",
    "(y)In",
    "(y)InIz",
    "(y)An",
    "DIk",
    "DIğ",
    "mAk",
    "mAğ",
    "(y)Iş",
    "(y)Ip",
    "(y)ArAk",
    "(y)IncA",
    "mAdAn",
    "(y)AlI",
    "mAksIzIn",
    "DIkçA",
    "(y)AsI",
    "mIş",
    "(y)A",
]
DERIVATIONAL = [
    "lI",
    "sIz",
    "lIk",
    "lIğ",
    "CI",
    "CA",
    "CIk",
    "CIğ",
    "sAl",
    "lAş",
    "lA",
    "DAş",
    "(I)msI",
    "CAğIz",
    "gIl",
    "DIrIl",
]
INVENTORY: tuple[str, ...] = tuple(dict.fromkeys(NOMINAL + COPULA + VERBAL + DERIVATIONAL))

# Nominal morphotactics the trainer's parser keeps to: a noun takes plural, then possessive,
# then case (then ki, or copula and person endings). So a possessive is never followed by a
# possessive or the plural, and a case by a possessive, another case or a derivation; parses
# such as not + a + ları (for notaları) or yaşın + a are not made from impossible chains.
CASES = frozenset(["(y)I", "(n)In", "(y)A", "DA", "DAn", "(y)lA", "nI", "nA", "nDA", "nDAn", "nIn"])
POSSESSIVES = frozenset(["(I)m", "(I)mIz", "(I)n", "(I)nIz", "(s)I", "lArI"])
_NOT_AFTER_POSSESSIVE = POSSESSIVES | {"lAr"}
_NOT_AFTER_CASE = CASES | POSSESSIVES | frozenset(DERIVATIONAL)


def may_follow(previous: str | None, form: str) -> bool:
    """Whether suffix `form` may follow suffix `previous` (None: the root) in a word."""
    if previous in CASES:
        return form not in _NOT_AFTER_CASE
    if previous in POSSESSIVES:
        return form not in _NOT_AFTER_POSSESSIVE
    return True


# One element of a form: (kind, letter). Kinds: "lit" literal letter, "A"/"I" harmonic vowel,
# "D"/"C" voicing consonant, "buf" consonant present after a vowel, "opt" vowel after a consonant.
Element = tuple[str, str]


@cache
def parse_form(form: str) -> tuple[Element, ...]:
    """Parse an archiphonemic form such as "(y)AcAğ" into elements."""
    out: list[Element] = []
    i = 0
    while i < len(form):
        if form[i] == "(":
            inner = form[i + 1]
            if form[i + 2 : i + 3] != ")":
                raise ValueError(f"bad suffix form {form!r}: expected one letter inside ( )")
            out.append(("opt", inner) if inner in "AI" else ("buf", inner))
            i += 3
        elif form[i] in "AIDC":
            out.append((form[i], form[i]))
            i += 1
        else:
            out.append(("lit", form[i]))
            i += 1
    return tuple(out)


def form_of(elements: Iterable[Element]) -> str:
    """Write elements back as a form string."""
    parts = []
    for kind, ch in elements:
        parts.append(f"({ch})" if kind in ("opt", "buf") else ch)
    return "".join(parts)


def _is_letter(ch: str) -> bool:
    return ch.isalpha() or "\u0300" <= ch <= "\u036f"


def left_context(text: str) -> tuple[str | None, str | None]:
    """(last letter, last vowel) of the word that ends `text`, lowercased Turkish-style.

    Scans back over letters and apostrophes and stops at anything else, so the context never
    crosses a word boundary. Returns (None, None) when `text` does not end in a word.
    """
    last_letter = None
    for ch in reversed(text[-_CONTEXT_CHARS:]):
        if ch in APOSTROPHES:
            continue
        if not _is_letter(ch):
            return last_letter, None
        low = "ı" if ch == "I" else "i" if ch == "İ" else ch.lower()
        if last_letter is None:
            last_letter = low
        if low in VOWELS:
            return last_letter, low
    return last_letter, None


def context_key(text: str) -> tuple[str, str | None] | None:
    """The part of the left context that suffix spelling depends on, or None if no word.

    Spelling looks at whether the last letter is a vowel (and which), a voiceless consonant or
    another consonant, and at the last vowel; so a voiceless ending is represented by "t", any
    other consonant by "r". Two texts with the same key spell every suffix the same way.
    """
    return _key(*left_context(text))


def _key(last: str | None, vowel: str | None) -> tuple[str, str | None] | None:
    if last is None:
        return None
    if last not in VOWELS:
        last = "t" if last in VOICELESS else "r"
    return last, vowel


def context_keys(text: str) -> list[tuple[str, str | None] | None]:
    """[context_key(text[:i]) for i in 0..len(text)], in one forward pass."""
    if len(text) > _CONTEXT_CHARS:  # the backward scan's window matters only for long text
        return [context_key(text[:i]) for i in range(len(text) + 1)]
    # the same rules as left_context and _key, inlined: this runs once per new word
    keys: list[tuple[str, str | None] | None] = [None]
    key: tuple[str, str | None] | None = None
    vowel = None
    classes = _CHAR_CLASS
    for ch in text:
        cls = classes.get(ch) or _char_class(ch)
        if cls is _NOT_LETTER:
            key = vowel = None
        elif cls in VOWELS:
            vowel = cls
            key = (cls, cls)
        elif cls is not _SKIP:
            key = (cls, vowel)
        keys.append(key)
    return keys


_SKIP = "'"  # apostrophes: the context looks through them
_NOT_LETTER = "-"  # anything else that is no letter ends the word
_CHAR_CLASS: dict[str, str] = {}  # char -> lowercased vowel, "t" (voiceless), "r", or the above


def _char_class(ch: str) -> str:
    """What `ch` contributes to the left context (memoized in _CHAR_CLASS)."""
    if ch in APOSTROPHES:
        cls = _SKIP
    elif _is_letter(ch):
        low = "ı" if ch == "I" else "i" if ch == "İ" else ch.lower()
        cls = low if low in VOWELS else "t" if low in VOICELESS else "r"
    else:
        cls = _NOT_LETTER
    if len(_CHAR_CLASS) < 100_000:  # bounded: text may hold any of a million code points
        _CHAR_CLASS[ch] = cls
    return cls


def _harmony(kind: str, vowel: str) -> str:
    back, rounded = vowel in BACK_VOWELS, vowel in ROUNDED_VOWELS
    if kind == "A":
        return "a" if back else "e"
    if back:
        return "u" if rounded else "ı"
    return "ü" if rounded else "i"


def realize(
    elements: tuple[Element, ...], last_letter: str | None, vowel: str | None
) -> str | None:
    """Spell a suffix form after a word whose last letter and last vowel are given.

    Returns None when the form needs vowel harmony and the context has no vowel (a number or a
    symbol), which makes the encoder fall back to explicit surface pieces.
    """
    if last_letter is None:
        return None
    out = []
    for kind, ch in elements:
        after_vowel = last_letter in VOWELS
        if kind == "lit":
            letter = ch
        elif kind == "buf":
            if not after_vowel:
                continue
            letter = ch
        elif kind in ("A", "I", "opt"):
            if vowel is None:
                return None
            if kind == "opt" and after_vowel:
                continue
            letter = _harmony(ch if kind == "opt" else kind, vowel)
        elif kind == "D":
            letter = "t" if last_letter in VOICELESS else "d"
        else:  # "C"
            letter = "ç" if last_letter in VOICELESS else "c"
        out.append(letter)
        last_letter = letter
        if letter in VOWELS:
            vowel = letter
    return "".join(out)


def surfaces(form: str) -> set[str]:
    """Every spelling a form can take, over all contexts (used to index shared tokens)."""
    elements = parse_form(form)
    results = set()
    for last in ("a", "e", "ı", "i", "o", "ö", "u", "ü", "b", "t", "r"):
        for vowel in ("a", "e", "ı", "i", "o", "ö", "u", "ü"):
            text = realize(elements, last, last if last in VOWELS else vowel)
            if text:
                results.add(text)
    return results


def canonical_chain(forms: Iterable[str]) -> str:
    """Concatenate morpheme forms into one chain form, resolving optional letters inside it.

    Inside a chain the letter before each morpheme is known in kind (vowel or consonant) from the
    morpheme before it, so its buffer consonants and connecting vowels can be fixed; only the first
    morpheme's optional letters still depend on the word. "lAr" + "(s)I" -> "lArI".
    """
    out: list[Element] = []
    for form in forms:
        for kind, ch in parse_form(form):
            if out and kind in ("buf", "opt"):
                prev_kind, prev = out[-1]
                prev_is_vowel = prev_kind in ("A", "I") or (prev_kind == "lit" and prev in VOWELS)
                if kind == "buf" and prev_is_vowel:
                    out.append(("lit", ch))
                elif kind == "opt" and not prev_is_vowel:
                    out.append((ch, ch))
                continue
            out.append((kind, ch))
    return form_of(out)
