"""Training a vocabulary: roots from a lexicon, suffix tokens from the inventory, BPE for the rest.

Steps (each a function below):
1. count pre-tokenized chunks in the corpus (plus optional word counts, e.g. a frequency list);
2. parse every frequent lowercase word as lexicon root + inventory suffixes (two passes of hard
   EM, started from counts that share each word evenly among its shortest parses);
3. keep the most frequent roots and derived stems (with and without a leading space), suffix
   chains (whole sequences such as "+lArIndAn" shared across allomorphs, or literal "larından"
   without sharing) and inflected words as whole pieces ("word": " olarak", " arasında");
4. train BPE with `tokenizers` on what the morphology does not cover (unparsed words, names,
   numbers, punctuation) to fill the rest of the vocabulary.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from tr_tokenizer.casing import LOWER, MIXED, case_class, tr_lower
from tr_tokenizer.pretokenize import MAX_CHUNK, PATTERN, WORD
from tr_tokenizer.suffixes import (
    APOSTROPHES,
    CASES,
    DERIVATIONAL,
    INVENTORY,
    POSSESSIVES,
    VOICE,
    canonical_chain,
    left_context,
    may_follow,
    parse_form,
    realize,
    surfaces,
)
from tr_tokenizer.vocab import Vocabulary, fixed_pieces

MIN_VOCAB_SIZE = 512
_BASE_ALPHABET = [chr(c) for c in range(33, 127)] + list("çğıöşüÇĞİÖŞÜâîûÂÎÛ")


@dataclass
class TrainConfig:
    """Knobs of `train`. Fractions are of the vocabulary left after the fixed tokens."""

    vocab_size: int = 32768
    share_allomorphs: bool = True  # one id per suffix chain across its allomorphs
    suffix_chains: int = 2000  # suffix tokens beyond the single-morpheme inventory
    root_fraction: float = 0.55  # share of the remaining vocabulary given to roots
    word_fraction: float = 0.25  # share given to frequent inflected words as whole pieces
    # assumed share of a root's uses in lowercase with no space before it (after a bracket or a
    # quote); a capitalized word there takes the spaced root after <|glue_cap|> at no extra cost
    unspaced_ratio: float = 0.02
    max_parse_words: int = 300_000  # most frequent word types parsed for statistics
    min_root_count: float = 2.0
    alphabet_size: int = 200  # single characters kept as pieces
    # encoding rule saved with the vocabulary: between segmentations with as many tokens, the
    # longer root or whole word first (korku + yla, not kork + uyla; dayı + mı, not da + yımı)
    longest_first: bool = True
    # another one: a whole-word piece (" kitapları") is a complete word, never followed by suffix
    # tokens in a parse (no kitapları + mızdan for kitaplarımızdan)
    whole_words_alone: bool = True
    # derived stems (yaşlı = yaş + lI, mutsuzluk, getirt) compete with roots for the root share,
    # counted over every word built on them, as dictionaries list them as lemmas of their own
    derived_stems: bool = True


def train(
    files_or_iterator: str | os.PathLike | Iterable[str | os.PathLike] | Iterable[str],
    vocab_size: int = 32768,
    *,
    lexicon: str | os.PathLike | Iterable[str] | None = None,
    word_counts: str | os.PathLike | Mapping[str, float] | None = None,
    share_allomorphs: bool = True,
    config: TrainConfig | None = None,
):
    """Train a tokenizer.

    files_or_iterator: a text file path, a list of paths, or an iterable of text strings.
    lexicon: roots (a file with one root per line, or an iterable); without one there is no
        root layer and words are covered by BPE plus suffix tokens.
    word_counts: extra word frequencies (a mapping or a "word<TAB>count" file), e.g. a
        frequency list of a larger corpus than the prose given.
    Returns a `Tokenizer`.
    """
    from tr_tokenizer.tokenizer import Tokenizer

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the special, byte and whitespace tokens alone "
            f"take {len(fixed_pieces())}; use at least {MIN_VOCAB_SIZE}"
        )
    cfg = replace(config or TrainConfig(), vocab_size=vocab_size, share_allomorphs=share_allomorphs)
    chunks = count_chunks(_texts(files_or_iterator))
    if word_counts is not None:
        for word, count in _word_counts(word_counts).items():
            for chunk in PATTERN.findall(" " + word):
                _add(chunks, chunk, count)
    if not chunks:
        raise ValueError("train() got no text: pass files or an iterable of non-empty strings")
    roots, voiced, proper = _lexicon(lexicon)
    vocab = build_vocabulary(chunks, roots, cfg, voiced, proper)
    return Tokenizer(vocab)


# ---- inputs -------------------------------------------------------------------------------


def _texts(source) -> Iterable[str]:
    """Texts from a file path, a list of file paths, or an iterable of text strings.

    A str is a path only when given alone or in a list/tuple whose items all name existing
    files; strings from any other iterable are text, so a line that happens to equal a file
    name is never read as a file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"training file {path} does not exist")
        yield _read_utf8(path, "training file")
        return
    paths = isinstance(source, (list, tuple)) and all(
        isinstance(x, os.PathLike) or (isinstance(x, str) and _is_file(x)) for x in source
    )
    for item in source:
        if isinstance(item, os.PathLike) or paths:
            yield _read_utf8(Path(item), "training file")
        elif isinstance(item, str):
            yield item
        else:
            raise TypeError(f"train() expects paths or strings, got {type(item).__name__}")


