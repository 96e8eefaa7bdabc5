"""Runs that differ only by seed are grouped (kdistill.evaluate.seed_groups), and the tradeoff plot's labels never overlap."""

from __future__ import annotations

import statistics

import pytest
import yaml

from kdistill.deploy.plots import _label_positions
from kdistill.evaluate.seed_groups import group_rows, mean_curve, seed_groups


def _run(path, **config):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def test_runs_that_differ_only_by_seed_form_one_group(tmp_path):
    base = {"data": {"name": "digits"}, "model": {"name": "mlp"}}
    runs = [_run(tmp_path / f"student-seed{s}", name="student", seed=s, out=f"x/{s}", **base) for s in range(3)]
    runs.append(_run(tmp_path / "wide", name="student", seed=0, out="y", data={"name": "digits"}, model={"name": "cnn"}))
    runs.append(tmp_path / "no-config")
    runs[-1].mkdir()
    groups = seed_groups(runs, [r.name for r in runs])
    assert [groups[f"student-seed{s}"] for s in range(3)] == ["student"] * 3
    assert groups["wide"] == "student #2"  # another model, the same name: its own group, numbered
    assert groups["no-config"] == "no-config"


def test_group_rows_give_mean_and_spread_per_group_and_format():
    rows = [{"run": f"r{s}", "group": "student", "variant": "pytorch", "role": "student", "accuracy": a,
             "latency_ms": {"median": lat}, "size_bytes": 100, "params": 7}
            for s, (a, lat) in enumerate([(0.9, 1.0), (0.8, 3.0), (0.7, 2.0)])]
    rows.append({**rows[0], "variant": "onnx", "accuracy": 0.5})
    summary = {g["variant"]: g for g in group_rows(rows)}
    assert summary["pytorch"]["runs"] == ["r0", "r1", "r2"]
    assert summary["pytorch"]["accuracy_mean"] == pytest.approx(0.8)
    assert summary["pytorch"]["accuracy_std"] == pytest.approx(statistics.stdev([0.9, 0.8, 0.7]))
    assert summary["pytorch"]["latency_ms_mean"] == pytest.approx(2.0)
    assert summary["onnx"]["accuracy_std"] == 0.0 and summary["onnx"]["runs"] == ["r0"]


def test_mean_curve_stops_at_the_shortest_run():
    a = [{"epoch": e, "val_accuracy": 0.1 * e} for e in (1, 2, 3)]
    b = [{"epoch": e, "val_accuracy": 0.1 * e + 0.2} for e in (1, 2)]
    epochs, mean, std = mean_curve([a, b], "val_accuracy")
    assert epochs == [1, 2] and mean == pytest.approx([0.2, 0.3]) and std[0] == pytest.approx(statistics.stdev([0.1, 0.3]))
    assert mean_curve([a], "loss") == ([], [], [])


@pytest.mark.parametrize("wanted", [[0.5, 0.5, 0.5, 0.5], [0.99, 1.0, 0.98], [0.0, 0.01, 0.3], [0.2, 0.9, 0.1, 0.5]])
def test_label_positions_keep_their_gap_order_and_the_frame(wanted):
    gap = 0.075
    placed = _label_positions(wanted, gap)
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    heights = [placed[i] for i in order]
    assert all(b - a >= gap - 1e-12 for a, b in zip(heights, heights[1:]))  # no two labels overlap
    assert all(-1e-12 <= h <= 1.0 + 1e-12 for h in heights)
