"""`kdistill distill CONFIG --baseline [--seeds N]`: what distillation bought on the user's own data, in one
command.

For each of N seeds (the config's seed and the N - 1 after it) the config is distilled, and the same student is
trained on labels alone: the same config with `distill: {method: ce}` (no teacher signal, the same student
built the same way, the same budget and seed; unlabelled transfer data is left out, as `kdistill train` would).
`out` becomes a folder of those runs (`distilled-seed<S>/`, `alone-seed<S>/`), and gets `report.json` and
`report.md` (teacher, student alone and distilled: mean ± std over the seeds, per seed, and the gain) and
`compare/` (kdistill compare of all of them: the seed-grouped tradeoff and curves pictures). Finished runs are
reused, so an interrupted baseline continues where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from kdistill.config import validate_config
from kdistill.errors import KdistillError
from kdistill.ownership import FOLDER, MANIFEST, Owned
from kdistill.evaluate.report import format_size, report_row, write_report
from kdistill.training.rundir import is_run_dir, write_owned_text
from kdistill.runner import finished_row

REPORT = ("report.json", "report.md")
COMPARE = "compare"


def alone_config(cfg: Any) -> Any:
    """The student of distill config `cfg` trained on labels alone: `distill: {method: ce}`; a vision config also
    drops its teacher (a text or causal-LM student may be built from the teacher's layers, so it keeps it)."""
    raw = cfg.model_dump(mode="json")
    raw["distill"] = {"method": "ce"}
    raw["name"] = f"{cfg.name}-alone"
    if "teacher_input" in raw:  # the vision engine: no teacher at all
        raw.update(teacher=None, teacher_input=None, teacher_trust=False)
    return validate_config(raw, type(cfg), source=f"the baseline of {cfg.name}")


def _seeded(cfg: Any, seed: int, out: Path) -> Any:
    return validate_config(cfg.model_dump(mode="json") | {"seed": seed, "out": str(out)}, type(cfg),
                           source=f"{cfg.name} seed {seed}")


def _claim(out: Path, folders: list[str], overwrite: bool) -> Owned:
    """`out` as this baseline's folder: new, empty, or one kdistill wrote (then --overwrite replaces its report)."""
    if out.exists() and not out.is_dir():
        raise KdistillError(f"out: {out} exists and is not a folder")
    if is_run_dir(out):
        raise KdistillError(f"out: {out} holds a single run; --baseline writes several runs and their report into "
                            "one folder: set another out (e.g. out=runs/mine-baseline)")
    owned = Owned(out)
    if out.is_dir() and any(out.iterdir()):
        ours = {*REPORT, *folders, COMPARE, MANIFEST}
        if not owned.is_owned() or not {p.name for p in out.iterdir()} <= ours:
            raise KdistillError(f"out: {out} is not empty and holds no baseline of this config written by kdistill "
                                f"(only {MANIFEST}, report.json/md, compare/ and the runs' folders may be there); "
                                "set another out")
        owned.check_removable("out")
    owned.claim(*REPORT)
    owned.claim(*folders, COMPARE, kind=FOLDER)
    if overwrite:
        for name in REPORT:
            (out / name).unlink(missing_ok=True)
    return owned


def _score(task: Any, row: dict[str, Any]) -> float:
    return float(row[task.score_key])


def _summary(task: Any, name: str, role: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [_score(task, r) for r in rows]
    return {"name": name, "role": role, "seeds": [s for r in rows for s in r.get("seeds", [])],
            task.score_key: statistics.fmean(scores), f"{task.score_key}_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            f"{task.score_key}_per_seed": scores, "params": rows[0].get("params"), "size_bytes": rows[0].get("size_bytes")}


def _markdown(task: Any, cfg: Any, summaries: list[dict[str, Any]], gain: list[float], steps: dict[str, str]) -> str:
    key, percent = task.score_key, task.score_key == "accuracy"

    def shown(value: float) -> str:
        return f"{100 * value:.2f}%" if percent else f"{value:.3f}"

    lines = [f"# {cfg.name}: teacher, student alone and distilled", "",
             f"| model | role | test {key} (mean ± std) | per seed | params | size |", "|---|---|---|---|---|---|"]
    for s in summaries:
        spread = f" ± {shown(s[f'{key}_std'])}" if len(s[f"{key}_per_seed"]) > 1 else ""
        lines.append(f"| {s['name']} | {s['role']} | {shown(s[key])}{spread} | "
                     f"{', '.join(shown(v) for v in s[f'{key}_per_seed'])} | "
                     f"{'-' if s['params'] is None else format(s['params'], ',')} | {format_size(s['size_bytes'])} |")
    unit = "points" if percent else task.score_key
    scale = 100 if percent else 1
    mean = statistics.fmean(gain)
    better = "higher" if task.higher_is_better else "lower"
    lines += ["", f"Distilled − alone: **{scale * mean:+.2f} {unit}** (mean over {len(gain)} seed(s); per seed "
              f"{', '.join(f'{scale * g:+.2f}' for g in gain)}; {better} is better).", ""]
    lines += ["Training (the same config, epochs and seeds; a student alone learns from labelled samples only):", ""]
    lines += [f"- {role}: {text}" for role, text in steps.items()]
    return "\n".join(lines) + "\n"


def _pictures_line(compared: Path) -> str:
    pictures = [f"`{COMPARE}/{p.name}`" for p in sorted(compared.glob("*.png"))]
    drawn = (f"Pictures (runs of one setting and several seeds drawn as one): {', '.join(pictures)}; " if pictures
             else "No pictures were drawn (the `plots` extra, matplotlib, is not installed, or this task draws none); ")
    return f"\n{drawn}the full comparison: `{COMPARE}/compare.md`.\n"


def _training_seen(run_dir: Path) -> str:
    """How much training a run had: its epochs, and the samples of its last epoch (labelled and unlabelled)."""
    try:
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return "no metrics"
    counts = f" of {last['samples']:,} samples" if "samples" in last else ""
    if "labeled_samples" in last:
        counts = f" of {last['labeled_samples']:,} labelled + {last['unlabeled_samples']:,} unlabelled samples"
    return f"{last.get('epoch', '?')} epochs{counts}"


def run_baseline(task: Any, cfg: Any, seeds: int, *, overwrite: bool = False, progress: bool = True,
                 log: Any = print) -> dict[str, Any]:
    """Distil `cfg` and train its student alone on `seeds` seeds; write the report and the comparison (see the
    module docstring). Returns {"summaries": [...], "gain": [...], "out": folder}."""
    if seeds < 1:
        raise KdistillError(f"--seeds {seeds}: must be at least 1")
    out = Path(cfg.out)
    seed_list = [cfg.seed + i for i in range(seeds)]
    alone = alone_config(cfg)
    plan = [(_seeded(cfg, s, out / f"distilled-seed{s}"), _seeded(alone, s, out / f"alone-seed{s}")) for s in seed_list]
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 owns the folder and the report
    if main_process:
        _claim(out, [Path(c.out).name for pair in plan for c in pair], overwrite)
    distilled_rows, alone_rows = [], []
    for distilled_cfg, alone_cfg in plan:
        for run_cfg, rows, what in ((alone_cfg, alone_rows, "alone"), (distilled_cfg, distilled_rows, "distilled")):
            row = None if overwrite else finished_row(run_cfg)
            if row is None:
                log(f"kdistill: baseline: {what} seed {run_cfg.seed} -> {run_cfg.out}")
                row = task.run("distill", run_cfg, overwrite=overwrite, progress=progress)
            rows.append(row)
    if not main_process:
        return {}  # rank 0 reports
    summaries = []
    teacher_dir = Path(str(cfg.teacher)) if isinstance(cfg.teacher, str) else None
    if teacher_dir is not None and (teacher_dir / "report.json").is_file():
        teacher = report_row(teacher_dir)
        summaries.append(_summary(task, "teacher", "teacher", [teacher]))
    summaries += [_summary(task, f"{cfg.name} alone", "student", alone_rows),
                  _summary(task, cfg.name, "distilled", distilled_rows)]
    sign = 1.0 if task.higher_is_better else -1.0
    gain = [sign * (_score(task, d) - _score(task, a)) for d, a in zip(distilled_rows, alone_rows)]
    steps = {"student alone": _training_seen(Path(plan[0][1].out)), "distilled": _training_seen(Path(plan[0][0].out))}
    from kdistill import tasks

    runs = ([teacher_dir] if len(summaries) == 3 else []) + [Path(c.out) for pair in plan for c in pair]
    text = _markdown(task, cfg, summaries, gain, steps)
    try:
        tasks.compare(runs, out=out / COMPARE, overwrite=True, repeats=20,
                      log=lambda line: log(line) if "warning" in line else None)
        text += _pictures_line(out / COMPARE)
    except KdistillError as exc:  # the runs and the report stand; only the comparison is missing
        log(f"kdistill: warning: baseline: the comparison was not made ({exc})")
        text += f"\nThe comparison was not made: {exc}\n"
    write_report(summaries, out / "report.json")
    write_owned_text(out, "report.md", text)
    return {"summaries": summaries, "gain": gain, "out": out}
