"""`kdistill compare` of causal-LM runs: every model measured the same way on the same held-out blocks.

The reference teacher is `--teacher` (a causal-LM run or a Hugging Face folder), else the teacher the
distilled runs learned from (their teacher.json) when they share one, else a run whose role is teacher. Each
row: perplexity, KL(teacher ‖ model) and top-1 agreement with that teacher, parameters, size, training and
batch-1 generation tokens/s on the CPU, and generated samples. With exactly one student trained alone
(role student) among the runs, each distilled row also says what fraction of the NLL gap between that
student and the teacher it closed: (nll_alone − nll) / (nll_alone − nll_teacher).
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from kdistill.deploy.compare import expand_runs, prepare_out, run_names
from kdistill.digests import weights_sha256
from kdistill.errors import KdistillError
from kdistill.lm.evaluate import lm_report_row
from kdistill.lm.models import hf_folder, load_causal_lm
from kdistill.lm.report import lm_table
from kdistill.lm.runner import check_recorded_teacher, load_finished_lm_run
from kdistill.evaluate.report import report_row
from kdistill.training.rundir import write_owned_text
from kdistill.training.teachers import recorded_teacher


class Opened(NamedTuple):
    name: str
    run: Path
    cfg: Any
    data: Any
    model: Any
    tokenizer: Any


def _reference(runs: list[Path], teacher: str | None) -> Path | None:
    if teacher is not None:
        return hf_folder(teacher, "--teacher")
    recorded = {record.get("path") for run in runs if (record := recorded_teacher(run))}
    if len(recorded) == 1 and (path := recorded.pop()) and (Path(path) / "config.json").is_file():
        return Path(path)
    return None


def compare_lm_runs(paths: list[str | Path], *, out: str | Path = "runs/compare", split: str = "test",
                    teacher: str | None = None, overwrite: bool = False, data_overrides: dict[str, Any] | None = None,
                    threads: int | None = None, log: Callable[[str], None] = print, **_timing: Any) -> dict[str, Any]:
    """Measure every causal-LM run (and the reference teacher); write compare.md, compare.json, compare.html."""
    if threads is not None:
        if threads < 1:
            raise KdistillError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
    out = Path(out)
    runs = expand_runs(paths)
    teacher_dir = _reference(runs, teacher)
    for other in runs + ([teacher_dir] if teacher_dir else []):
        if out.resolve() == other.resolve() or other.resolve() in out.resolve().parents:
            raise KdistillError(f"--out {out} is inside {other}; choose another --out")
    prepare_out(out, overwrite)
    opened = [Opened(name, run, *load_finished_lm_run(run, "compare it", data_overrides))
              for name, run in zip(run_names(runs), runs)]
    first = opened[0]
    blocks = first.data.split(split)
    for other in opened[1:]:
        if other.data.split(split).sha256() != blocks.sha256():
            raise KdistillError(f"{other.run}'s {split} tokens differ from {first.run}'s (another data set, block size "
                                "or tokenizer); compare runs of one data set")
    teacher_run = next((o for o in opened if teacher_dir is not None and o.run.resolve() == teacher_dir.resolve()), None)
    reference = teacher_run.model if teacher_run else load_causal_lm(teacher_dir, "teacher")[0] if teacher_dir else None
    if reference is not None and teacher_run is None:  # the teacher the distilled runs recorded, with its weights then
        digest = weights_sha256(reference)
        for o in opened:
            check_recorded_teacher(o.run, teacher_dir, digest)
    log(f"evaluating {len(opened) + (reference is not None and teacher_run is None)} model(s) on {split} "
        f"({blocks.scored_tokens:,} tokens of {first.data.name})")
    rows = []
    if reference is not None and teacher_run is None:  # the teacher is a Hugging Face folder, not one of the runs
        rows.append(lm_report_row(reference, first.tokenizer, blocks, name=teacher_dir.name, role="teacher",
                                  dataset=first.data.name, split=split, out=teacher_dir, seed=0, config_sha256=None))
    for o in opened:
        old = report_row(o.run)
        rows.append(lm_report_row(o.model, o.tokenizer, blocks, name=o.name, role="teacher" if o is teacher_run else
                                  old.get("role", "student"), dataset=o.data.name, split=split, out=o.run, seed=o.cfg.seed,
                                  config_sha256=o.cfg.sha256(), teacher=None if o is teacher_run else reference,
                                  train_tokens_per_s=old.get("train_tokens_per_s")) | {"run_dir": str(o.run)})
    _gap_closed(rows)
    result = {"task": "causal-lm", "dataset": first.data.name, "split": split, "tokens": blocks.scored_tokens,
              "teacher": str(teacher_dir) if teacher_dir else None, "rows": rows,
              "command": "kdistill compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else None}
    for file, text in (("compare.json", json.dumps(result, indent=2) + "\n"), ("compare.md", lm_table(rows) + "\n"),
                       ("compare.html", _html(result))):
        write_owned_text(out, file, text)
    return result


def _gap_closed(rows: list[dict[str, Any]]) -> None:
    teacher = next((r for r in rows if r["role"] == "teacher"), None)
    alone = [r for r in rows if r["role"] == "student"]
    if teacher is None or len(alone) != 1 or alone[0]["nll"] <= teacher["nll"]:
        return
    gap = alone[0]["nll"] - teacher["nll"]
    for row in rows:
        if row["role"] == "distilled":
            row["nll_gap_closed"] = (alone[0]["nll"] - row["nll"]) / gap


def _html(result: dict[str, Any]) -> str:
    table = lm_table(result["rows"]).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    body = ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
            for line in table[2:] if line.startswith("|")]
    samples = []
    for row in result["rows"]:
        for sample in row["generation"]["samples"]:
            samples.append(f"<h3>{html.escape(row['name'])} ({html.escape(row['role'])})</h3><pre><b>"
                           f"{html.escape(sample['prompt'])}</b>{html.escape(sample['continuation'])}</pre>")
            break
    gaps = [f"<li>{html.escape(r['name'])}: {100 * r['nll_gap_closed']:.1f}% of the NLL gap closed</li>"
            for r in result["rows"] if "nll_gap_closed" in r]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kdistill compare: {html.escape(result['dataset'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:nth-child(-n+2),th:nth-child(-n+2){{text-align:left}}
th{{background:#f3f3f3}}pre{{white-space:pre-wrap;background:#f7f7f7;padding:8px}}</style></head>
<body><h1>kdistill compare: {html.escape(result['dataset'])}, {html.escape(result['split'])} split (causal LM)</h1>
<table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table><p>{html.escape(table[-1])}</p><ul>{''.join(gaps)}</ul>
<h2>Greedy continuations (prompt in bold)</h2>{''.join(samples)}
</body></html>
"""
