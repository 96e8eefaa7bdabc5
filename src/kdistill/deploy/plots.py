"""The pictures `kdistill compare` draws (matplotlib, PNG; the `plots` extra).

- `plot_tradeoff`: accuracy against batch-1 latency, bubble area proportional to size on disk, one bubble per
  group of runs that differ only by seed (mean, spread as error bars);
- `plot_curves`: validation accuracy and training loss per epoch, one mean ± band line per seed group;
- `plot_reliability`: reliability diagrams (accuracy against confidence) with each model's ECE.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError
from kdistill.evaluate.report import format_size
from kdistill.evaluate.seed_groups import group_rows, mean_curve

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


def _label_positions(fractions: list[float], gap: float) -> list[float]:
    """Heights (axes fraction, 0..1) for labels wanted at `fractions`, each at least `gap` from the next and in
    the same order: pushed up where they crowd, then down from the top where they ran over it."""
    order = sorted(range(len(fractions)), key=lambda i: fractions[i])
    placed = [0.0] * len(fractions)
    previous = -math.inf
    for i in order:
        previous = placed[i] = max(min(max(fractions[i], 0.0), 1.0), previous + gap)
    ceiling = 1.0
    for i in reversed(order):
        ceiling = placed[i] = min(placed[i], ceiling)
        ceiling -= gap
    return placed


def _group_label(group: dict[str, Any]) -> str:
    n = len(group["runs"])
    spread = f" ± {100 * group['accuracy_std']:.2f}" if n > 1 else ""
    seeds = f", {n} seeds" if n > 1 else ""
    return f"{group['group']}: {100 * group['accuracy_mean']:.2f}{spread}% ({format_size(int(group['size_bytes']))}{seeds})"


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy (%) against median batch-1 latency (ms, log axis); bubble area ∝ size on disk.

    Runs that differ only by seed are one bubble at their mean, with the spread over seeds as error bars
    (kdistill.evaluate.seed_groups). Colour = group, marker = format (PyTorch, ONNX, int8 variants). Each group's
    PyTorch bubble is named in a column right of the plot, joined to it by a line; the names are spaced so that
    none overlaps another.
    """
    from matplotlib.lines import Line2D

    groups = group_rows(rows)
    fig = _figure(10.0, 5.6)
    ax = fig.add_subplot()
    colors = _colors(list(dict.fromkeys(g["group"] for g in groups)))
    biggest = max(g["size_bytes"] for g in groups)
    for g in groups:
        x, y, color = g["latency_ms_mean"], 100 * g["accuracy_mean"], colors[g["group"]]
        ax.scatter(x, y, s=40 + 1500 * g["size_bytes"] / biggest, alpha=0.55, color=color,
                   marker=MARKERS.get(g["variant"], "o"), edgecolors="black", linewidths=0.6, zorder=2)
        if len(g["runs"]) > 1:
            ax.errorbar(x, y, yerr=100 * g["accuracy_std"], xerr=g["latency_ms_std"], fmt="none", ecolor=color,
                        elinewidth=1.2, capsize=4, zorder=3)
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.25)
    ax.autoscale_view()
    low, high = ax.get_ylim()
    named = [g for g in groups if g["variant"] == "pytorch"] or groups
    wanted = [(100 * g["accuracy_mean"] - low) / (high - low) for g in named]
    for g, height in zip(named, _label_positions(wanted, min(0.075, 0.95 / max(1, len(named))))):
        ax.annotate(_group_label(g), (g["latency_ms_mean"], 100 * g["accuracy_mean"]), xytext=(1.02, height),
                    textcoords="axes fraction", va="center", fontsize=8, color="black", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": colors[g["group"]], "linewidth": 0.8, "shrinkA": 0})
    formats = list(dict.fromkeys(g["variant"] for g in groups))
    ax.legend(handles=[Line2D([], [], marker=MARKERS.get(f, "o"), linestyle="", color="grey", markersize=8, label=f)
                       for f in formats], title="format", fontsize=7, title_fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.12), ncol=len(formats))
    ax.set_xlabel("batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy vs latency; bubble area ∝ size on disk", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path, groups: dict[str, str] | None = None) -> None:
    """The validation accuracy (or, for runs without one, the validation loss) and the training loss per epoch,
    one line per seed group (kdistill.evaluate.seed_groups): the mean over its seeds with a band of ± one standard
    deviation, every group on the same axes, so that the student alone and the distilled student can be
    compared at a glance."""
    groups = groups or {name: name for name in curves}
    members: dict[str, list[list[dict[str, Any]]]] = {}
    for name, epochs in curves.items():
        if epochs:
            members.setdefault(groups.get(name, name), []).append(epochs)
    if not members:
        raise KdistillError("no run has training curves (metrics.jsonl) to plot")
    has_accuracy = any("val_accuracy" in c[0] for runs in members.values() for c in runs)
    left, scale = ("val_accuracy", 100.0) if has_accuracy else ("val_loss", 1.0)
    fig = _figure(11.0, 4.6)
    ax_val, ax_loss = fig.subplots(1, 2)
    colors = _colors(list(members))
    late: list[float] = []  # the validation curves' second halves (mean ± std), which set the zoom
    for group, runs in members.items():
        label = f"{group} ({len(runs)} seeds)" if len(runs) > 1 else group
        for ax, key, factor in ((ax_val, left, scale), (ax_loss, "loss", 1.0)):
            epochs, mean, std = mean_curve(runs, key)
            if not epochs:
                continue
            ax.plot(epochs, [factor * m for m in mean], color=colors[group], linewidth=1.8, label=label)
            if ax is ax_val:
                half = len(mean) // 2
                late += [factor * (m + sign * s) for m, s in zip(mean[half:], std[half:]) for sign in (-1, 1)]
            if len(runs) > 1:
                ax.fill_between(epochs, [factor * (m - s) for m, s in zip(mean, std)],
                                [factor * (m + s) for m, s in zip(mean, std)], color=colors[group], alpha=0.2, linewidth=0)
    if late:  # zoomed to where the runs end up, so a gain of a point is visible; early epochs may leave the frame
        low, high = min(late), max(late)
        pad = max(0.3 * (high - low), 0.5 if has_accuracy else 0.02 * abs(high))
        ax_val.set_ylim(low - pad, high + pad)
    ax_val.set_title(("validation accuracy (%)" if has_accuracy else "validation loss")
                     + ", mean ± std over seeds (scaled to the second half of training)", fontsize=9)
    ax_loss.set_title("training loss (the run's own objective), mean ± std over seeds", fontsize=9)
    for ax in (ax_val, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = ax_val.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
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