def _read_utf8(path: Path, what: str) -> str:
    """The text of an input file; a file that is not UTF-8 raises ValueError naming it
    (UnicodeDecodeError's own message names only the byte)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
            "pass plain text files, converted to UTF-8 if needed (iconv -t UTF-8)"
        ) from e


def _is_file(item: str) -> bool:
    return 0 < len(item) < 4096 and "\n" not in item and Path(item).is_file()


def _lexicon(lexicon) -> tuple[set[str], dict[str, str], frozenset[str]]:
    """Roots (lowercase), voiced stems of roots whose last consonant alternates (kitab ->
    kitap), and the roots that are proper names only.

    Each line (or item) is a root, optionally followed by a tab and its voiced stem
    ("kitap\tkitab"). A voiced stem that is also a root of its own is not treated as one. A root
    written capitalized ("Ankara") is a proper name, unless it is also listed in lowercase or is
    a voiced stem.
    """
    if lexicon is None:
        return set(), {}, frozenset()
    if isinstance(lexicon, (str, os.PathLike)):
        path = Path(lexicon)
        if not path.is_file():
            raise FileNotFoundError(f"lexicon file {path} does not exist (one root per line)")
        lexicon = _read_utf8(path, "lexicon file").split("\n")
    roots: set[str] = set()
    named: set[str] = set()  # roots written capitalized
    common: set[str] = set()  # roots written in lowercase
    voiced: dict[str, str] = {}
    for line in lexicon:
        written, _, stem = (x.strip() for x in line.partition("\t"))
        root, stem = tr_lower(written), tr_lower(stem)
        if root and WORD.fullmatch(root):
            roots.add(root)
            (named if written[:1].isupper() else common).add(root)
            if len(stem) == len(root) > 1 and stem[:-1] == root[:-1] and stem != root:
                voiced.setdefault(stem, root)
    # a name spelled like a voiced stem (Kitab) does not stop kitab(ı) from being kitap's
    voiced = {stem: root for stem, root in voiced.items() if stem not in common}
    return roots, voiced, frozenset(named - common - voiced.keys())


def _word_counts(word_counts) -> Mapping[str, float]:
    if isinstance(word_counts, Mapping):
        return word_counts
    path = Path(word_counts)
    if not path.is_file():
        raise FileNotFoundError(f"word count file {path} does not exist (word<TAB>count lines)")
    counts: dict[str, float] = {}
    for n, line in enumerate(_read_utf8(path, "word count file").split("\n"), 1):
        if not line:
            continue
        word, _, count = line.rpartition("\t")
        try:
            counts[word] = counts.get(word, 0.0) + float(count)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: expected 'word<TAB>count', got {line!r}") from e
    return counts


def _add(counts: Counter, key: str, amount: float) -> None:
    """counts[key] += amount. Counts here are weighted (a word list's frequencies, a count
    shared among parses, the unspaced ratio), which Counter supports though typeshed types its
    values as int."""
    counts[key] += amount  # type: ignore[assignment]


def count_chunks(texts: Iterable[str]) -> Counter:
    """Count pre-tokenized chunks over texts."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(PATTERN.findall(text))
    return counts


