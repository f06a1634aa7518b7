"""The `tr-tokenizer` command: encode, decode, train, stats, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tr_tokenizer.errors import TrTokenizerError
from tr_tokenizer.tokenizer import Tokenizer, load
from tr_tokenizer.trainer import TrainConfig

_COLORS = {
    "root": "\033[1;34m",
    "word": "\033[1;36m",
    "suffix": "\033[32m",
    "bpe": "\033[33m",
    "byte": "\033[31m",
    "special": "\033[35m",
    "case": "\033[35m",
    "space": "\033[2m",
}
_RESET = "\033[0m"


def _read_text(arg: str) -> str:
    return sys.stdin.read() if arg == "-" else arg


def _tokenizer(args: argparse.Namespace) -> Tokenizer:
    return load(args.vocab)


def cmd_encode(args: argparse.Namespace) -> int:
    tok = _tokenizer(args)
    text = _read_text(args.text)
    if args.json:
        enc = tok.encode(text)
        out = {
            "ids": enc.ids,
            "tokens": enc.tokens,
            "offsets": enc.offsets,
            "kinds": [tok.kind(i) for i in enc.ids],
        }
        print(json.dumps(out, ensure_ascii=False))
    elif args.ids:
        print(" ".join(map(str, tok.encode_ids(text))))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        parts = []
        for p in tok.segment(text):
            label = p.token if p.kind in ("special", "case", "byte") else p.text
            label = label.replace("\n", "\\n").replace("\t", "\\t")
            parts.append(f"{_COLORS[p.kind]}{label}{_RESET}" if color else f"[{label}]")
        print(" ".join(parts) if color else "".join(parts))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tok = _tokenizer(args)
    raw = " ".join(args.ids) if args.ids != ["-"] else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError as e:
        print(f"error: ids must be integers separated by spaces or commas ({e})", file=sys.stderr)
        return 2
    sys.stdout.write(tok.decode(ids, skip_special_tokens=args.skip_special))
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tr_tokenizer.trainer import train

    for f in args.input:
        if not Path(f).is_file():
            print(f"error: input file {f} does not exist", file=sys.stderr)
            return 2
    cfg = TrainConfig(
        suffix_chains=args.suffix_chains,
        root_fraction=args.root_fraction,
        word_fraction=args.word_fraction,
    )
    t0 = time.perf_counter()
    tok = train(
        args.input,
        vocab_size=args.vocab_size,
        lexicon=args.lexicon,
        word_counts=args.word_counts,
        share_allomorphs=not args.no_share_allomorphs,
        config=cfg,
    )
    path = tok.save(args.out)
    kinds: dict[str, int] = {}
    for _, kind, _ in tok.vocab.pieces:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(
        f"wrote {path} ({tok.vocab_size} tokens: {kinds}; fingerprint {tok.fingerprint}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def text_stats(tok: Tokenizer, text: str) -> dict:
    """Tokens per word, bytes per token, share of each kind and round-trip check for a text."""
    enc = tok.encode(text)
    n_words = len(text.split())
    kinds: dict[str, int] = {}
    for i in enc.ids:
        k = tok._kinds[i]
        kinds[k] = kinds.get(k, 0) + 1
    n = max(len(enc.ids), 1)
    return {
        "characters": len(text),
        "words": n_words,
        "tokens": len(enc.ids),
        "tokens_per_word": len(enc.ids) / max(n_words, 1),
        "bytes_per_token": len(text.encode("utf-8", "surrogatepass")) / n,
        "kind_share": {k: v / n for k, v in sorted(kinds.items())},
        "round_trip": tok.decode(enc.ids) == text,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    tok = _tokenizer(args)
    text = Path(args.file).read_text(encoding="utf-8")
    s = text_stats(tok, text)
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"file             {args.file}")
    print(f"words            {s['words']}")
    print(f"tokens           {s['tokens']}")
    print(f"tokens/word      {s['tokens_per_word']:.3f}")
    print(f"bytes/token      {s['bytes_per_token']:.3f}")
    for k, v in s["kind_share"].items():
        print(f"  {k:<14} {100 * v:6.2f}%")
    print(f"round trip       {'exact' if s['round_trip'] else 'FAILED'}")
    return 0 if s["round_trip"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    tok = _tokenizer(args)
    text = Path(args.file).read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    lines = text.splitlines(keepends=True)
    # cold: a fresh per-word cache, every distinct word segmented once
    rows = [("encode_ids (1 thread, cold)", mb / _timed(lambda: tok.encode_ids(text)))]
    ids = tok.encode_ids(text)
    for name, fn in (
        ("encode_ids (1 thread)", lambda: tok.encode_ids(text)),
        ("encode (1 thread)", lambda: tok.encode(text).offsets),
        (
            f"encode_batch_ids ({args.workers} procs)",
            lambda: tok.encode_batch_ids(lines, num_workers=args.workers),
        ),
        ("decode", lambda: tok.decode(ids)),
    ):
        best = min(_timed(fn) for _ in range(args.repeat))
        rows.append((name, mb / best))
    segmenter = "compiled" if tok._encoder.native is not None else "pure Python"
    head = f"({mb:.2f} MB, best of {args.repeat}; {segmenter} segmenter)"
    print(f"{'operation':<28} {'MB/s':>8}   {head}")
    for name, rate in rows:
        print(f"{name:<28} {rate:8.2f}")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    """The `tr-tokenizer` argument parser: one sub-command per cmd_* function."""
    p = argparse.ArgumentParser(
        prog="tr-tokenizer",
        description="Lossless, morphology-aware Turkish tokenizer.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = _with_vocab(sub.add_parser("encode", help="encode text and show the pieces"))
    e.add_argument("text", help="text to encode, or - to read stdin")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--ids", action="store_true", help="print token ids only")
    g.add_argument("--json", action="store_true", help="print ids, tokens, offsets, kinds as JSON")
    e.set_defaults(fn=cmd_encode)

    d = _with_vocab(sub.add_parser("decode", help="decode token ids to text"))
    d.add_argument("ids", nargs="+", help="token ids (space or comma separated), or - for stdin")
    d.add_argument("--skip-special", action="store_true", help="drop special tokens")
    d.set_defaults(fn=cmd_decode)

    _add_train_parser(sub.add_parser("train", help="train a vocabulary"))

    s = _with_vocab(sub.add_parser("stats", help="tokens/word, bytes/token, kinds, round trip"))
    s.add_argument("file", help="UTF-8 text file")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(fn=cmd_stats)

    b = _with_vocab(sub.add_parser("bench", help="encode/decode throughput in MB/s"))
    b.add_argument("file", help="UTF-8 text file")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    b.add_argument("--repeat", type=int, default=3)
    b.set_defaults(fn=cmd_bench)
    return p


def _with_vocab(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the --vocab option of the sub-commands that load a tokenizer."""
    sp.add_argument(
        "--vocab", default=None, help="tokenizer directory (default: the shipped vocabulary)"
    )
    return sp


