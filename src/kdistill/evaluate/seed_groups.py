"""Runs that differ only by their seed, grouped: `kdistill compare` shows each group as one point (the mean,
the spread as error bars) and one curve (mean ± band), so the gain of distillation, or its absence, is seen
over the seed noise rather than as a stack of overlapping seed labels.

Two runs are in one group when their resolved configs (`config.yaml`) are equal once `seed`, `name` and
`out` are left out. A group is named after its runs' common `name` (numbered when two groups share one).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

IGNORED = ("seed", "name", "out")


def _identity(run_dir: Path) -> tuple[str, str]:
    """(the config without seed, name and out, as canonical JSON; the config's name), or the folder's own
    name when its config cannot be read (then it is a group of its own)."""
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        return f"unread:{run_dir.resolve()}", run_dir.name
    key = json.dumps({k: v for k, v in raw.items() if k not in IGNORED}, sort_keys=True, default=str)
    return key, str(raw.get("name") or run_dir.name)


def seed_groups(runs: list[Path], names: list[str]) -> dict[str, str]:
    """Each run's name (as `names` gives it) -> the name of its seed group."""
    keys: dict[str, str] = {}  # identity -> group name
    taken: dict[str, int] = {}
    out = {}
    for run_dir, name in zip(runs, names):
        key, config_name = _identity(run_dir)
        if key not in keys:
            taken[config_name] = taken.get(config_name, 0) + 1
            keys[key] = config_name if taken[config_name] == 1 else f"{config_name} #{taken[config_name]}"
        out[name] = keys[key]
    return out


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (group, format) of compare's rows: runs, seeds, mean and std of accuracy and of the
    median batch-1 latency, and the size on disk (the same for every seed of one model)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row.get("group", row["run"]), row["variant"]), []).append(row)
    summaries = []
    for (group, variant), members in grouped.items():
        accuracy = [m["accuracy"] for m in members]
        latency = [m["latency_ms"]["median"] for m in members]
        summaries.append({
            "group": group, "variant": variant, "role": members[0]["role"], "runs": [m["run"] for m in members],
            "accuracy_mean": statistics.fmean(accuracy), "accuracy_std": _spread(accuracy),
            "latency_ms_mean": statistics.fmean(latency), "latency_ms_std": _spread(latency),
            "size_bytes": statistics.fmean(m["size_bytes"] for m in members),
            "params": members[0]["params"],
        })
    return summaries


def mean_curve(curves: list[list[dict[str, Any]]], key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of `key` over the runs' metrics, at the epochs every run reached."""
    usable = [c for c in curves if c and key in c[0]]
    if not usable:
        return [], [], []
    length = min(len(c) for c in usable)
    epochs = [usable[0][i]["epoch"] for i in range(length)]
    values = [[float(c[i][key]) for c in usable] for i in range(length)]
    return epochs, [statistics.fmean(v) for v in values], [_spread(v) for v in values]
