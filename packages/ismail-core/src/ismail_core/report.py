"""`ismail report RUN`: PNG plots of a run's metrics and an HTML page that embeds them."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ismail_core.atomic import atomic_write_text
from ismail_core.train.metrics import read_metrics


def _series(rows: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    picked = [r for r in rows if r["kind"] == kind and isinstance(r.get(key), int | float)]
    return [r["step"] for r in picked], [float(r[key]) for r in picked]


def _plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, list, list]]) -> bool:
    """One line chart; returns False (and writes nothing) when there is nothing to plot."""
    lines = [line for line in lines if line[1]]
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return True


def _expert_load_lines(rows: list[dict[str, Any]]) -> list[tuple[str, list, list]]:
    """Per MoE layer: max/mean expert load (1.0 = perfectly balanced) over time."""
    loads = [
        (r["step"], r["expert_load"]) for r in rows if r["kind"] == "train" and r.get("expert_load")
    ]
    if not loads:
        return []
    n_layers = len(loads[0][1])
    lines = []
    for layer in range(n_layers):
        xs, ys = [], []
        for step, per_layer in loads:
            counts = per_layer[layer]
            mean = sum(counts) / len(counts)
            if mean > 0:
                xs.append(step)
                ys.append(max(counts) / mean)
        lines.append((f"MoE layer {layer}", xs, ys))
    return lines


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the plots and index.html into `out_dir` (default RUN/report); returns the page."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    charts = {
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
        "expert_load.png": (
            "Expert load imbalance (max / mean per layer)",
            "max/mean",
            _expert_load_lines(rows),
        ),
    }
    written = [name for name, (t, y, lines) in charts.items() if _plot(out / name, t, y, lines)]
    figures = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(charts[name][0])}">'
        f"<figcaption>{html.escape(charts[name][0])}</figcaption></figure>"
        for name in written
    )
    evals = [r for r in rows if r["kind"] == "eval"]
    summary = ""
    if evals:
        first, last = evals[0], evals[-1]
        summary = (
            f"<p>Validation bits/byte {first['bits_per_byte']:.3f} at step {first['step']} &rarr; "
            f"{last['bits_per_byte']:.3f} at step {last['step']}.</p>"
        )
    page = out / "index.html"
    atomic_write_text(
        page,
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>ismail run {html.escape(run_dir.name)}</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>Run {html.escape(str(run_dir))}</h1>{summary}\n{figures}\n</body></html>\n",
    )
    return page