def _add_train_parser(t: argparse.ArgumentParser) -> None:
    """The options of `tr-tokenizer train` (defaults from TrainConfig)."""
    t.add_argument("--input", nargs="+", required=True, help="UTF-8 text files")
    t.add_argument("--vocab-size", type=int, default=32768)
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument(
        "--lexicon",
        help="roots, one per line: ROOT or ROOT<TAB>VOICED_STEM (kitap\\tkitab); a capitalized "
        "root (Ankara) is a proper name, whose suffixes follow an apostrophe",
    )
    t.add_argument("--word-counts", help="extra word frequencies, 'word<TAB>count' per line")
    t.add_argument(
        "--no-share-allomorphs",
        action="store_true",
        help="give each suffix allomorph its own id (for comparison)",
    )
    defaults = TrainConfig()
    t.add_argument(
        "--suffix-chains", type=int, default=defaults.suffix_chains, help="suffix chain tokens"
    )
    t.add_argument(
        "--root-fraction", type=float, default=defaults.root_fraction,
        help="vocabulary share of roots and derived stems",
    )  # fmt: skip
    t.add_argument(
        "--word-fraction", type=float, default=defaults.word_fraction,
        help="vocabulary share of inflected words kept whole",
    )  # fmt: skip
    t.set_defaults(fn=cmd_train)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (TrTokenizerError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
