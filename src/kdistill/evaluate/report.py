"""Evaluation of trained models: accuracy and efficiency, as report rows and a printed table.

A report row (the `report.json` schema): name, role (teacher|student|distilled), dataset,
split, accuracy, params, size_bytes, latency_ms {batch, median, mean, std, p10, p90,
repeats, threads}, throughput_per_s {batch, value}, agreement_with_teacher (students),
seeds, config_sha256.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.models.inference import accuracy, predict_logits
from kdistill.models import count_params


def measure_latency(model: nn.Module, example: torch.Tensor, *, warmup: int = 10, repeats: int = 50) -> dict[str, Any]:
    """Wall-clock of single forward passes on `example` (one real input batch), in ms.

    Warm-up calls are discarded; each repeat is timed on its own so the median and the
    spread (std, p10/p90) describe the distribution, not just its mean.
    """
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(example)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - t0) * 1000.0)
    return summarize_times(times, batch=int(example.shape[0]))


def summarize_times(times: list[float], *, batch: int) -> dict[str, Any]:
    """The latency record of timed passes (ms): batch, median, mean, std, p10, p90, repeats, threads."""
    ordered = sorted(times)
    return {"batch": batch, "median": statistics.median(ordered), "mean": statistics.fmean(ordered),
            "std": statistics.pstdev(ordered), "p10": ordered[int(0.1 * (len(ordered) - 1))],
            "p90": ordered[int(0.9 * (len(ordered) - 1))], "repeats": len(ordered), "threads": torch.get_num_threads()}


def measure_throughput(model: nn.Module, inputs: torch.Tensor, *, batch: int = 256, repeats: int = 5) -> dict[str, Any]:
    """Samples per second at a large batch (median of `repeats` timed passes after one warm-up)."""
    model.eval()
    batch = min(batch, inputs.shape[0])
    x = inputs[:batch]
    rates = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            rates.append(batch / (time.perf_counter() - t0))
    return {"batch": batch, "value": statistics.median(rates), "threads": torch.get_num_threads()}


def evaluate_model(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    name: str,
    role: str,
    dataset: str,
    split: str,
    weights_path: Path | None = None,
    teacher_logits: torch.Tensor | None = None,
    seeds: list[int] | None = None,
    config_sha256: str | None = None,
    latency_repeats: int = 50,
) -> dict[str, Any]:
    """One report row for `model` on (inputs, labels)."""
    model.eval()
    logits = predict_logits(model, inputs)
    row: dict[str, Any] = {
        "name": name,
        "role": role,
        "dataset": dataset,
        "split": split,
        "samples": int(labels.shape[0]),
        "accuracy": accuracy(logits, labels),
        "params": count_params(model),
        "size_bytes": weights_path.stat().st_size if weights_path is not None and weights_path.exists() else None,
        "latency_ms": measure_latency(model, inputs[:1], repeats=latency_repeats),
        "throughput_per_s": measure_throughput(model, inputs),
        "agreement_with_teacher": None,
        "seeds": seeds or [],
        "config_sha256": config_sha256,
    }
    if teacher_logits is not None:
        row["agreement_with_teacher"] = float((logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
    return row


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins (Guo et al., ICML 2017).

    Samples are binned by confidence (the top softmax probability) into `bins` equal-width bins
    over (0, 1]; ECE = sum over bins of (bin size / n) * |accuracy in bin - mean confidence in bin|.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0.0, 1.0, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b+1]]
    n = max(int(labels.numel()), 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else None
        acc = float(correct[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        table.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count, "confidence": conf, "accuracy": acc})
    return {"ece": ece, "bins": table}


def aggregate_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several seeds of the same model: accuracy (and agreement) as mean ± std.

    Efficiency columns come from the first seed's model (the architectures are identical).
    """
    accs = [r["accuracy"] for r in rows]
    row = dict(rows[0])
    row["accuracy"] = statistics.fmean(accs)
    row["accuracy_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
    row["accuracy_per_seed"] = accs
    row["seeds"] = [s for r in rows for s in r["seeds"]]
    agreements = [r["agreement_with_teacher"] for r in rows if r.get("agreement_with_teacher") is not None]
    if agreements:
        row["agreement_with_teacher"] = statistics.fmean(agreements)
    return row


def write_report(rows: list[dict[str, Any]], path: Path) -> None:
    """Write `{"rows": [...]}` atomically, recorded in its folder's manifest (kdistill.ownership)."""
    from kdistill.training.rundir import write_owned_text

    write_owned_text(path.parent, path.name, json.dumps({"rows": rows}, indent=2) + "\n")


def report_row(run_dir: Path) -> dict[str, Any]:
    """The first row of a finished run's `report.json` (its test evaluation)."""
    return json.loads((Path(run_dir) / "report.json").read_text())["rows"][0]


def format_size(n: int | None) -> str:
    """Bytes as B / KB / MB / GB (powers of 1024), one decimal: the unit of every table kdistill writes."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _accuracy(row: dict[str, Any]) -> str:
    if len(row.get("seeds", [])) > 1 and "accuracy_std" in row:
        return f"{100 * row['accuracy']:.2f} ± {100 * row['accuracy_std']:.2f}% ({len(row['seeds'])} seeds)"
    return f"{100 * row['accuracy']:.2f}%"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of report rows (what the CLI prints)."""
    header = ["model", "role", f"{rows[0]['split']} accuracy" if rows else "accuracy", "params", "size", "latency b=1 (ms)", "throughput (/s)", "agree w/ teacher"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lat = r["latency_ms"]
        agree = r.get("agreement_with_teacher")
        cells = [
            r["name"], r["role"], _accuracy(r), f"{r['params']:,}", format_size(r.get("size_bytes")),
            f"{lat['median']:.3f} ± {lat['std']:.3f}", f"{r['throughput_per_s']['value']:,.0f}",
            "-" if agree is None else f"{100 * agree:.2f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    threads = {r["latency_ms"]["threads"] for r in rows}
    lines.append("")
    lines.append(f"split: {rows[0]['split']} ({rows[0]['samples']} samples of {rows[0]['dataset']}); "
                 f"latency: median ± std of {rows[0]['latency_ms']['repeats']} batch-1 passes, "
                 f"{'/'.join(str(t) for t in sorted(threads))} thread(s); throughput at batch {rows[0]['throughput_per_s']['batch']}")
    return "\n".join(lines)
