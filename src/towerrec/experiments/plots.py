"""One chart comparing the runs: top-K accuracy against epoch, one line per feature set.

Both files come from the same history data (each run's history.jsonl): an
interactive Plotly HTML (plotly.js inlined, so it opens offline) and a static
PNG drawn with matplotlib (Plotly's own PNG export needs a headless Chrome).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from towerrec.fsio import atomic_write_text, io_errors

METRIC = "top_100_accuracy"


def curve_points(history: list[dict[str, Any]], metric: str = METRIC) -> tuple[list[int], list[float], str | None]:
    """Epochs and values of ``<split>/<metric>`` (validation if the run had one, else test)."""
    for split in ("validation", "test"):
        key = f"{split}/{metric}"
        points = [(r["epoch"], r[key]) for r in history if key in r]
        if points:
            return [p[0] for p in points], [float(p[1]) for p in points], split
    return [], [], None


def write_curves(config, runs, out_dir: Path, metric: str = METRIC) -> dict[str, Path]:
    """Write ``curves.html`` and ``curves.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    with io_errors(out_dir, hint="choose a writable folder for --out"):
        out_dir.mkdir(parents=True, exist_ok=True)
    series = []
    split_used = None
    for run in runs:
        epochs, values, split = curve_points(run.history, metric)
        split_used = split_used or split
        series.append((run.label, epochs, values))
    protocol = _protocol(runs)
    title = (f"{config.name}: {split_used or 'test'} {metric.replace('_', ' ')} by epoch "
             f"({protocol}, full catalogue)")
    ylabel = metric.replace("_", " ")
    html = out_dir / "curves.html"
    png = out_dir / "curves.png"
    _plotly(series, title, ylabel, html)
    _matplotlib(series, title, ylabel, png)
    return {"chart_html": html, "chart_png": png}


def _protocol(runs) -> str:
    from towerrec.config import load_config

    for run in runs:
        path = Path(run.run_dir) / "config.toml"
        if path.is_file():
            return "seen items excluded" if load_config(path).eval.exclude_seen else "TFRS protocol, seen items kept"
    return "TFRS protocol"


def _plotly(series, title: str, ylabel: str, path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, epochs, values in series:
        fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=label,
                                 hovertemplate="%{fullData.name}<br>epoch %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=ylabel, template="plotly_white",
                      legend_title="feature set", hovermode="x unified")
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def _matplotlib(series, title: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
    for label, epochs, values in series:
        ax.plot(epochs, values, marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_title(title, fontsize=10)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(title="feature set", fontsize=8, title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    try:
        with io_errors(path):
            fig.savefig(path)
    finally:
        plt.close(fig)
