"""`ismail report RUN`: PNG plots of a run's metrics and an HTML page that embeds them;
`ismail report RUN RUN ...` overlays several runs' curves (an optimizer comparison, say).

A classifier's run (`ismail finetune --task classify`) also gets its held-out accuracy and
macro-F1 over the steps and a heatmap of the last evaluation's confusion matrix; a preference
run (`--task dpo`) its implicit rewards and held-out preference accuracy. A mixture-of-experts
run gets a routing section: per MoE layer an expert x step heatmap of the load, and the load
imbalance (max/mean - 1) and router entropy of every layer over the steps; the numbers behind
those plots are written to routing.json beside them."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from ismail_core.atomic import atomic_write_text
from ismail_core.layout import REPORT_DIR
from ismail_core.train.metrics import read_metrics

# one line of a chart: (label, x values, y values)
_Line = tuple[str, list[Any], list[Any]]


def _series(rows: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    picked = [r for r in rows if r["kind"] == kind and isinstance(r.get(key), int | float)]
    return [r["step"] for r in picked], [float(r[key]) for r in picked]


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write a figure to `path` atomically (a reader never sees half a PNG) and close it."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    tmp.replace(path)


def _plot(path: Path, title: str, ylabel: str, lines: list[_Line]) -> bool:
    """One line chart; returns False (and writes nothing) when there is nothing to plot."""
    lines = [line for line in lines if line[1]]
    if not lines:
        return False
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def _confusion_plot(path: Path, row: dict[str, Any]) -> bool:
    """A heatmap of an eval row's confusion matrix (rows gold, columns predicted), with the
    counts written in the cells; False when the row has none."""
    confusion, labels = row.get("confusion"), row.get("labels")
    if not confusion or not labels:
        return False
    size = 2.5 + 0.6 * len(labels)
    fig, ax = _pyplot().subplots(figsize=(size + 1, size))
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Confusion matrix (held out, step {row['step']})")
    top = max(max(r) for r in confusion) or 1
    for i, counts in enumerate(confusion):
        for j, count in enumerate(counts):
            color = "white" if count > top / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    fig.tight_layout()
    _save(fig, path)
    return True


def routing_series(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the routing section plots, per MoE layer (in the order the metrics list them):
    `steps` (logged training steps with loads), `load_share` (experts x steps: each expert's
    share of the layer's assignments in that logged step, so 1/E everywhere is balanced),
    `imbalance` (max/mean - 1 of the loads: 0 balanced, E - 1 everything on one expert) and
    `entropy` ((step, mean router entropy in nats) pairs; runs logged before router entropy
    was recorded have none). Empty for a dense model."""
    loads = [r for r in rows if r["kind"] == "train" and r.get("expert_load")]
    if not loads:
        return []
    layers = []
    for layer in range(len(loads[0]["expert_load"])):
        picked = [(r["step"], r["expert_load"][layer]) for r in loads]
        picked = [(step, counts) for step, counts in picked if sum(counts) > 0]
        totals = [sum(counts) for _, counts in picked]
        n_experts = len(loads[0]["expert_load"][layer])
        layers.append(
            {
                "layer": layer,
                "n_experts": n_experts,
                "steps": [step for step, _ in picked],
                "load_share": [
                    [counts[e] / total for (_, counts), total in zip(picked, totals)]
                    for e in range(n_experts)
                ],
                "imbalance": [
                    max(counts) * n_experts / total - 1
                    for (_, counts), total in zip(picked, totals)
                ],
                "entropy": [
                    [r["step"], r["router_entropy"][layer]]
                    for r in rows
                    if r["kind"] == "train" and len(r.get("router_entropy") or []) > layer
                ],
            }
        )
    return layers


