"""`ismail report` on a mixture-of-experts run: the router entropy the trainer logs, and the
routing section (per-layer load heatmaps, imbalance, entropy) drawn from the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ismail_core.report import routing_series, write_report
from ismail_core.train import Trainer, build_config, train
from ismail_core.train.metrics import read_metrics


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory, tiny_train_layer, tiny_data: Path) -> tuple[Path, list[list[float]]]:
    """A 6-step run of the tiny model with 3 layers (2 MoE layers, 4 experts), grad_accum 2 and
    a log line every 2 steps; also returns each micro-batch's router entropies as the trainer
    received them, to check the logged interval means against."""
    run = tmp_path_factory.mktemp("moe-run") / "run"
    seen: list[list[float]] = []
    add = Trainer._add_router_entropy

    def spy(self, entropy):
        seen.append([float(e) for e in entropy])
        add(self, entropy)

    overrides = {
        "train.steps": 6,
        "train.grad_accum": 2,
        "log.interval": 2,
        "eval.interval": 0,
        "checkpoint.interval": 0,
        "model.n_layers": 3,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_add_router_entropy", spy)
        train(build_config(tiny_train_layer(run, tiny_data, **overrides)))
    return run, seen


def test_trainer_logs_router_entropy_as_the_interval_mean_per_layer(moe_run) -> None:
    run, seen = moe_run
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert len(seen) == 6 * 2  # one entry per micro-batch
    for i, row in enumerate(rows):
        window = seen[4 * i : 4 * (i + 1)]  # 2 steps x 2 micro-batches since the last line
        expected = [sum(layer) / len(window) for layer in zip(*window)]
        assert row["router_entropy"] == pytest.approx(expected, rel=1e-5)
        assert len(row["router_entropy"]) == len(row["expert_load"]) == 2
        assert all(0 < e <= math.log(4) + 1e-6 for e in row["router_entropy"])


def test_report_routing_section_plots_what_the_metrics_hold(moe_run, tmp_path) -> None:
    run, _ = moe_run
    page = write_report(run, tmp_path / "report")
    html = page.read_text()
    out = page.parent
    assert "<h2>Routing</h2>" in html
    for png in ("expert_load_layer0.png", "expert_load_layer1.png", "expert_load.png"):
        assert (out / png).stat().st_size > 1000 and f'src="{png}"' in html
    assert (out / "router_entropy.png").stat().st_size > 1000 and "router_entropy.png" in html

    plotted = json.loads((out / "routing.json").read_text())["layers"]
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    for layer, series in enumerate(plotted):
        loads = [r["expert_load"][layer] for r in rows]
        assert series["steps"] == [2, 4, 6]
        for e in range(4):  # expert x step: each expert's share of that step's assignments
            assert series["load_share"][e] == pytest.approx([c[e] / sum(c) for c in loads])
        assert series["imbalance"] == pytest.approx([max(c) / (sum(c) / 4) - 1 for c in loads])
        assert series["entropy"] == [[r["step"], r["router_entropy"][layer]] for r in rows]
        last = rows[-1]
        assert f"<td>{series['imbalance'][-1]:.3f}</td>" in html
        assert f"{last['router_entropy'][layer]:.3f} of {math.log(4):.3f}" in html


def test_routing_series_of_a_dense_run_or_old_metrics() -> None:
    dense = [{"kind": "train", "step": 1, "loss": 2.0, "expert_load": []}]
    assert routing_series(dense) == []
    old = [{"kind": "train", "step": 3, "expert_load": [[6, 2]]}]  # logged before entropy
    (series,) = routing_series(old)
    assert series["imbalance"] == [pytest.approx(0.5)] and series["entropy"] == []
    assert series["load_share"] == [[0.75], [0.25]]
