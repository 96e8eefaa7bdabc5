"""The pictures `kdistill compare` draws (matplotlib, PNG; the `plots` extra).

- `plot_tradeoff`: accuracy against batch-1 latency, bubble area proportional to size on disk;
- `plot_curves`: per run, the training loss terms and the train/validation accuracy per epoch;
- `plot_reliability`: reliability diagrams (accuracy against confidence) with each model's ECE.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError

MARKERS = {"pytorch": "o", "onnx": "s", "onnx-int8-dynamic": "D", "onnx-int8-static": "^", "torch-int8-dynamic": "v"}


def matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float):
    if not matplotlib_available():
        raise KdistillError("matplotlib is not installed; plots need the `plots` extra: pip install 'kdistill[plots]'")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _colors(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy (%) against median batch-1 latency (ms, log axis); bubble area ∝ size on disk.

    Colour = run, marker = format (PyTorch, ONNX, int8 variants); each run's PyTorch model is labelled.
    """
    from matplotlib.lines import Line2D

    fig = _figure(8.5, 5.4)
    ax = fig.add_subplot()
    runs = list(dict.fromkeys(r["run"] for r in rows))
    colors = _colors(runs)
    biggest = max(r["size_bytes"] for r in rows)
    for i, r in enumerate(rows):
        x, y = r["latency_ms"]["median"], 100 * r["accuracy"]
        ax.scatter(x, y, s=40 + 1500 * r["size_bytes"] / biggest, alpha=0.55, color=colors[r["run"]],
                   marker=MARKERS.get(r["variant"], "o"), edgecolors="black", linewidths=0.6)
        if r["variant"] == "pytorch":
            ax.annotate(f"{r['run']} ({r['size_bytes'] / 1024:,.0f} KB)", (x, y), textcoords="offset points",
                        xytext=(10, 8 if i % 2 == 0 else -16), fontsize=8)  # alternate: neighbours do not overprint
    run_legend = ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=colors[n], markersize=8, label=n)
                                    for n in runs], title="run", fontsize=7, title_fontsize=8, loc="lower right")
    ax.add_artist(run_legend)
    formats = list(dict.fromkeys(r["variant"] for r in rows))
    ax.legend(handles=[Line2D([], [], marker=MARKERS.get(f, "o"), linestyle="", color="grey", markersize=8, label=f)
                       for f in formats], title="format", fontsize=7, title_fontsize=8, loc="lower left")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs latency; bubble area ∝ size on disk", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.3, y=0.25)
    fig.savefig(path)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One row per run: its loss terms (left) and train/val accuracy (right) per epoch, from metrics.jsonl."""
    runs = [name for name, epochs in curves.items() if epochs]
    if not runs:
        raise KdistillError("no run has training curves (metrics.jsonl) to plot")
    fig = _figure(10.0, 2.3 * len(runs) + 0.6)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    skip = {"epoch", "lr", "seconds", "samples_per_s", "train_accuracy", "val_accuracy", "loss"}
    for (ax_loss, ax_acc), name in zip(axes, runs):
        epochs = curves[name]
        x = [e["epoch"] for e in epochs]
        terms = [k for k in epochs[0] if k not in skip and isinstance(epochs[0][k], (int, float))]
        ax_loss.plot(x, [e["loss"] for e in epochs], color="black", linewidth=2, label="total")
        for term in terms:
            ax_loss.plot(x, [e.get(term, math.nan) for e in epochs], linewidth=1.2, label=term)
        ax_loss.set_title(f"{name}: training loss", fontsize=9)
        ax_loss.legend(fontsize=7, loc="upper right")
        for key, style in (("train_accuracy", "--"), ("val_accuracy", "-")):
            if key in epochs[0]:
                ax_acc.plot(x, [100 * e.get(key, math.nan) for e in epochs], style, label=key.split("_")[0])
        ax_acc.set_title(f"{name}: accuracy (%)", fontsize=9)
        ax_acc.legend(fontsize=7, loc="lower right")
        for ax in (ax_loss, ax_acc):
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][1].set_xlabel("epoch")
    fig.savefig(path)


def plot_reliability(rows: list[dict[str, Any]], path: Path) -> None:
    """Reliability diagrams: per confidence bin, accuracy (bars) against the diagonal; ECE in each title."""
    cols = min(4, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig = _figure(3.0 * cols, 3.0 * lines)
    axes = fig.subplots(lines, cols, squeeze=False).ravel()
    for ax, r in zip(axes, rows):
        bins = r["calibration"]["bins"]
        width = bins[0]["upper"] - bins[0]["lower"]
        filled = [b for b in bins if b["count"]]
        ax.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
               color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
        ax.bar([b["lower"] for b in filled], [abs(b["confidence"] - b["accuracy"]) for b in filled],
               bottom=[min(b["accuracy"], b["confidence"]) for b in filled], width=width, align="edge", color="none",
               edgecolor="tab:red", hatch="///", linewidth=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r['label']}\nECE {100 * r['calibration']['ece']:.2f}%", fontsize=8)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left")
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    fig.savefig(path)
