"""`kdistill distill CONFIG --baseline --seeds N`: the distilled student beside the same student trained alone."""

from __future__ import annotations

import json

from conftest import run_cli, tree_digest, write_yaml
from kdistill.baseline import alone_config
from kdistill.config import DistillRunConfig, run_role, validate_config
from kdistill.ownership import FOLDER, Owned


def test_the_alone_config_is_the_distill_config_with_plain_ce_and_no_teacher(distill_config):
    cfg = validate_config(distill_config, DistillRunConfig)
    alone = alone_config(cfg)
    assert alone.distill.method == "ce" and alone.teacher is None and run_role(alone) == "student"
    assert alone.student == cfg.student and alone.train == cfg.train and alone.data == cfg.data and alone.seed == cfg.seed
    assert run_role(cfg) == "distilled"


def test_baseline_writes_runs_report_and_pictures_and_reuses_them(tmp_path, distill_config):
    cfg = {**distill_config, "data": {**distill_config["data"], "labeled_samples": 100}, "out": str(tmp_path / "base")}
    path = write_yaml(tmp_path / "kd.yaml", cfg)
    result = run_cli("distill", str(path), "--baseline", "--seeds", "2", "-q")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "base"
    assert {p.name for p in out.iterdir()} >= {"alone-seed0", "alone-seed1", "distilled-seed0", "distilled-seed1",
                                                "report.json", "report.md", "compare"}
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["role"] for r in rows] == ["teacher", "student", "distilled"]
    alone, distilled = rows[1], rows[2]
    per_seed = [json.loads((out / f"alone-seed{s}" / "report.json").read_text())["rows"][0]["accuracy"] for s in (0, 1)]
    assert alone["accuracy_per_seed"] == per_seed and alone["accuracy"] == sum(per_seed) / 2
    assert distilled["seeds"] == [0, 1]
    # The student alone learned from the 100 labelled samples only; the distilled one from all 1,078.
    last = json.loads((out / "alone-seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["samples"] == 100 and "unlabeled_samples" not in last
    last = json.loads((out / "distilled-seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["labeled_samples"] == 100 and last["unlabeled_samples"] == 978
    assert "Distilled − alone" in result.stdout and (out / "compare" / "curves.png").is_file()
    groups = json.loads((out / "compare" / "compare.json").read_text())["groups"]
    assert sorted(len(g["runs"]) for g in groups if g["variant"] == "pytorch") == [1, 2, 2]  # teacher; 2 seeds each

    runs = {name: tree_digest(out / name) for name in ("alone-seed0", "distilled-seed1")}
    again = run_cli("distill", str(path), "--baseline", "--seeds", "2", "-q")  # finished runs are reused, not retrained
    assert again.returncode == 0, again.stderr
    assert "-> " not in again.stderr and {name: tree_digest(out / name) for name in runs} == runs

    single = run_cli("distill", str(path), f"out={out / 'alone-seed0'}", "--baseline", "-q")
    assert single.returncode == 2 and "holds a single run" in single.stderr
    other = tmp_path / "quickstart-like"  # a folder kdistill wrote for something else is not taken over
    Owned(other).claim("teacher", kind=FOLDER)
    (other / "teacher").mkdir()
    taken = run_cli("distill", str(path), f"out={other}", "--baseline", "-q")
    assert taken.returncode == 2 and "holds no baseline of this config" in taken.stderr
    assert sorted(p.name for p in other.iterdir()) == ["kdistill-manifest.json", "teacher"]
    stray = run_cli("distill", str(path), "--seeds", "2", "-q")
    assert stray.returncode == 2 and "--seeds goes with --baseline" in stray.stderr