def _load_heatmap(path: Path, series: dict[str, Any]) -> None:
    """An expert x step heatmap of one layer's load shares (see routing_series)."""
    steps, n_experts = series["steps"], series["n_experts"]
    fig, ax = _pyplot().subplots(figsize=(7, 1.5 + 0.25 * n_experts))
    # extent centres each column on its step (the log interval apart; width 1 for one step)
    half = (steps[-1] - steps[0]) / (len(steps) - 1) / 2 if len(steps) > 1 else 0.5
    image = ax.imshow(
        series["load_share"],
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(steps[0] - half, steps[-1] + half, n_experts - 0.5, -0.5),
        vmin=0,
    )
    fig.colorbar(image, ax=ax, label="share of assignments")
    ax.set_title(
        f"MoE layer {series['layer']}: expert load per step (balanced = {1 / n_experts:.3g})"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("expert")
    fig.tight_layout()
    _save(fig, path)


def _routing_section(rows: list[dict[str, Any]], out: Path) -> str:
    """Write the routing plots and routing.json of a MoE run into `out`; returns the page's
    routing section ("" for a dense model)."""
    layers = routing_series(rows)
    if not any(s["steps"] for s in layers):
        return ""
    charts = []
    for s in layers:
        if s["steps"]:
            name = f"expert_load_layer{s['layer']}.png"
            _load_heatmap(out / name, s)
            charts.append((name, f"MoE layer {s['layer']}: expert load per step"))
    label = "MoE layer {}".format
    if _plot(
        out / "expert_load.png",
        "Expert load imbalance (max/mean - 1 per layer; 0 = balanced)",
        "max/mean - 1",
        [(label(s["layer"]), s["steps"], s["imbalance"]) for s in layers],
    ):
        charts.append(("expert_load.png", "Expert load imbalance (max/mean - 1)"))
    entropy: list[_Line] = [
        (label(s["layer"]), [p[0] for p in s["entropy"]], [p[1] for p in s["entropy"]])
        for s in layers
        if s["entropy"]
    ]
    if entropy:
        steps = entropy[0][1]
        uniform: _Line = (
            "uniform router (ln E)",
            steps,
            [math.log(layers[0]["n_experts"])] * len(steps),
        )
        _plot(out / "router_entropy.png", "Router entropy", "nats", [*entropy, uniform])
        charts.append(("router_entropy.png", "Router entropy (mean over the logging interval)"))
    atomic_write_text(out / "routing.json", json.dumps({"layers": layers}) + "\n")
    return f"<h2>Routing</h2>{_routing_table(layers)}\n{_figures_html(charts)}"


def _routing_table(layers: list[dict[str, Any]]) -> str:
    """An HTML table of each MoE layer's last logged imbalance and router entropy."""
    cells = []
    for s in layers:
        if not s["steps"]:
            continue
        entropy = (
            f"{s['entropy'][-1][1]:.3f} of {math.log(s['n_experts']):.3f}" if s["entropy"] else "-"
        )
        cells.append(
            f"<tr><td>{s['layer']}</td><td>{s['n_experts']}</td><td>{s['steps'][-1]}</td>"
            f"<td>{s['imbalance'][-1]:.3f}</td><td>{entropy}</td></tr>"
        )
    return (
        '<table class="routing"><tr><th>MoE layer</th><th>experts</th><th>last step</th>'
        "<th>imbalance (max/mean - 1)</th><th>router entropy (nats)</th></tr>"
        f"{''.join(cells)}</table>"
    )


def _figures_html(charts) -> str:
    """<figure> elements for (PNG file name, title) pairs."""
    return "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title in charts
    )


def _write_page(path: Path, title: str, body: str) -> Path:
    """An HTML page of the report's style, written atomically; returns its path."""
    atomic_write_text(
        path,
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}"
        "img{max-width:100%}</style></head><body>"
        f"{body}\n</body></html>\n",
    )
    return path


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the plots and index.html into `out_dir` (default RUN/report); returns the page."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    charts = _metric_charts(rows)
    written = [name for name, (t, y, lines) in charts.items() if _plot(out / name, t, y, lines)]
    evals = [r for r in rows if r["kind"] == "eval"]
    if evals and _confusion_plot(out / "confusion.png", evals[-1]):
        charts["confusion.png"] = ("Confusion matrix of the last evaluation", "", [])
        written.append("confusion.png")
    figures = _figures_html((name, charts[name][0]) for name in written)
    return _write_page(
        out / "index.html",
        f"ismail run {run_dir.name}",
        f"<h1>Run {html.escape(str(run_dir))}</h1>{_summary_html(evals)}\n{figures}\n"
        + _routing_section(rows, out),
    )


