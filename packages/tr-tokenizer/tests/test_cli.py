"""The tr-tokenizer command, end to end through a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tr_tokenizer

TEXT = "Kitaplarımızdan birini okudunuz mu?\n\tİSTANBUL'DA 😀"


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tr_tokenizer.cli", *args],
        input=input, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("command", [[], ["encode"], ["decode"], ["train"], ["stats"], ["bench"]])
def test_help_everywhere(command: list[str]) -> None:
    out = run(*command, "--help")
    assert out.returncode == 0 and "usage: tr-tokenizer" in out.stdout


def test_encode_ids_then_decode_round_trips(tok) -> None:
    ids = run("encode", "--ids", "-", input=TEXT).stdout.split()
    assert [int(i) for i in ids] == tok.encode(TEXT).ids
    assert run("decode", *ids).stdout == TEXT


def test_encode_json_and_pieces() -> None:
    data = json.loads(run("encode", "--json", "Ankara'da").stdout)
    assert set(data) == {"ids", "tokens", "offsets", "kinds"}
    assert data["kinds"][0] == "case" and len(data["ids"]) == len(data["offsets"])
    plain = run("encode", "kitaplarım").stdout.strip()
    assert plain == "[kitap][larım]"  # no colours when stdout is not a terminal


def test_stats_and_bench(tmp_path) -> None:
    f = tmp_path / "text.txt"
    f.write_text(TEXT * 50, encoding="utf-8")
    stats = json.loads(run("stats", str(f), "--json").stdout)
    assert stats["round_trip"] is True and stats["words"] == len((TEXT * 50).split())
    assert 0 < stats["tokens_per_word"] < 5 and abs(sum(stats["kind_share"].values()) - 1) < 1e-9
    table = run("stats", str(f)).stdout
    assert "tokens/word" in table and "exact" in table
    bench = run("bench", str(f), "--repeat", "1", "--workers", "1")
    assert bench.returncode == 0 and "encode_ids (1 thread)" in bench.stdout
    assert "encode_ids (1 thread, cold)" in bench.stdout and "segmenter" in bench.stdout


def test_train_then_use(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Evlerimizde kitaplar var. Kitaplarımızı okuduk.\n" * 20, encoding="utf-8")
    roots = tmp_path / "roots.txt"
    roots.write_text("ev\nkitap\noku\nvar\n", encoding="utf-8")
    out = tmp_path / "tok"
    done = run("train", "--input", str(corpus), "--lexicon", str(roots), "--vocab-size", "700",
               "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert tr_tokenizer.load(out).vocab_size <= 700
    ids = run("encode", "--vocab", str(out), "--ids", "Kitaplarımızı").stdout.split()
    assert run("decode", "--vocab", str(out), *ids).stdout == "Kitaplarımızı"


def test_errors_are_clear(tmp_path) -> None:
    bad = run("decode", "99999999")
    assert bad.returncode == 2 and "unknown token id 99999999" in bad.stderr
    missing = run("encode", "--vocab", str(tmp_path / "nope"), "x")
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr
    assert run("decode", "abc").returncode == 2
    no_input = run("train", "--input", str(tmp_path / "none.txt"), "--out", str(tmp_path))
    assert no_input.returncode == 2 and "does not exist" in no_input.stderr