# ---- morphology statistics -----------------------------------------------------------------

_Parse = tuple[str, list[str]]  # (root, suffix forms and apostrophes) of a word


class _MorphParser:
    """Parses lowercase words as root + inventory morphemes (for training statistics)."""

    def __init__(self, roots: set[str], proper: frozenset[str] = frozenset()) -> None:
        self.roots = roots
        # proper names take their suffixes after an apostrophe (Aras'ta), so a proper name
        # never starts a word that continues with a letter (arasında is ara + sı + nda)
        self.proper = proper
        self.max_root = max((len(r) for r in roots), default=0)
        self.by_surface: dict[str, list[str]] = {}
        for form in INVENTORY:
            for s in surfaces(form):
                self.by_surface.setdefault(s, []).append(form)
        self.max_surface = max(len(s) for s in self.by_surface)
        self.root_cost: dict[str, float] = {}
        self.morph_cost: dict[str, float] = {}
        self.default_root_cost = 1.0
        self.default_morph_cost = 1.0

    def parse(self, word: str) -> tuple[str, list[str]] | None:
        """Best (root, [morpheme forms and apostrophes]) for a word, or None.

        A parse with fewer derivational morphemes wins whatever its other costs (each one adds
        _DERIVATION_COST): a stem the lexicon lists (düzlük, tuzlu) is its own root, not
        re-derived (düz + lük, tuz + lu), as a dictionary lemmatizes it. Among the rest, the
        cheapest.
        """
        best = min(self.parses(word), key=lambda parse: parse[0], default=None)
        return None if best is None else (best[1], best[2])

    def parses(self, word: str) -> list[tuple[float, str, list[str]]]:
        """(cost, root, forms) of the best parse of the word with each root it can start with."""
        found = []
        for L in range(min(len(word), self.max_root), 0, -1):
            root = word[:L]
            if root not in self.roots:
                continue
            if root in self.proper and L < len(word) and word[L] not in APOSTROPHES:
                continue
            rest = self._suffixes(word, L)
            if rest is not None:
                rc = self.root_cost.get(root, self.default_root_cost) - 1e-3 * L
                found.append((rc + rest[0], root, rest[1]))
        return found

    def _suffixes(self, word: str, start: int) -> tuple[float, list[str]] | None:
        """Cheapest morpheme sequence spelling word[start:], keeping to `may_follow`: the
        search state is (position, class of the last morpheme), classes as in _CLASS."""
        n = len(word)
        cost = [[math.inf] * 3 for _ in range(n + 1)]
        back: list[list[tuple[int, int, str] | None]] = [[None] * 3 for _ in range(n + 1)]
        cost[start][0] = 0.0
        for i in range(start, n):
            last, vowel = left_context(word[:i])
            for k in range(3):
                c0 = cost[i][k]
                if c0 == math.inf:
                    continue
                if word[i] in APOSTROPHES and c0 < cost[i + 1][k]:
                    cost[i + 1][k] = c0
                    back[i + 1][k] = (i, k, word[i])
                self._relax(word, i, k, c0, last, vowel, cost, back)
        k = min(range(3), key=lambda k: cost[n][k])
        if cost[n][k] == math.inf:
            return None
        total, forms, j = cost[n][k], [], n
        while j > start:
            edge = back[j][k]
            assert edge is not None  # every finite-cost state was reached by an edge
            i, k, form = edge
            forms.append(form)
            j = i
        forms.reverse()
        return total, forms

    def _relax(self, word, i, k, c0, last, vowel, cost, back) -> None:
        """Edges from state (i, k) over every morpheme spelled word[i:j] that may follow."""
        previous = _CLASS_EXAMPLE[k]
        for j in range(i + 1, min(len(word), i + self.max_surface) + 1):
            sub = word[i:j]
            for form in self.by_surface.get(sub, ()):
                if not may_follow(previous, form):
                    continue
                c = c0 + self.morph_cost.get(form, self.default_morph_cost)
                if form in _DERIVATIONAL:  # as in parse(): fewer derivations first (kitab +
                    c += _DERIVATION_COST  # ın is a genitive, not the reflexive -In)
                # after a case only ki starts a new noun; copula and person endings keep the
                # word closed to possessives and cases (not + a + lar + ı is no word)
                to = 2 if k == 2 and form != "ki" else _class_of(form)
                if c < cost[j][to] and realize(parse_form(form), last, vowel) == sub:
                    cost[j][to] = c
                    back[j][to] = (i, k, form)

    def set_costs(self, root_counts: Counter, morph_counts: Counter) -> None:
        """Switch to unigram costs (-log p) estimated from a previous pass."""
        rt = sum(root_counts.values()) or 1.0
        mt = sum(morph_counts.values()) or 1.0
        self.root_cost = {r: -math.log(c / rt) for r, c in root_counts.items()}
        self.morph_cost = {m: -math.log(c / mt) for m, c in morph_counts.items()}
        self.default_root_cost = -math.log(0.5 / rt)
        self.default_morph_cost = -math.log(0.5 / mt)