def _metric_charts(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, list[_Line]]]:
    """{PNG name: (title, y label, lines)} of the run page's line charts; a chart whose lines
    have no points is not drawn."""
    return {
        "loss.png": (
            "Loss",
            "cross-entropy (nats/token)",
            [
                ("train", *_series(rows, "train", "loss")),
                ("validation", *_series(rows, "eval", "loss")),
            ],
        ),
        "bits_per_byte.png": (
            "Validation bits per byte",
            "bits/byte",
            [("validation", *_series(rows, "eval", "bits_per_byte"))],
        ),
        "lr.png": ("Learning rate", "lr", [("lr", *_series(rows, "train", "lr"))]),
        "tokens_per_s.png": (
            "Throughput",
            "tokens/s",
            [("tokens/s", *_series(rows, "train", "tokens_per_s"))],
        ),
        "classification.png": (
            "Held-out classification",
            "accuracy / macro-F1",
            [
                ("accuracy", *_series(rows, "eval", "accuracy")),
                ("macro-F1", *_series(rows, "eval", "macro_f1")),
                ("majority baseline (accuracy)", *_series(rows, "eval", "majority_accuracy")),
            ]
            if any("macro_f1" in r for r in rows)
            else [],
        ),
        "rewards.png": (
            "Preference tuning: implicit rewards (beta * log-ratio to the reference)",
            "reward",
            [
                ("chosen (train)", *_series(rows, "train", "rewards/chosen")),
                ("rejected (train)", *_series(rows, "train", "rewards/rejected")),
                ("margin (held-out)", *_series(rows, "eval", "rewards/margins")),
            ],
        ),
    }


def _summary_html(evals: list[dict[str, Any]]) -> str:
    """The page's one-line summary of the first and last evaluations: classification
    accuracy, preference accuracy or bits per byte, whichever the run logged ("" if none)."""
    if not evals:
        return ""
    first, last = evals[0], evals[-1]
    if "macro_f1" in last:
        return (
            f"<p>Held-out accuracy {first['accuracy']:.1%} at step {first['step']} &rarr; "
            f"{last['accuracy']:.1%} at step {last['step']}; macro-F1 {first['macro_f1']:.3f} "
            f"&rarr; {last['macro_f1']:.3f}; majority baseline {last['majority_accuracy']:.1%}."
            "</p>"
        )
    if "preference_accuracy" in last:
        return (
            f"<p>Held-out preference accuracy {first['preference_accuracy']:.1%} at step "
            f"{first['step']} &rarr; {last['preference_accuracy']:.1%} at step {last['step']}; "
            f"reply accuracy {first['accuracy']:.1%} &rarr; {last['accuracy']:.1%}.</p>"
            if "accuracy" in last
            else ""
        )
    if "bits_per_byte" in last:
        return (
            f"<p>Validation bits/byte {first['bits_per_byte']:.3f} at step {first['step']} &rarr; "
            f"{last['bits_per_byte']:.3f} at step {last['step']}.</p>"
        )
    return ""


def _run_labels(run_dirs: list[Path]) -> list[str]:
    """Directory names, or whole paths where two runs share a name."""
    names = [p.name for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Overlay the validation bits per byte, validation loss and training loss of several runs
    (one line per run) into `out_dir`; returns its index.html."""
    runs = [Path(r) for r in run_dirs]
    rows = [read_metrics(r) for r in runs]
    labels = _run_labels(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = {
        "compare_bits_per_byte.png": (
            "Validation bits per byte",
            "bits/byte",
            "eval",
            "bits_per_byte",
        ),
        "compare_val_loss.png": ("Validation loss", "cross-entropy (nats/token)", "eval", "loss"),
        "compare_train_loss.png": ("Training loss", "cross-entropy (nats/token)", "train", "loss"),
    }
    written = [
        (name, title)
        for name, (title, ylabel, kind, key) in charts.items()
        if _plot(
            out / name,
            title,
            ylabel,
            [(label, *_series(r, kind, key)) for label, r in zip(labels, rows)],
        )
    ]
    finals = "".join(
        f"<li>{html.escape(label)}: {evals[-1]['bits_per_byte']:.4f} bits/byte at step "
        f"{evals[-1]['step']}</li>"
        for label, r in zip(labels, rows)
        if (evals := [e for e in r if e["kind"] == "eval" and "bits_per_byte" in e])
    )
    return _write_page(
        out / "index.html",
        "ismail runs compared",
        f"<h1>{len(runs)} runs</h1><ul>{finals}</ul>\n{_figures_html(written)}",
    )
