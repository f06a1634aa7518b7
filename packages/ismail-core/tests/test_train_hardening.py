"""What killed or misused training runs leave behind (issue 13): unfinished checkpoint writes,
unpruned checkpoints, partial metrics lines, non-JSON numbers, a changed data path, and the
errors a user sees in one line instead of a traceback.

Kills are reproduced by writing the files a killed run leaves, not by killing processes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from ismail_core.checkpoint import CheckpointError
from ismail_core.cli import main
from ismail_core.train import ConfigError, build_config, train
from ismail_core.train.config import read_config_file
from ismail_core.train.metrics import MetricsLogger, read_metrics


@pytest.fixture
def make_cfg(tiny_train_layer, tiny_data: Path):
    """make_cfg(dir, **overrides) -> TrainConfig of a short tiny run in dir/run."""

    def make(directory: Path, data: Path | None = None, **overrides):
        layer = {"train.steps": 4, "checkpoint.interval": 2, "eval.interval": 0, **overrides}
        return build_config(tiny_train_layer(directory / "run", data or tiny_data, **layer))

    return make


def _strict_json(line: str) -> dict:
    """json.loads that refuses Infinity and NaN, as strict JSON readers do."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def _leave_unfinished_write(ckpts: Path) -> list[Path]:
    """What a run killed while writing step 6 leaves: a temporary step directory and link."""
    tmp_dir = ckpts / ".step_00000006.tmp-k1ll3d"
    tmp_dir.mkdir()
    (tmp_dir / "model.safetensors").write_bytes(b"\0" * 1024)
    tmp_link = ckpts / ".latest.tmp-99999"
    tmp_link.symlink_to("step_00000006")
    return [tmp_dir, tmp_link]


# ---------------------------------------------------------------------- item 5
def test_unfinished_checkpoint_writes_are_removed_on_resume(
    tmp_path: Path, make_cfg, capsys
) -> None:
    train(make_cfg(tmp_path))
    leftovers = _leave_unfinished_write(tmp_path / "run" / "checkpoints")
    result = train(make_cfg(tmp_path, **{"train.steps": 6}))
    assert result.step == 6
    assert not any(p.exists() or p.is_symlink() for p in leftovers)
    out = capsys.readouterr().out
    assert "removed .step_00000006.tmp-k1ll3d: an unfinished checkpoint write" in out


def test_a_live_writer_keeps_its_temporaries_and_the_run_dir(tmp_path: Path, make_cfg) -> None:
    from ismail_core.train.resume import run_dir_lock

    train(make_cfg(tmp_path))
    leftovers = _leave_unfinished_write(tmp_path / "run" / "checkpoints")
    with (
        run_dir_lock(tmp_path / "run"),  # another trainer is writing into the run directory
        pytest.raises(CheckpointError, match=r"another `ismail train` \(pid \d+\)"),
    ):
        train(make_cfg(tmp_path, **{"train.steps": 6}))
    assert all(p.exists() or p.is_symlink() for p in leftovers)


# ---------------------------------------------------------------------- item 6
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--train.device", "tpu", "train.device='tpu': unknown device 'tpu'"),
        ("--config", "BINARY", "cannot parse "),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, tiny_data: Path, capsys, option: str, value: str, message: str
) -> None:
    binary = tmp_path / "run.yaml"
    binary.write_bytes(bytes(range(256)))  # not UTF-8
    value = str(binary) if value == "BINARY" else value
    common = ["--data.path", str(tiny_data), "--run.out_dir", str(tmp_path / "run")]
    assert main(["train", *common, option, value]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ismail train: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------- item 8
@pytest.mark.parametrize(
    "layer",
    [
        {"optim.lr": "inf"},
        {"optim.lr": float("inf")},
        {"optim.grad_clip": "-inf"},
        {"optim.weight_decay": "nan"},
        {"model.router_noise": "Infinity"},
    ],
)
def test_non_finite_numbers_are_refused(layer: dict) -> None:
    with pytest.raises(ConfigError, match="expected a finite number"):
        build_config(layer)


def test_non_finite_numbers_in_a_json_config_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"optim": {"lr": Infinity}}')  # Python's json reads it; it is no JSON
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number, got inf"):
        build_config(read_config_file(path))