# Nominal derivation, and the verbal voice suffixes (passive, reflexive, causative, reciprocal),
# which make new verb stems that dictionaries list of their own (ayrıl, yerleş, sıkıl).
_DERIVATIONAL = frozenset(DERIVATIONAL) | frozenset(VOICE)


# More than any parse's cost: the search takes the fewest derivations, then the cheapest.
_DERIVATION_COST = 1e4


# Classes of the last morpheme for the parser's search: 0 root or other, 1 possessive, 2 case;
# `may_follow` depends on nothing else, so a member of each class stands for it.
_CLASS_EXAMPLE = (None, "(s)I", "DA")


def _class_of(form: str) -> int:
    return 2 if form in CASES else 1 if form in POSSESSIVES else 0


def _uniform_counts(
    parser: _MorphParser, words: list[str], bare: Counter
) -> tuple[Counter, Counter]:
    """Root and morpheme counts with each word's count shared evenly among its parses with the
    fewest derivations, then the fewest morphemes: the first estimate for hard EM. Starting from
    equal costs instead lets the longest root win every tie (aras+ında, yaşın+a, bun+u); sharing
    among all parses lets a frequent short word take the stems it starts (sö + k + üp for söküp,
    da + yan + ır for dayanır: sö and da collect half of every word they begin), and the passes
    after it only reinforce either."""
    roots: Counter = Counter()
    morphs: Counter = Counter()
    for w in words:
        found = _shortest(parser.parses(w))
        for _, root, forms in found:
            share = bare[w] / len(found)
            _add(roots, root, share)
            for f in forms:
                _add(morphs, f, share)
    return roots, morphs


def _shortest(
    parses: list[tuple[float, str, list[str]]],
) -> list[tuple[float, str, list[str]]]:
    """The parses with the fewest derivations, and among them the fewest morphemes."""
    if not parses:
        return parses
    size = [(sum(f in _DERIVATIONAL for f in forms), len(forms)) for _, _, forms in parses]
    least = min(size)
    return [p for p, n in zip(parses, size) if n == least]


def _chains(forms: list[str]) -> list[list[str]]:
    """Split a parse's suffix list at apostrophes into morpheme runs."""
    runs: list[list[str]] = [[]]
    for f in forms:
        if f in APOSTROPHES:
            runs.append([])
        else:
            runs[-1].append(f)
    return [r for r in runs if r]


def _surface_of_run(word: str, root: str, forms: list[str]) -> list[str]:
    """Surface strings of each apostrophe-free morpheme run of a parsed word."""
    out = []
    pos = len(root)
    run = ""
    for f in forms:
        if f in APOSTROPHES:
            if run:
                out.append(run)
            run = ""
            pos += 1
            continue
        last, vowel = left_context(word[:pos])
        s = realize(parse_form(f), last, vowel) or ""
        run += s
        pos += len(s)
    if run:
        out.append(run)
    return out


# ---- vocabulary assembly -------------------------------------------------------------------


