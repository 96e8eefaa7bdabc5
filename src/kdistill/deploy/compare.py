"""`kdistill compare RUN_DIR ... [--out DIR]`: every model of several runs, with its exported variants, in one table.

Each run contributes its PyTorch model (`model.safetensors`) and every variant `kdistill export`
wrote for those weights (ONNX fp32, ONNX int8 dynamic/static, PyTorch int8). All rows are
evaluated on the same split and timed in one process, interleaved (round r times every model
once, in an order rotated by r), so a noisy neighbour slows every row alike.

Columns: accuracy, expected calibration error, params, size on disk, batch-1 latency (median,
p10-p90, std, threads), throughput, agreement with the teacher's predictions, and ratios to the
teacher (x smaller, x faster, accuracy change in points). Writes `compare.json`, `compare.md`,
`compare.html` (self-contained, the plots inlined) and the plots (`tradeoff.png`, `curves.png`,
`reliability.png`) into `--out`.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.errors import KdistillError
from kdistill.deploy.export import Predictor, load_predictor, read_export_record, torch_runner
from kdistill.digests import file_sha256
from kdistill.training.teachers import recorded_teacher
from kdistill.models import count_params
from kdistill.evaluate.report import calibration, format_size, summarize_times
from kdistill.ownership import FILE, MANIFEST, Owned
from kdistill.training.rundir import is_run_dir, write_owned_text
from kdistill.evaluate.samples import Batch, TensorSamples, TextSamples
from kdistill.evaluate.seed_groups import group_rows, seed_groups



@dataclass
class Row:
    """One model to measure: a run's PyTorch model or one of its exported variants."""

    run: str
    run_dir: Path
    role: str
    variant: str
    predictor: Predictor
    params: int
    samples: TensorSamples | TextSamples
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.run if self.variant == "pytorch" else f"{self.run} [{self.variant}]"


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories from the arguments: a run directory stands for itself; a directory holding run
    directories (e.g. a quickstart's --out) stands for all of them, sorted."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise KdistillError(f"run directory not found: {path}")
        if is_run_dir(path):
            found = [path]
        else:
            found = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
            if not found:
                raise KdistillError(f"{path} is neither a kdistill run directory nor a folder of run directories")
        runs += [p for p in found if p.resolve() not in {r.resolve() for r in runs}]
    return runs


def run_names(runs: list[Path]) -> list[str]:
    """Short unique names: the directory name, with its parent's when two runs share a name."""
    names = [p.name for p in runs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in runs]


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KdistillError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        owned = Owned(out)
        if not (out / "compare.json").is_file() or not owned.is_owned():
            raise KdistillError(f"--out {out} is not empty and holds no earlier comparison written by kdistill "
                                f"(no compare.json and {MANIFEST}); choose another --out")
        if not overwrite:
            raise KdistillError(f"--out {out} already holds a comparison; pass --overwrite to replace it or choose another --out")
        owned.check_removable("--out")


def _time_interleaved(rows: list[Row], inputs: list[Batch], repeats: int, warmup: int) -> list[list[float]]:
    """Per row, `repeats` wall-clock times (ms) of one call on its batch `inputs[i]`, interleaved: round r
    times every row once, starting at row r mod len(rows)."""
    times: list[list[float]] = [[] for _ in rows]
    with torch.inference_mode():
        for _ in range(warmup):
            for row, batch in zip(rows, inputs):
                row.predictor(batch)
        for r in range(repeats):
            shift = r % len(rows)
            for i in list(range(shift, len(rows))) + list(range(shift)):
                t0 = time.perf_counter()
                rows[i].predictor(inputs[i])
                times[i].append((time.perf_counter() - t0) * 1000.0)
    return times


def compare_runs(paths: list[str | Path], *, open_run: Callable[..., Any], role_of: Callable[[Path], str],
                 out: str | Path = "runs/compare", split: str = "test", repeats: int = 50,
                 threads: int | None = None, teacher: str | None = None, overwrite: bool = False,
                 data_overrides: dict[str, Any] | None = None, plots: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every run (and its exported variants) the same way; write the table, the page and the plots.

    `open_run(run_dir, split, then, data_overrides, shared)` and `role_of(run_dir)` come from each run's task
    (kdistill.tasks.compare passes them), so a comparison can hold runs of any task that give logits."""
    if repeats < 3:
        raise KdistillError(f"--repeats {repeats}: need at least 3 timed passes per model")
    if threads is not None:
        if threads < 1:
            raise KdistillError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    out = Path(out)
    runs = expand_runs(paths)
    if teacher is not None:
        teacher_dir = Path(teacher)
        if not is_run_dir(teacher_dir):
            raise KdistillError(f"--teacher {teacher}: not a kdistill run directory")
        runs = [teacher_dir] + [r for r in runs if r.resolve() != teacher_dir.resolve()]
    elif any(role_of(r) == "teacher" for r in runs):
        runs.sort(key=lambda r: role_of(r) != "teacher")  # teachers first (a stable sort)
    else:  # no teacher among the runs: bring in the one the distilled runs learned from, if they share one
        recorded = {json.dumps(rec["path"]) for r in runs if (rec := recorded_teacher(r))}
        path = json.loads(recorded.pop()) if len(recorded) == 1 else None
        if isinstance(path, str) and Path(path).is_dir() and is_run_dir(Path(path)):
            runs = [Path(path)] + runs
    for other in runs:
        if out.resolve() == other.resolve() or other.resolve() in out.resolve().parents:
            raise KdistillError(f"--out {out} is inside the run directory {other}; choose another --out")
    prepare_out(out, overwrite)

    rows: list[Row] = []
    shared = None
    first: Any = None  # the first run opened (kdistill.tasks.OpenedRun)
    curves: dict[str, list[dict[str, Any]]] = {}
    skipped: list[str] = []
    for run_dir, name in zip(runs, run_names(runs)):
        loaded = open_run(run_dir, split, "compare it", data_overrides, shared)
        shared = loaded.shared
        if first is None:
            first = loaded
        elif loaded.dataset != first.dataset or not torch.equal(loaded.samples.labels, first.samples.labels):
            raise KdistillError(f"{run_dir} was trained on {loaded.dataset!r} ({len(loaded.samples)} {split} samples), "
                                f"{runs[0]} on {first.dataset!r} ({len(first.samples)}); compare runs of one data set")
        role = loaded.role
        model, params = loaded.model, count_params(loaded.model)
        rows.append(Row(name, run_dir, role, "pytorch", Predictor(name, "pytorch", run_dir / "model.safetensors", torch_runner(model)),
                        params, loaded.samples))
        record = read_export_record(run_dir)
        if record:
            if record.get("weights_sha256") != file_sha256(run_dir / "model.safetensors"):
                skipped.append(f"{name}: exported files predate the current weights (export again)")
            else:
                for variant in record["variants"]:
                    rows.append(Row(name, run_dir, role, variant, load_predictor(run_dir, variant, model, threads), params,
                                    loaded.samples))
        curves[name] = _read_metrics(run_dir)
    for note in skipped:
        log(f"kdistill: warning: {note}")
    assert first is not None
    labels = first.samples.labels
    reference = next((r for r in rows if r.role == "teacher" and r.variant == "pytorch"), None)
    if teacher is not None:
        reference = rows[0]

    log(f"evaluating {len(rows)} model(s) on {split} ({len(labels)} samples of {first.dataset})")
    reference_pred = None
    for row in rows:
        logits = row.predictor.predict(row.samples)
        row.result["logits"] = logits
        if row is reference:
            reference_pred = logits.argmax(-1)
    for row in rows:
        logits = row.result.pop("logits")
        cal = calibration(logits, labels)
        row.result |= {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "ece": cal["ece"],
            "calibration": cal,
            "agreement_with_teacher": (float((logits.argmax(-1) == reference_pred).float().mean())
                                       if reference_pred is not None and row is not reference else None),
        }

    log(f"timing {len(rows)} model(s): {repeats} interleaved batch-1 rounds, {threads} thread(s)")
    singles = [row.samples.example() for row in rows]
    for row, times in zip(rows, _time_interleaved(rows, singles, repeats, warmup=10)):
        row.result["latency_ms"] = summarize_times(times, batch=1)
    size = min(first.samples.throughput_batch, len(labels))
    bigs = [row.samples.first(size) for row in rows]
    for row, times in zip(rows, _time_interleaved(rows, bigs, max(3, repeats // 10), warmup=1)):
        row.result["throughput_per_s"] = {"batch": size, "value": size / (statistics.median(times) / 1000.0), "threads": threads}

    groups = seed_groups(runs, run_names(runs))
    table = []
    for row in rows:
        entry = {"run": row.run, "group": groups[row.run], "label": row.label, "run_dir": str(row.run_dir),
                 "role": row.role, "variant": row.variant,
                 "file": str(row.predictor.path), "params": row.params, "size_bytes": row.predictor.size_bytes, **row.result}
        if reference is not None:
            ref = reference.result
            entry["vs_teacher"] = {"times_smaller": reference.predictor.size_bytes / entry["size_bytes"],
                                   "times_faster": ref["latency_ms"]["median"] / entry["latency_ms"]["median"],
                                   "accuracy_delta_points": 100 * (entry["accuracy"] - ref["accuracy"])}
        table.append(entry)
    result = {"dataset": first.dataset, "split": split, "samples": len(labels), "threads": threads, "repeats": repeats,
              "teacher": reference.label if reference is not None else None, "rows": table,
              "groups": group_rows(table), "skipped": skipped,
              "command": "kdistill compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else None}
    _write_outputs(result, curves, out, plots, log)
    return result


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    epochs = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                epochs.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: the curve ends there
    return epochs


def markdown_table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table plus a line saying how it was measured."""
    header = ["model", "role", "format", f"{result['split']} accuracy", "ECE", "params", "size", "latency b=1 ms (p10-p90)",
              "throughput /s", "agree w/ teacher", "x smaller", "x faster", "Δ acc (pts)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in result["rows"]:
        lat, vs = r["latency_ms"], r.get("vs_teacher")
        agree = r["agreement_with_teacher"]
        cells = [r["run"], r["role"], r["variant"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['ece']:.2f}%", f"{r['params']:,}",
                 format_size(r["size_bytes"]), f"{lat['median']:.3f} ({lat['p10']:.3f}-{lat['p90']:.3f})",
                 f"{r['throughput_per_s']['value']:,.0f}", "-" if agree is None else f"{100 * agree:.2f}%",
                 "-" if vs is None else f"{vs['times_smaller']:.1f}", "-" if vs is None else f"{vs['times_faster']:.1f}",
                 "-" if vs is None else f"{vs['accuracy_delta_points']:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _group_table(result)
    lines += ["", f"{result['split']} split: {result['samples']} samples of {result['dataset']}. Latency: median (p10-p90) of "
              f"{result['repeats']} batch-1 passes per model on a real sample, interleaved across models, "
              f"{result['threads']} thread(s); throughput at batch {result['rows'][0]['throughput_per_s']['batch']}. "
              f"ECE: expected calibration error, 15 bins. Ratios are to the teacher ({result['teacher'] or 'none given'})."]
    return "\n".join(lines)


def _group_table(result: dict[str, Any]) -> list[str]:
    """Runs that differ only by seed, as mean ± std (kdistill.evaluate.seed_groups), when some group has several runs."""
    groups = result.get("groups") or []
    if not any(len(g["runs"]) > 1 for g in groups):
        return []
    lines = ["", f"Runs that differ only by seed ({result['split']} accuracy and batch-1 latency, mean ± std over the seeds):", "",
             "| group | role | format | runs | accuracy | latency b=1 ms | size |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        several = len(g["runs"]) > 1
        accuracy = f"{100 * g['accuracy_mean']:.2f}" + (f" ± {100 * g['accuracy_std']:.2f}" if several else "") + "%"
        latency = f"{g['latency_ms_mean']:.3f}" + (f" ± {g['latency_ms_std']:.3f}" if several else "")
        lines.append(f"| {g['group']} | {g['role']} | {g['variant']} | {len(g['runs'])} | {accuracy} | {latency} | "
                     f"{format_size(int(g['size_bytes']))} |")
    return lines


def _html_page(result: dict[str, Any], images: list[Path]) -> str:
    rows = result["rows"]
    head = ["model", "role", "format", "accuracy", "ECE", "params", "size", "latency b=1 ms", "p10-p90", "throughput /s",
            "agree w/ teacher", "x smaller", "x faster", "Δ acc (pts)"]
    body = []
    for r in rows:
        vs, lat, agree = r.get("vs_teacher"), r["latency_ms"], r["agreement_with_teacher"]
        cells = [r["run"], r["role"], r["variant"], f"{100 * r['accuracy']:.2f}%", f"{100 * r['ece']:.2f}%", f"{r['params']:,}",
                 format_size(r["size_bytes"]), f"{lat['median']:.3f}", f"{lat['p10']:.3f}-{lat['p90']:.3f}",
                 f"{r['throughput_per_s']['value']:,.0f}", "-" if agree is None else f"{100 * agree:.2f}%",
                 "-" if vs is None else f"{vs['times_smaller']:.1f}", "-" if vs is None else f"{vs['times_faster']:.1f}",
                 "-" if vs is None else f"{vs['accuracy_delta_points']:+.2f}"]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    figures = "".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                      f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
                      for p in images)
    note = markdown_table(result).splitlines()[-1]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kdistill compare: {html.escape(result['dataset'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:nth-child(-n+3),th:nth-child(-n+3){{text-align:left}}
th{{background:#f3f3f3}}img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>kdistill compare: {html.escape(result['dataset'])}, {html.escape(result['split'])} split</h1>
<table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table><p>{html.escape(note)}</p>
{figures}
</body></html>
"""


def _write_outputs(result: dict[str, Any], curves: dict[str, list[dict[str, Any]]], out: Path, plots: bool,
                   log: Callable[[str], None]) -> None:
    from kdistill.deploy import plots as plotting
    owned = Owned(out)
    for stale in [name for name, kind in (owned.entries() or {}).items() if name.endswith(".png") and kind == FILE]:
        (out / stale).unlink(missing_ok=True)  # an earlier comparison's plots describe other rows
        owned.release(stale)
    images: list[Path] = []
    if plots and plotting.matplotlib_available():
        pictures = [("tradeoff.png", lambda p: plotting.plot_tradeoff(result["rows"], p,
                                                                     f"{result['dataset']}: accuracy vs batch-1 latency "
                                                                     "(bubble area ∝ size on disk)")),
                    ("reliability.png", lambda p: plotting.plot_reliability([r for r in result["rows"] if r["variant"] == "pytorch"], p))]
        if any(curves.values()):
            groups = {r["run"]: r["group"] for r in result["rows"]}
            pictures.append(("curves.png", lambda p: plotting.plot_curves(curves, p, groups)))
        for name, draw in pictures:
            tmp = owned.path(f".{name}.tmp.png")
            draw(tmp)
            tmp.replace(owned.path(name))
            owned.release(tmp.name)
            images.append(out / name)
    elif plots:
        log("kdistill: warning: matplotlib is not installed, so no plots were drawn (pip install 'kdistill[plots]')")
    for name, text in (("compare.json", json.dumps(result, indent=2) + "\n"), ("compare.md", markdown_table(result) + "\n"),
                       ("compare.html", _html_page(result, images))):
        write_owned_text(out, name, text)


__all__ = ["compare_runs", "expand_runs", "markdown_table"]
