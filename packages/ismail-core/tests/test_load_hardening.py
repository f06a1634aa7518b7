"""Loading hardening: a checkpoint, device, shard or source that cannot work fails at load time
with one line naming the file (or device) and the fix, never a traceback mid-output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ismail_core import ModelConfig, Transformer
from ismail_core.checkpoint import CheckpointError, load_model, save_checkpoint
from ismail_core.cli import main
from ismail_core.tokenizer import load_tokenizer

COMMANDS = ["generate", "eval", "export"]


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Run `ismail ARGV`: (exit status, stderr), checking stderr ends in one error line."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"ismail {argv[0]}: error: ")
    return code, err


def _argv(command: str, ckpt: Path, tmp_path: Path) -> list[str]:
    """The arguments of `command` on checkpoint `ckpt` that reach load_model."""
    if command == "generate":
        return ["generate", str(ckpt), "--prompt", "Türk milleti", "--max-new-tokens", "4"]
    if command == "eval":
        return ["eval", str(ckpt), "--data", "builtin", "--max-tokens", "64"]
    return ["export", str(ckpt), str(tmp_path / "exported")]


def _checkpoint(directory: Path, tokenizer_file: Path, vocab_size: int = 384) -> Path:
    """A random tiny model with the 384-token test tokenizer (`vocab_size` may pad it)."""
    tok = load_tokenizer(tokenizer_file)
    cfg = ModelConfig.preset(
        "tiny", vocab_size=vocab_size, max_seq_len=64, dim=32, n_layers=2, n_heads=2,
        kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        inter_dim=64, moe_inter_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_checkpoint(directory, Transformer(cfg), tok)


def _replace_tokenizer(ckpt: Path, tokenizer) -> None:
    shutil.rmtree(ckpt / "tokenizer")
    tokenizer.save(ckpt / "tokenizer")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, hf_tokenizer_file: Path) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", hf_tokenizer_file)


# ---------------------------------------------------------------- item 3: tokenizer vs model
@pytest.mark.parametrize("command", COMMANDS)
def test_tokenizer_with_more_ids_than_the_model_is_refused(
    command: str, ckpt: Path, tmp_path: Path, capsys
) -> None:
    # The shipped tr-tokenizer (32768 ids) in a 384-row model: ids >= 384 crashed generation.
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    _replace_tokenizer(bad, load_tokenizer("tr"))
    code, err = _run(capsys, *_argv(command, bad, tmp_path))
    assert code == 1
    assert f"{bad / 'tokenizer'} has 32768 tokens but the model in {bad} has 384" in err
    assert "put the tokenizer the model was trained with" in err


def test_tokenizer_with_another_fingerprint_is_refused(
    hf_tokenizer_file: Path, tmp_path: Path, capsys
) -> None:
    # 385 tokens fit a vocabulary padded to 512, but the ids are not the ones the model learned.
    ckpt = _checkpoint(tmp_path / "ckpt", hf_tokenizer_file, vocab_size=512)
    other = json.loads(hf_tokenizer_file.read_text())
    other["model"]["vocab"]["zzzz"] = len(other["model"]["vocab"])
    (tmp_path / "other.json").write_text(json.dumps(other))
    other_tok = load_tokenizer(tmp_path / "other.json")
    _replace_tokenizer(ckpt, other_tok)
    with pytest.raises(CheckpointError, match="were saved with tokenizer"):
        load_model(ckpt)
    code, err = _run(capsys, *_argv("generate", ckpt, tmp_path))
    assert code == 1 and other_tok.fingerprint in err
    assert load_tokenizer(hf_tokenizer_file).fingerprint in err


def test_padded_vocabulary_still_loads(hf_tokenizer_file: Path, tmp_path: Path) -> None:
    # Model vocabularies are padded for speed: fewer tokenizer ids than rows is fine.
    model, tok = load_model(_checkpoint(tmp_path / "ckpt", hf_tokenizer_file, vocab_size=512))
    assert model.cfg.vocab_size == 512 and tok.vocab_size == 384


# ---------------------------------------------------------------- item 4: corrupt tokenizer
@pytest.mark.parametrize("kind", ["tr", "hf", "marker"])
@pytest.mark.parametrize("command", COMMANDS)
def test_corrupt_tokenizer_file_is_one_line_error(
    kind: str, command: str, ckpt: Path, tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    if kind == "tr":
        _replace_tokenizer(bad, load_tokenizer("tr"))
    names = {"tr": "tr_tokenizer.json", "hf": "tokenizer.json", "marker": "ismail_tokenizer.json"}
    file = bad / "tokenizer" / names[kind]
    file.write_text('{"truncated": ')
    code, err = _run(capsys, *_argv(command, bad, tmp_path))
    assert code == 1 and str(file) in err


# ---------------------------------------------------------------- item 6: devices, shard ids
@pytest.mark.parametrize("device", ["foo", "cuda:99", "cuda"])
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_unavailable_device_is_one_line_error(
    device: str, command: str, ckpt: Path, tmp_path: Path, capsys
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = _run(capsys, *_argv(command, ckpt, tmp_path), "--device", device)
    assert code == 1 and f"device {device}" in err.replace("'", "")


def test_eval_names_a_shard_with_ids_beyond_the_vocabulary(
    ckpt: Path, tiny_data: Path, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # tiny_data is shared by other tests: corrupt a copy
    shard = data / "val-00000.bin"
    ids = np.memmap(shard, dtype=np.uint16, mode="r+")
    ids[5] = 60000
    ids.flush()
    del ids
    code, err = _run(capsys, "eval", str(ckpt), "--data", str(data))
    assert code == 1
    assert f"{shard} holds token id 60000, beyond the model's vocabulary of 384" in err


# ---------------------------------------------------------------- item 7: errors name the cause
@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "the file is empty"), (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not UTF-8 text")],
)
def test_data_says_which_text_file_is_unreadable_and_why(
    content: bytes, reason: str, hf_tokenizer_file: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "corpus.txt"
    source.write_bytes(content)
    code, err = _run(
        capsys, "data", str(source), "--out", str(tmp_path / "out"),
        "--tokenizer", str(hf_tokenizer_file), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert code == 1 and f"{source}: {reason}" in err


def test_config_field_with_a_wrong_type_is_named(ckpt: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "dim": "abc"}))
    code, err = _run(capsys, "generate", str(bad))
    assert code == 1 and "ModelConfig field 'dim' is 'abc' (str); expected int" in err


def test_config_types_accept_json_numbers_and_nulls() -> None:
    base = ModelConfig.preset("tiny").to_dict()
    # JSON writes 10000.0 as 10000 in some tools; optional fields take null.
    assert ModelConfig.from_dict({**base, "rope_theta": 10000, "head_dim": None}).rope_theta == 1e4
    with pytest.raises(TypeError, match="'n_layers' is True \\(bool\\); expected int"):
        ModelConfig.from_dict({**base, "n_layers": True})
    with pytest.raises(TypeError, match="'n_kv_heads' is '2' \\(str\\); expected int or null"):
        ModelConfig.from_dict({**base, "n_kv_heads": "2"})