def build_vocabulary(
    chunks: Counter,
    lexicon: set[str],
    cfg: TrainConfig,
    voiced: dict[str, str] | None = None,
    proper: frozenset[str] = frozenset(),
) -> Vocabulary:
    """Choose roots, suffix tokens and BPE pieces from chunk counts.

    voiced maps voiced stems to their roots (kitab -> kitap). With share_allomorphs both count
    as the root and share its id; without, the stem is a root of its own. proper: the roots
    that are proper names only (their suffixes follow an apostrophe).
    """
    voiced = voiced or {}
    base_of = voiced if cfg.share_allomorphs else {}
    fixed = fixed_pieces()
    words, raw, chars = _sort_chunks(chunks)
    bare, parses = _parse_words(words, lexicon | set(voiced), cfg.max_parse_words, proper)
    suffixes = _suffix_tokens(parses, bare, cfg)
    # roots and whole words share what suffixes and single characters leave
    room = cfg.vocab_size - len(fixed) - len(suffixes.texts) - cfg.alphabet_size
    stems = _derived_stems(parses) if cfg.derived_stems else {}
    if cfg.share_allomorphs:  # mutsuzluğ(u) -> mutsuzluk, as kitab -> kitap
        base_of = {**base_of, **_voiced_stems(stems)}
    variants = _root_variant_counts(words, parses, stems, base_of, cfg.unspaced_ratio)
    roots = [
        (r, c)
        for r, c in variants.most_common()
        if c >= cfg.min_root_count and r not in suffixes.singles
    ][: int(cfg.root_fraction * room)]
    n_words = int(cfg.word_fraction * room)
    whole_words = _whole_words(words, parses, {r for r, _ in roots}, n_words, cfg.unspaced_ratio)

    pieces = _Pieces(fixed, cfg.vocab_size)
    suffix_total = sum(suffixes.counts.values()) or 1.0
    for text in suffixes.texts:
        pieces.add(text, "suffix", _logp(suffixes.counts.get(text, 0.5), suffix_total))
    pieces.add_counted(roots, "root")
    pieces.add_counted(whole_words, "word")
    alphabet = _alphabet(chars, cfg.alphabet_size)
    for ch in alphabet:
        pieces.add(ch, "bpe", -20.0)
    voicing = _voicing(pieces.items, base_of)

    # BPE over what the morphology does not cover
    residual = _residual(words, raw, pieces.items, voicing, cfg)
    wanted = cfg.vocab_size - len(pieces.items)
    learned = [p for p in _train_bpe(residual, alphabet, 2 * wanted) if p not in pieces.seen]
    for rank, piece in enumerate(learned[:wanted]):
        pieces.add(piece, "bpe", -math.log(rank + 2))
    return Vocabulary(pieces.items, config=asdict(cfg), voicing=voicing)


def _sort_chunks(chunks: Counter) -> tuple[Counter, Counter, Counter]:
    """(words, raw, chars): lowercase words (with their leading space, if any) of chunks that
    are words in one case class, the other non-space chunks (encoded without morphology), and
    character counts."""
    words: Counter = Counter()
    raw: Counter = Counter()
    chars: Counter = Counter()
    for chunk, count in chunks.items():
        for ch in chunk:
            chars[ch] += count
        if len(chunk) <= MAX_CHUNK and WORD.fullmatch(chunk):
            case, low = case_class(chunk)
            if case != MIXED:
                # a capitalized or all-caps word with no space before it is encoded with the
                # spaced root after a glue marker, at no extra cost: count it as spaced
                words[low if case == LOWER or low[:1] == " " else " " + low] += count
                continue
        if not chunk.isspace():
            raw[chunk] += count
    return words, raw, chars


def _parse_words(
    words: Counter, roots: set[str], max_parse_words: int, proper: frozenset[str] = frozenset()
) -> tuple[Counter, dict[str, _Parse | None]]:
    """(bare, parses): word counts with spaced and unspaced uses pooled, and the parse (root,
    suffix forms) of each of the max_parse_words most frequent, None where none exists, from
    two passes of hard EM."""
    bare: Counter = Counter()
    for w, c in words.items():
        bare[w.lstrip(" ")] += c
    frequent = [w for w, _ in bare.most_common(max_parse_words)]
    parser = _MorphParser(roots, proper)
    parser.set_costs(*_uniform_counts(parser, frequent, bare))
    parses: dict[str, _Parse | None] = {}
    for _ in range(2):
        root_counts: Counter = Counter()
        morph_counts: Counter = Counter()
        for w in frequent:
            p = parser.parse(w)
            parses[w] = p
            if p is not None:
                root_counts[p[0]] += bare[w]
                for f in p[1]:
                    morph_counts[f] += bare[w]
        parser.set_costs(root_counts, morph_counts)
    return bare, parses