def test_metrics_are_strict_json_with_null_for_non_finite(tmp_path: Path, make_cfg) -> None:
    logger = MetricsLogger(tmp_path, make_cfg(tmp_path).log, True, {})
    logger.log("train", 1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1})
    logger.log("train", 2, {"loss": 2.5, "expert_load": [[1.0, float("-inf")]]})
    logger.close()
    lines = [_strict_json(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] is None and lines[0]["grad_norm"] is None and lines[0]["lr"] == 0.1
    assert lines[1]["expert_load"] == [[1.0, None]]
    rows = read_metrics(tmp_path)
    assert rows[0]["loss"] != rows[0]["loss"]  # null reads back as NaN: rows stay numeric
    assert rows[1]["loss"] == 2.5


# ---------------------------------------------------------------------- item 9
def test_kill_after_the_final_latest_update_is_tidied_on_resume(
    tmp_path: Path, make_cfg, capsys
) -> None:
    overrides = {"checkpoint.keep_last": 1}  # evaluations at steps 0 and 4 only
    train(make_cfg(tmp_path, **overrides))
    ckpts = tmp_path / "run" / "checkpoints"
    # Killed after `latest` moved to step 4, before pruning: step 2 is still there.
    shutil.copytree(ckpts / "step_00000004", ckpts / "step_00000002")
    evals_before = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"]
    capsys.readouterr()
    resumed = train(make_cfg(tmp_path, **overrides))
    assert resumed.step == 4 and resumed.checkpoint.name == "step_00000004"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004"]
    out = capsys.readouterr().out
    assert "removed step_00000002: beyond checkpoint.keep_last=1" in out
    # Already at its final step: no second final evaluation, in the result or the metrics.
    assert resumed.evals == [] and "val loss" not in out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(_strict_json(x)["kind"] == "eval" for x in lines) == len(evals_before) == 2


def test_pruning_at_start_keeps_the_checkpoint_being_resumed(tmp_path: Path, make_cfg) -> None:
    train(make_cfg(tmp_path, **{"checkpoint.keep_last": 2}))
    earlier = tmp_path / "run" / "checkpoints" / "step_00000002"
    seen = []

    def stop_at_3(step: int, trainer) -> None:
        seen.append(earlier.is_dir())
        raise KeyboardInterrupt

    resumed = make_cfg(tmp_path, **{"checkpoint.keep_last": 1, "run.resume": str(earlier)})
    assert train(resumed, on_step=stop_at_3).interrupted
    assert seen == [True]


# ---------------------------------------------------------------------- item 10
def test_resume_refuses_another_data_path(tmp_path: Path, make_cfg, tiny_data: Path) -> None:
    train(make_cfg(tmp_path, **{"train.steps": 2}))
    saved_config = (tmp_path / "run" / "train_config.json").read_text()
    other = tmp_path / "other-data"  # same tokens and tokenizer, another directory
    other.mkdir()
    for item in tiny_data.iterdir():
        (other / item.name).symlink_to(item)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    message = (
        re.escape(f"was trained on --data.path {tiny_data}, not {other}: continue it with ")
        + re.escape(f"--data.path {tiny_data}, or ")
        + ".*"
        + re.escape(f"--run.out_dir NEW_DIR --run.resume {checkpoint}")
    )
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(tmp_path, other, **{"train.steps": 2}))
    assert (tmp_path / "run" / "train_config.json").read_text() == saved_config
    # The same directory by another name is the same data.
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_data)
    assert train(make_cfg(tmp_path, alias, **{"train.steps": 2})).step == 2
    # The fix the message names: a new run directory that starts from the checkpoint.
    moved = make_cfg(tmp_path / "new", other, **{"train.steps": 2, "run.resume": str(checkpoint)})
    assert train(moved).checkpoint == tmp_path / "new" / "run" / "checkpoints" / "step_00000002"


# ---------------------------------------------------------------------- item 11
def test_partial_metrics_line_is_dropped_before_appending(tmp_path: Path, make_cfg, capsys) -> None:
    train(make_cfg(tmp_path, **{"train.steps": 2}))
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"kind": "train", "step": 3, "lo')  # killed mid-write
    train(make_cfg(tmp_path, **{"train.steps": 4}))
    rows = [_strict_json(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    out = capsys.readouterr().out
    assert f"dropped a partial last line of {metrics} (32 bytes)" in out


@pytest.mark.parametrize(
    ("content", "kept"),
    [(b"", b""), (b"a\n", b"a\n"), (b"a\nbc", b"a\n"), (b"abc", b""), (b"a\nb\n", b"a\nb\n")],
)
def test_drop_partial_line(tmp_path: Path, content: bytes, kept: bytes) -> None:
    from ismail_core.train.metrics import drop_partial_line

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    assert drop_partial_line(path) == len(content) - len(kept)
    assert path.read_bytes() == kept
