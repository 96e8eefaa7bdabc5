"""Tables of causal-LM report rows (what the CLI prints, and compare's Markdown)."""

from __future__ import annotations

from typing import Any

from kdistill.evaluate.report import format_size


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def lm_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: perplexity, KL to the teacher, top-1 agreement, size and CPU speed per run."""
    header = ["model", "role", f"{rows[0]['split']} perplexity", "KL(teacher‖student)", "top-1 agree", "params", "size",
              "train tok/s", "generate tok/s (b=1)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        agree = r.get("top1_agreement")
        cells = [r["name"], r["role"], f"{r['perplexity']:.3f}", _number(r.get("kl_to_teacher"), ".4f"),
                 "-" if agree is None else f"{100 * agree:.2f}%", f"{r['params']:,}", format_size(r.get("size_bytes")),
                 _number(r.get("train_tokens_per_s"), ",.0f"), f"{r['generation']['tokens_per_s']:,.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    lines += ["", f"split: {first['split']} ({first['tokens']:,} scored tokens in {first['samples']} blocks of "
              f"{first['dataset']}); generation: median tokens/s of batch-1 greedy decoding of "
              f"{first['generation']['new_tokens']} tokens on the CPU, {first['generation']['threads']} thread(s)"]
    return "\n".join(lines)