def _root_variant_counts(
    words: Counter,
    parses: dict[str, _Parse | None],
    stems: dict[str, list[tuple[str, str]]],
    base_of: dict[str, str],
    unspaced_ratio: float,
) -> Counter:
    """Uses of each root and each derived stem (`stems`, from _derived_stems) with and without a
    leading space (a voiced stem counted as its root when base_of maps it); a spaced use also
    counts unspaced_ratio of one unspaced use."""
    counts: Counter = Counter()
    for w, c in words.items():
        bare_word = w.lstrip(" ")
        p = parses.get(bare_word)
        if p is None:
            continue
        spaced = w.startswith(" ")
        for stem in (p[0], *(stem for stem, _ in stems.get(bare_word, ()))):
            stem = base_of.get(stem, stem)
            _add(counts, (" " if spaced else "") + stem, c)
            if spaced:
                _add(counts, stem, unspaced_ratio * c)
    return counts


# Derivation that makes a stem of its own (yaşlı, mutsuzluk, kiracı, getirt, sınırlan). DIr is
# left out: after a noun it is the copula (güzeldir), not the causative (öldür).
_STEM_FORMING = _DERIVATIONAL - {"DIr"}


def _derived_stems(parses: dict[str, _Parse | None]) -> dict[str, list[tuple[str, str]]]:
    """For each parsed word, the derived stems it is built on, as spelled in it, each with the
    morpheme that ends it: its root plus each leading run of stem-forming morphemes
    (yaşlılar: [(yaşlı, lI)]; mutsuzluğu: [(mutsuz, sIz), (mutsuzluğ, lIğ)])."""
    found = {}
    for word, p in parses.items():
        if p is None:
            continue
        root, forms = p
        stems = []
        pos = len(root)
        for form in forms:
            if form not in _STEM_FORMING:
                break
            pos += len(realize(parse_form(form), *left_context(word[:pos])) or "")
            stems.append((word[:pos], form))
        if stems:
            found[word] = stems
    return found


