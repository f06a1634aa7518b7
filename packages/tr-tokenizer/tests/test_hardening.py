"""Bad input that used to pass silently or lose its cause: a str batch, a non-UTF-8 file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tr_tokenizer


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tr_tokenizer.cli", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["encode_batch", "encode_batch_ids"])
def test_encode_batch_rejects_a_single_string(tok: tr_tokenizer.Tokenizer, method: str) -> None:
    # A str is a sequence of one-character strings: it used to encode each character alone.
    with pytest.raises(TypeError, match="got a single str; use encode"):
        getattr(tok, method)("merhaba dünya")
    assert getattr(tok, method)(["merhaba dünya"])  # a list of one text still works


def test_train_names_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("Kitaplarımızdan birini okudunuz mu?\n" * 20, encoding="utf-8")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    out = run("train", "--input", str(good), str(binary), "--out", str(tmp_path / "tok"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"training file {binary} is not UTF-8 text" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_train_api_names_a_lexicon_that_is_not_utf8(tmp_path: Path) -> None:
    lexicon = tmp_path / "roots.txt"
    lexicon.write_bytes(b"kitap\n\xff\xfe\n")
    with pytest.raises(ValueError, match=f"lexicon file {lexicon} is not UTF-8 text"):
        tr_tokenizer.train(["Kitaplar okundu."] * 5, vocab_size=600, lexicon=lexicon)
