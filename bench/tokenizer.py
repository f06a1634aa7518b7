"""tr-tokenizer against a byte-level BPE of the same size, on Turkish prose it was not trained on.

Rows: the shipped tr-tokenizer (allomorph sharing on), also with its compiled paths switched
off (pure Python: same ids); the earlier shipped vocabularies (v2, and v1: no whole words, so
morphology first); the same training run as the
default with sharing off; a byte-level BPE trained with `tokenizers` on the same corpus and
vocabulary size; tiktoken running that same BPE (speed only: same tokens). Evaluation text:
the UD Turkish treebank sentences in ../shared/data/ud-turkish, modern news, web and fiction
(evaluation only; nothing is trained or tuned on them).

    uv run python bench/tokenizer.py            # trains the comparison tokenizers once (~3 min)

Columns: tokens per word (whitespace words), UTF-8 bytes per token, exact round trip (share of
sentences), morphology alignment, roots intact and one-letter starts (see tr_tokenizer.evaluate),
single-thread encode MB/s on the whole text as one string (cold: a fresh per-word cache, best
of 3 fresh tokenizers; warm: later passes), batch encode MB/s over 2 cores on the sentences
repeated 8 times, and single-thread decode MB/s of the whole text's ids.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # tokenizers' batch threads: the 2 cores we have
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

ROOT = Path(__file__).resolve().parents[1]
UD = ROOT / ".." / "shared" / "data" / "ud-turkish"
sys.path.insert(0, str(ROOT / "packages" / "tr-tokenizer" / "scripts"))

import tr_tokenizer  # noqa: E402
from tr_tokenizer.evaluate import (  # noqa: E402
    morphology_alignment,
    one_letter_starts,
    read_conllu,
    roots_intact,
)


def train_comparisons(cache: Path, default, retrain: bool) -> tuple[Path, Path]:
    """Train (once) the no-sharing tr-tokenizer and the byte-level BPE on the default corpus.

    The no-sharing run is keyed by the shipped vocabulary's fingerprint, so it is retrained
    whenever the shipped vocabulary (or the code that built it) changes.
    """
    vocab_size = default.vocab_size
    import build_default_vocab as build
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    inputs = cache / "inputs"
    no_share = cache / f"tr-no-share-{vocab_size}-{default.fingerprint}"
    bpe_file = cache / f"bytelevel-bpe-{vocab_size}.json"
    if retrain or not (inputs / "word_counts.tsv").exists():
        inputs.mkdir(parents=True, exist_ok=True)
        build.write_inputs(inputs)
    prose, roots, counts = (inputs / n for n in ("prose.txt", "roots.txt", "word_counts.tsv"))
    if retrain or not (no_share / "tokenizer.json").exists():
        print("training tr-tokenizer without allomorph sharing ...", file=sys.stderr)
        tr_tokenizer.train(
            [prose],
            vocab_size=vocab_size,
            lexicon=roots,
            word_counts=counts,
            share_allomorphs=False,
        ).save(no_share)
    if retrain or not bpe_file.exists():
        print("training byte-level BPE ...", file=sys.stderr)
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
            show_progress=False,
        )
        bpe.train_from_iterator(_bpe_corpus(prose, counts), trainer)
        bpe.save(str(bpe_file))
    return no_share, bpe_file


def _bpe_corpus(prose: Path, counts: Path):
    """The same text the tr-tokenizer trainer sees: prose plus the word-frequency list."""
    yield from prose.read_text(encoding="utf-8").split("\n")
    for line in counts.read_text(encoding="utf-8").split("\n"):
        if line:
            word, _, count = line.rpartition("\t")
            yield (" " + word) * max(1, round(float(count)))


def tiktoken_from(bpe_file: Path):
    """A tiktoken Encoding with the same merges as the byte-level BPE (same tokens)."""
    import json

    import tiktoken

    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = json.loads(bpe_file.read_text(encoding="utf-8"))["model"]["vocab"]
    ranks = {}
    for token, rank in vocab.items():
        if token.startswith("<|"):
            continue
        ranks[bytes(byte_of[c] for c in token)] = rank
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("bench-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def best_time(fn, repeat: int = 3, clock=time.perf_counter) -> float:
    """Best of `repeat` runs; clock=time.process_time measures this process's CPU time."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()  # collections owed by earlier work (e.g. reading the treebank) land here
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def best_pair(one, two, mb: float, repeat: int = 3) -> tuple[float, float]:
    """Wall-clock MB/s of two variants, run alternately so that load changes hit both."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, fn in enumerate((one, two)):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return mb / best[0], mb / best[1]


def process_tree_cpu(fn, tok, repeat: int = 3) -> float:
    """CPU seconds per call of this process and the worker processes it starts (reaped by
    tok.close() so that getrusage counts them): the cost of a batch, independent of load."""
    import resource

    def used() -> float:
        a, b = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    start = used()
    for _ in range(repeat):
        fn()
    tok.close()
    return (used() - start) / repeat


def cold_time(load, text: str, repeat: int = 3) -> float:
    """Best CPU seconds of encoding `text` with a freshly loaded tokenizer (an empty per-word
    cache each time): one run of each of `repeat` tokenizers, since one run is noisy here."""
    best = float("inf")
    for _ in range(repeat):
        fresh = load()
        best = min(best, cpu_time(lambda fresh=fresh: fresh.encode_ids(text), 1))
    return best


def cpu_time(fn, repeat: int = 3) -> float:
    """CPU seconds of a single-threaded call: robust to other processes on a shared machine."""
    return best_time(fn, repeat, time.process_time)


NOTES: list[str] = []  # printed under the table


@dataclass
class Row:
    name: str
    vocab: int
    tokens: int  # over the sentences encoded one by one
    exact: float | None
    align: float | None
    intact: float | None
    one_letter: float | None
    cold: float
    warm: float
    batch1: float
    batch: float
    decode: float


def load_pure_python() -> tr_tokenizer.Tokenizer:
    """The shipped tokenizer without its compiled segmenter (same ids, the reference path)."""
    os.environ["TR_TOKENIZER_PURE_PYTHON"] = "1"
    try:
        return tr_tokenizer.load()
    finally:
        del os.environ["TR_TOKENIZER_PURE_PYTHON"]


def measure_tr(name, load, sentences, text, batch) -> Row:
    tok = load()
    texts = [s.text for s in sentences]
    mb, batch_mb = _mb(text), sum(map(_mb, batch))
    cold = mb / cold_time(load, text)
    warm = mb / cpu_time(lambda: tok.encode_ids(text))
    batch1, batch_rate = best_pair(
        lambda: tok.encode_batch_ids(batch, 1), lambda: tok.encode_batch_ids(batch, 2), batch_mb
    )
    tok.close()
    cpu = {k: process_tree_cpu(lambda k=k: tok.encode_batch_ids(batch, k), tok) for k in (1, 2)}
    NOTES.append(f"{name}: CPU-seconds per x8 batch: 1 process {cpu[1]:.2f}, 2 workers "
                 f"{cpu[2]:.2f} (both processes, pool start included), so 2 idle cores would "
                 f"give at most {2 * cpu[1] / cpu[2]:.2f}x")  # fmt: skip
    ids = [tok.encode_ids(t) for t in texts]
    exact = sum(tok.decode(i) == t for i, t in zip(ids, texts)) / len(texts)
    offsets = {t: tok.encode(t).offsets for t in texts}
    align, intact, one_letter = _morphology(sentences, offsets.__getitem__)
    tokens = sum(map(len, ids))
    all_ids = tok.encode_ids(text)
    decode = mb / cpu_time(lambda: tok.decode(all_ids))
    return Row(name, tok.vocab_size, tokens, exact, align, intact, one_letter, cold, warm,
               batch1, batch_rate, decode)  # fmt: skip


def _morphology(sentences, offsets_of) -> tuple[float, float, float]:
    """Morphology alignment, roots intact and one-letter starts, as shares."""
    good, total = morphology_alignment(sentences, offsets_of)
    whole, eligible = roots_intact(sentences, offsets_of)
    bad, words = one_letter_starts([s.text for s in sentences], offsets_of)
    return good / total, whole / eligible, bad / words


def measure_bpe(hf, sentences, text, batch) -> Row:
    texts = [s.text for s in sentences]
    mb, batch_mb = _mb(text), sum(map(_mb, batch))
    rate = mb / cpu_time(lambda: hf.encode(text))
    batch1, batch_rate = best_pair(
        lambda: [hf.encode(t) for t in batch], lambda: hf.encode_batch(batch), batch_mb
    )
    encs = hf.encode_batch(texts)
    exact = sum(hf.decode(e.ids) == t for e, t in zip(encs, texts)) / len(texts)
    align, intact, one_letter = _morphology(sentences, lambda t: hf.encode(t).offsets)
    tokens = sum(len(e.ids) for e in encs)
    all_ids = hf.encode(text).ids
    decode = mb / cpu_time(lambda: hf.decode(all_ids))
    name = "byte-level BPE (tokenizers)"
    return Row(name, hf.get_vocab_size(), tokens, exact, align, intact, one_letter, rate, rate,
               batch1, batch_rate, decode)  # fmt: skip


def measure_tiktoken(tk, hf, sentences, text, batch) -> Row:
    texts = [s.text for s in sentences]
    mb, batch_mb = _mb(text), sum(map(_mb, batch))
    rate = mb / cpu_time(lambda: tk.encode_ordinary(text))
    batch1, batch_rate = best_pair(
        lambda: tk.encode_ordinary_batch(batch, num_threads=1),
        lambda: tk.encode_ordinary_batch(batch, num_threads=2),
        batch_mb,
    )
    ids = tk.encode_ordinary_batch(texts)
    same = sum(a == hf.encode(t).ids for a, t in zip(ids, texts)) / len(texts)
    all_ids = tk.encode_ordinary(text)
    decode = mb / cpu_time(lambda: tk.decode(all_ids))
    name = f"same BPE in tiktoken ({same:.0%} same ids)"
    return Row(name, tk.n_vocab, sum(map(len, ids)), None, None, None, None, rate, rate, batch1,
               batch_rate, decode)  # fmt: skip


def _mb(text: str) -> float:
    return len(text.encode("utf-8")) / 1e6


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "tr-tokenizer-bench")
    p.add_argument("--retrain", action="store_true", help="retrain the comparison tokenizers")
    args = p.parse_args()
    files = sorted(UD.glob("*.conllu"))
    if not files:
        print(f"no UD Turkish data under {UD.resolve()}; nothing to measure", file=sys.stderr)
        return 1
    from tokenizers import Tokenizer as HFTokenizer

    sentences = [s for f in files for s in read_conllu(f)]
    texts = [s.text for s in sentences]
    text = "\n".join(texts)
    n_words = sum(len(t.split()) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    batch = texts * 8

    default = tr_tokenizer.load()
    no_share_dir, bpe_file = train_comparisons(args.cache, default, args.retrain)
    hf = HFTokenizer.from_file(str(bpe_file))
    rows = [
        measure_tr("tr-tokenizer (sharing, shipped)", tr_tokenizer.load, sentences, text, batch),
        measure_tr("tr-tokenizer (shipped, pure Python)", load_pure_python, sentences, text, batch),
        *(
            measure_tr(
                f"tr-tokenizer {version} (earlier default)",
                lambda version=version: tr_tokenizer.load(version=version),
                sentences,
                text,
                batch,
            )
            for version in ("v3", "v2", "v1")
        ),
        measure_tr(
            "tr-tokenizer (no sharing)",
            lambda: tr_tokenizer.load(no_share_dir),
            sentences,
            text,
            batch,
        ),
        measure_bpe(hf, sentences, text, batch),
        measure_tiktoken(tiktoken_from(bpe_file), hf, sentences, text, batch),
    ]
    print(
        f"\nUD Turkish, 5 files: {len(texts)} sentences, {n_words} words, {n_bytes / 1e6:.2f} MB."
        " Quality per sentence. Single-thread speed: all sentences joined by newlines (one"
        " string), MB per CPU-second of this process (cold: a fresh per-word cache, best of 3"
        " fresh tokenizers; warm: best of 3 later runs). Batch: the sentences x8"
        f" ({8 * n_bytes / 1e6:.1f} MB) as a list, one"
        " process/thread vs two, MB per wall-clock second (best of 3, run alternately).\n"
    )
    head = ["tokenizer", "vocab", "tok/word", "bytes/tok", "round trip", "morph align",
            "roots intact", "1-letter starts", "MB/s cold", "MB/s warm", "batch x1", "batch x2",
            "decode MB/s"]  # fmt: skip
    widths = [40, 6, 8, 9, 10, 11, 12, 15, 9, 9, 8, 8, 11]
    print("| " + " | ".join(h.ljust(w) if i == 0 else h.rjust(w)
                            for i, (h, w) in enumerate(zip(head, widths))) + " |")  # fmt: skip
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [r.name, str(r.vocab), f"{r.tokens / n_words:.3f}", f"{n_bytes / r.tokens:.2f}",
                 _pct(r.exact), _pct(r.align), _pct(r.intact), _pct(r.one_letter, 2),
                 f"{r.cold:.2f}", f"{r.warm:.2f}", f"{r.batch1:.2f}", f"{r.batch:.2f}",
                 f"{r.decode:.2f}"]  # fmt: skip
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))) + " |")  # fmt: skip
    print()
    for note in NOTES:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