def _voiced_stems(stems: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Derived stems spelled with the voiced twin of a final k ({"mutsuzluğ": "mutsuzluk"}):
    the inventory writes -lIk / -lIğ as two forms, a stem piece has one text that voices."""
    return {
        stem: stem[:-1] + "k"
        for word_stems in stems.values()
        for stem, form in word_stems
        if form.endswith("ğ") and stem.endswith("ğ")
    }


class _SuffixTokens(NamedTuple):
    """The suffix pieces, their counts over the parsed words and the single-morpheme ones."""

    texts: list[str]  # in vocabulary order: shared morphemes, literal allomorphs, chains
    counts: Counter
    singles: set[str]  # the shared morphemes and literal allomorphs


def _suffix_tokens(
    parses: dict[str, _Parse | None], bare: Counter, cfg: TrainConfig
) -> _SuffixTokens:
    """The inventory's morphemes ("+lAr", with share_allomorphs), their literal allomorphs and
    the cfg.suffix_chains most frequent chains of several morphemes."""
    literal_suffixes = sorted({s for form in INVENTORY for s in surfaces(form)})
    shared = ["+" + form for form in INVENTORY] if cfg.share_allomorphs else []
    counts: Counter = Counter()
    for w, p in parses.items():
        if p is None:
            continue
        root, forms = p
        if cfg.share_allomorphs:
            for run in _chains(forms):
                counts["+" + canonical_chain(run)] += bare[w]
        else:
            for s in _surface_of_run(w, root, forms):
                counts[s] += bare[w]
    singles = set(shared) | set(literal_suffixes)
    chains = [c for c, _ in counts.most_common() if c not in singles][: cfg.suffix_chains]
    return _SuffixTokens(shared + literal_suffixes + chains, counts, singles)


class _Pieces:
    """The vocabulary's (text, kind, score) pieces in id order, growing up to a size limit."""

    def __init__(self, fixed: list[tuple[str, str, float]], limit: int) -> None:
        self.items = list(fixed)
        self.seen = {p[0] for p in self.items}
        self.limit = limit

    def add(self, text: str, kind: str, score: float) -> None:
        """Append a piece unless its text is already one or the vocabulary is full."""
        if text not in self.seen and len(self.items) < self.limit:
            self.seen.add(text)
            self.items.append((text, kind, round(score, 3)))

    def add_counted(self, counted: Sequence[tuple[str, float]], kind: str) -> None:
        """Add (text, count) pairs scored by their log share of the pairs' total count."""
        total = sum(c for _, c in counted) or 1.0
        for text, count in counted:
            self.add(text, kind, _logp(count, total))


def _alphabet(chars: Counter, size: int) -> list[str]:
    """Single-character pieces: printable ASCII and the Turkish letters always get one (code,
    URLs, rare capitals); the rest of the `size` are the corpus's most frequent characters."""
    alphabet = list(dict.fromkeys(_BASE_ALPHABET))
    for ch, _ in chars.most_common():
        if len(alphabet) >= size:
            break
        if not ch.isspace() and ch not in alphabet:
            alphabet.append(ch)
    return alphabet


def _voicing(pieces: list[tuple[str, str, float]], base_of: dict[str, str]) -> dict[int, str]:
    """{root piece id: the last letter of its voiced stem} for roots that alternate."""
    voiced_letter = {root: stem[-1] for stem, root in base_of.items()}
    return {
        i: voiced_letter[text.lstrip(" ")]
        for i, (text, kind, _) in enumerate(pieces)
        if kind == "root" and text.lstrip(" ") in voiced_letter
    }


def _whole_words(
    words: Counter,
    parses: dict[str, _Parse | None],
    taken: set[str],
    n: int,
    unspaced_ratio: float,
) -> Sequence[tuple[str, float]]:
    """The n most frequent words that parse as a root plus suffixes, with and without a leading
    space (counted like roots: a word list has only spaced uses): one piece each saves a token
    on every use and keeps the root whole."""
    counts: Counter = Counter()
    for w, c in words.items():
        p = parses.get(w.lstrip(" "))
        if p is not None and p[1]:
            counts[w] += c
            if w.startswith(" "):
                _add(counts, w[1:], unspaced_ratio * c)
    return [(w, c) for w, c in counts.most_common() if w not in taken][:n]


def _logp(count: float, total: float) -> float:
    return math.log(max(count, 1e-9) / total)


def _residual(
    words: Counter, raw: Counter, pieces: list, voicing: dict[int, str], cfg: TrainConfig
) -> Counter:
    """Chunks the morphology cannot fully parse with the chosen roots and suffix tokens."""
    from tr_tokenizer.decoder import DecodeTables
    from tr_tokenizer.encoder import ChunkEncoder

    vocab = Vocabulary(list(pieces), voicing=voicing)
    encoder = ChunkEncoder(vocab, DecodeTables(vocab))
    residual: Counter = Counter(raw)
    for w, c in words.most_common(2 * cfg.max_parse_words):
        if encoder._morph(w) is None:
            residual[w] += c
    return residual


def _train_bpe(residual: Counter, alphabet: list[str], n_pieces: int) -> list[str]:
    """Learn up to n_pieces BPE pieces (in merge order) with the `tokenizers` library."""
    if n_pieces <= 0 or not residual:
        return []
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    sep = "\u0001"  # never inside a chunk we keep; separates repeated chunks
    total = sum(residual.values())
    scale = min(1.0, 5_000_000 / total)  # bound the training input size
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Split(sep, behavior="removed")
    trainer = trainers.BpeTrainer(
        vocab_size=n_pieces + len(alphabet),
        min_frequency=1,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet) + 50,
        show_progress=False,
    )

    def lines():
        for chunk, count in residual.items():
            if sep in chunk:
                continue
            k = max(1, round(count * scale))
            yield sep.join([chunk] * min(k, 100_000))

    hf.train_from_iterator(lines(), trainer)
    vocab = hf.get_vocab()
    ordered = sorted(vocab, key=vocab.__getitem__)
    return [p for p in ordered if len(p) > 1][:n_pieces]
