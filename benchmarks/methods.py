"""Every distillation method on one Fashion-MNIST teacher/student pair: same budget, several seeds.

For each method (and the student trained alone), train the same student for `--epochs` with
the same data, augmentation (random-crop + hflip), optimiser and schedule, once per seed,
through `run_train` / `run_distill` (the CLI's code path), and report test accuracy as mean ±
std over the seeds. Hyperparameters are each method's defaults (the papers' CIFAR
settings), except DKD's warm-up, scaled to the budget (1 epoch of 5, the paper's 20 of 240).

Logit-only methods read the teacher's logits from the teacher output cache (4 views; issue
4's benchmark measures cached vs live accuracy on this pair); feature and relation methods
need the live teacher. The table says which.

`--tune` makes the comparison fair instead (issue 19): the student alone's lr and weight decay are
searched with `kdistill sweep` (the `ce` method, no teacher) on the validation split at `--select-seed`,
then every method, at the alone's chosen lr and weight decay, has its main weight and temperature
(TUNE_SPACE) searched with the same number of trials; the chosen settings run on `--seeds` and are
reported on test beside the defaults' results (`--defaults`, this script's untuned JSON, when it measured
the same student, epochs and seeds). Finished runs and sweeps are reused, so an interrupted run continues.

Run: `make bench-methods` or `python benchmarks/methods.py [--epochs 5] [--seeds 0 1 2] [--methods kd dkd]`;
tuned: `make bench-methods-tuned` or `python benchmarks/methods.py --tune [--trials 8]`.
The teacher is `--teacher` (default runs/fmnist-teacher, trained from configs/fmnist-teacher.yaml if missing).
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

from kdistill.config import DistillRunConfig, TrainRunConfig, apply_overrides, load_config, validate_config
from kdistill.methods import METHODS
from kdistill.evaluate.report import aggregate_seeds, format_table, report_row
from kdistill.runner import run_distill, run_train
from kdistill.sweep import run_sweep
from runs import run_or_reuse

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
STUDENT = {"name": "cnn", "channels": [8, 16, 32]}
METHOD_ORDER = ["kd", "dkd", "dist", "ls_kd", "fitnet", "at", "pkt", "sp", "rkd", "crd", "tf_kd", "dml"]
# Settings that differ from a method's defaults, and why.
SETTINGS = {
    "kd": {"temperature": 4.0, "alpha": 0.5},
    "dkd": {"warmup_epochs": 1},  # the paper ramps over 20 of 240 epochs; scaled to this budget
    "crd": {"negatives": 1024},  # the paper's 16384 gathers 1 GB of bank rows per step at batch 128: too slow on a CPU
}


def _log_range(low: float, high: float) -> dict:
    return {"low": low, "high": high, "log": True}


TEMPERATURE = _log_range(1.0, 8.0)
# --tune: each method's main weight (and temperature, where it has one), ranges spanning its paper's default.
TUNE_SPACE = {
    "kd": {"distill.temperature": TEMPERATURE, "distill.alpha": {"low": 0.0, "high": 1.0}},
    "dkd": {"distill.beta": _log_range(0.5, 16.0), "distill.temperature": TEMPERATURE},
    "dist": {"distill.weight": _log_range(0.25, 4.0), "distill.temperature": TEMPERATURE},
    "ls_kd": {"distill.weight": _log_range(1.0, 20.0), "distill.temperature": TEMPERATURE},
    "fitnet": {"distill.weight": _log_range(1.0, 1000.0)},
    "at": {"distill.weight": _log_range(10.0, 10000.0)},
    "pkt": {"distill.weight": _log_range(300.0, 100000.0)},
    "sp": {"distill.weight": _log_range(30.0, 10000.0)},
    "rkd": {"distill.weight": _log_range(0.1, 10.0)},
    "crd": {"distill.weight": _log_range(0.1, 4.0), "distill.nce_temperature": _log_range(0.03, 0.3)},
    "tf_kd": {"distill.alpha": {"low": 0.0, "high": 1.0}, "distill.temperature": _log_range(1.0, 20.0)},
    "dml": {"distill.weight": _log_range(0.25, 4.0), "distill.temperature": TEMPERATURE},
}
ALONE_SPACE = {"train.lr": _log_range(1e-3, 1e-2), "train.weight_decay": _log_range(1e-5, 1e-2)}


def method_config(name: str, seed: int, args: argparse.Namespace, teacher_dir: Path, data: dict, train: dict,
                  out: Path) -> dict:
    """The raw distill config of `name` (a method, or "ce": the student alone) with its SETTINGS."""
    cls = METHODS[name]
    distill = {"method": name, **SETTINGS.get(name, {})}
    if not cls.reads_teacher_features and cls.needs_teacher:  # logits only: read from the teacher cache
        distill |= {"teacher_outputs": "cached", "cache": {"views": args.views, "dir": str(Path(args.work) / "cache")}}
    cfg = {"name": name, "seed": seed, "data": data, "student": args.student, "distill": distill, "train": train,
           "out": str(out)}
    if cls.needs_teacher:
        cfg["teacher"] = str(teacher_dir)
    return cfg


def teacher_outputs(name: str, views: int) -> str:
    cls = METHODS[name]
    if not cls.needs_teacher:
        return "none"
    return "live" if cls.reads_teacher_features else f"cached ({views} views)"


def tuned_overrides(label: str, raw: dict, space: dict, trials: int, directory: Path) -> dict:
    """Sweep `raw` over `space` with `trials` trials in `directory` (continued if it exists); the best trial's values."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = directory.with_suffix(".yaml")
    config.write_text(json.dumps({**raw, "sweep": {"space": space, "trials": trials, "seed": 0}}, indent=2) + "\n")
    t0 = time.perf_counter()
    summary = run_sweep(config, [], out=str(directory), log=lambda line: print(f"  {label}: {line}", flush=True))
    best = summary["best"]
    print(f"{label}: tuned {best['overrides']} val {100 * best['val_accuracy']:.2f}% ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return {"overrides": best["overrides"], "val_accuracy": best["val_accuracy"],
            "trials": len(summary["trials"]), "sweep_seconds": sum(t["seconds"] or 0 for t in summary["trials"])}


def _mean_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def with_values(raw: dict, values: dict) -> dict:
    return apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/fmnist-teacher")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--dataset", default="fashion-mnist", help="data.name (digits for a quick smoke run)")
    parser.add_argument("--work", default=None, help="where the runs go (default runs/bench-methods, -tuned with --tune)")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--views", type=int, default=4, help="teacher-cache views for logit methods")
    parser.add_argument("--methods", nargs="+", default=METHOD_ORDER, choices=METHOD_ORDER)
    parser.add_argument("--student", type=json.loads, default=STUDENT)
    parser.add_argument("--name", default=None, help="results file stem (default methods, methods-tuned with --tune)")
    parser.add_argument("--tune", action="store_true", help="tune the student alone and every method on validation first")
    parser.add_argument("--trials", type=int, default=8, help="--tune: sweep trials per method (and for the student alone)")
    parser.add_argument("--select-seed", type=int, default=100, help="--tune: the seed the sweeps train with")
    parser.add_argument("--defaults", default=str(ROOT / "results" / "methods.json"),
                        help="--tune: the untuned results to show beside the tuned ones")
    args = parser.parse_args(argv)
    args.work = str(Path(args.work or ("runs/bench-methods-tuned" if args.tune else "runs/bench-methods")).resolve())
    args.name = args.name or ("methods-tuned" if args.tune else "methods")
    started = time.perf_counter()
    work = Path(args.work)

    teacher_dir = Path(args.teacher).resolve()
    if not (teacher_dir / "report.json").is_file():
        overrides = [f"out={teacher_dir}", f"train.device={args.device}"] + ([f"data.root={args.data_root}"] if args.data_root else [])
        config = REPO / "configs" / ("fmnist-teacher.yaml" if args.dataset == "fashion-mnist" else f"{args.dataset}-teacher.yaml")
        run_train(load_config(config, overrides, TrainRunConfig), progress=False)
    teacher_row = report_row(teacher_dir)

    data = {"name": args.dataset, "root": args.data_root, "batch_size": 128, "augment": ["random-crop", "hflip"]}
    train = {"epochs": args.epochs, "lr": 3e-3, "device": args.device}
    tuned: dict[str, dict] = {}
    if args.tune:  # the student alone first: every method then trains with its lr and weight decay
        tuned["student alone"] = tuned_overrides(
            "student alone", method_config("ce", args.select_seed, args, teacher_dir, data, train, work / "tune" / "alone"),
            ALONE_SPACE, args.trials, work / "tune" / "alone")
        train = with_values({"train": train}, tuned["student alone"]["overrides"])["train"]
        for name in args.methods:
            raw = method_config(name, args.select_seed, args, teacher_dir, data, train, work / "tune" / name)
            tuned[name] = tuned_overrides(name, raw, TUNE_SPACE[name], args.trials, work / "tune" / name)

    runs: dict[str, list[dict]] = {}
    for seed in args.seeds:
        alone = validate_config({"seed": seed, "data": data, "train": train, "name": "alone", "role": "student",
                                 "model": args.student, "out": str(work / f"alone-seed{seed}")}, TrainRunConfig)
        runs.setdefault("student alone", []).append(run_or_reuse(f"student alone seed {seed}", run_train, alone))
        for name in args.methods:
            raw = method_config(name, seed, args, teacher_dir, data, train, work / f"{name}-seed{seed}")
            if name in tuned:
                raw = with_values(raw, tuned[name]["overrides"])
            runs.setdefault(name, []).append(run_or_reuse(f"{name} seed {seed}", run_distill,
                                                          validate_config(raw, DistillRunConfig)))

    alone_row = aggregate_seeds(runs["student alone"])
    defaults = untuned_results(args) if args.tune else {}
    summary = []
    for label, seeds in runs.items():
        agg = aggregate_seeds(seeds)
        gain = 100 * (agg["accuracy"] - alone_row["accuracy"])
        spread = 100 * max(agg["accuracy_std"], alone_row["accuracy_std"])
        summary.append({"method": label, "teacher_outputs": "-" if label == "student alone" else teacher_outputs(label, args.views),
                        "settings": SETTINGS.get(label, {}), "tuned": tuned.get(label), "mean": agg["accuracy"],
                        "std": agg["accuracy_std"], "per_seed": [r["accuracy"] for r in seeds], "gain_points": gain,
                        "beats_alone_beyond_spread": label != "student alone" and gain > spread,
                        "defaults": defaults.get(label),
                        "wall_seconds_per_run": _mean_known([r["wall_seconds"] for r in seeds])})
    result = {
        "benchmark": "methods-tuned" if args.tune else "methods",
        "command": "python benchmarks/methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
        "teacher": {"dir": str(teacher_dir), "accuracy": teacher_row["accuracy"], "params": teacher_row["params"]},
        "student": args.student, "data": data, "train": train, "epochs": args.epochs, "seeds": args.seeds,
        **({"trials": args.trials, "select_seed": args.select_seed, "tune_space": TUNE_SPACE, "alone_space": ALONE_SPACE}
           if args.tune else {}),
        "methods": summary, "seconds": time.perf_counter() - started,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = (tuned_lines if args.tune else default_lines)(result, args, teacher_row, teacher_dir)
    lines += ["", "Efficiency of the student (the same for every row):", "", format_table([alone_row | {"name": "student alone"}])]
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def untuned_results(args: argparse.Namespace) -> dict[str, dict]:
    """The untuned benchmark's row per method, when it measured this student, data set, budget and seeds."""
    path = Path(args.defaults)
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = (old.get("student") == args.student and old.get("data", {}).get("name") == args.dataset
            and old.get("train", {}).get("epochs") == args.epochs and old.get("seeds") == args.seeds)
    return {m["method"]: {"mean": m["mean"], "std": m["std"], "gain_points": m["gain_points"]}
            for m in old["methods"]} if same else {}


def _header(result: dict, args: argparse.Namespace, teacher_row: dict, teacher_dir: Path, train: str) -> str:
    teacher_text = f"{100 * teacher_row['accuracy']:.2f}% test, {teacher_row['params']:,} parameters"
    return (f"Command: `{result['command']}` on {result['device']} ({result['cpu_threads']} threads). Teacher: "
            f"`{teacher_dir}` ({teacher_text}); student: `{json.dumps(args.student)}`; {args.epochs} epochs, {train}, "
            f"batch 128, random-crop + hflip, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); test split; "
            f"{result['seconds'] / 60:.0f} minutes in all.")


def default_lines(result: dict, args: argparse.Namespace, teacher_row: dict, teacher_dir: Path) -> list[str]:
    return [
        f"# Distillation methods on {args.dataset} (one teacher/student pair, same budget)", "",
        _header(result, args, teacher_row, teacher_dir, "AdamW lr 3e-3 cosine"), "",
        "| method | teacher outputs | settings (else defaults) | test accuracy (mean ± std) | vs student alone | per seed | wall s / run |",
        "|---|---|---|---|---|---|---|",
        *[f"| {s['method']} | {s['teacher_outputs']} | {json.dumps(s['settings']) if s['settings'] else '-'} | "
          f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}% | {s['gain_points']:+.2f} | "
          f"{', '.join(f'{100 * a:.2f}' for a in s['per_seed'])} | {_seconds(s['wall_seconds_per_run'])} |" for s in result["methods"]],
    ]


def _values(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('distill.').removeprefix('train.')} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in values.items())


def tuned_lines(result: dict, args: argparse.Namespace, teacher_row: dict, teacher_dir: Path) -> list[str]:
    train = result["train"]
    beating = [s["method"] for s in result["methods"] if s["beats_alone_beyond_spread"]]
    sweep_minutes = sum((s["tuned"] or {}).get("sweep_seconds", 0) for s in result["methods"]) / 60

    def sweep_val(s: dict) -> str:
        return "-" if s["tuned"] is None else f"{100 * s['tuned']['val_accuracy']:.2f}%"

    def untuned(s: dict) -> str:
        d = s["defaults"]
        return "-" if d is None else f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f}% ({d['gain_points']:+.2f})"

    return [
        f"# Distillation methods on {args.dataset}, tuned on validation (one teacher/student pair, same budget)", "",
        _header(result, args, teacher_row, teacher_dir,
                f"AdamW lr {train['lr']:.3g} weight decay {train.get('weight_decay', 0):.3g} cosine (the student alone's tuned values)"),
        f"Each row's settings come from `kdistill sweep` ({args.trials} trials, TPE, median pruning) on the validation "
        f"split at seed {args.select_seed}: the student alone's lr and weight decay first, then each method's main weight "
        f"and temperature at those; sweeps took {sweep_minutes:.0f} minutes. The untuned column is "
        f"`{Path(args.defaults).name}` (the papers' defaults, lr 3e-3, no weight decay), where it measured the same setup.", "",
        "| method | teacher outputs | tuned values | val (sweep) | test accuracy (mean ± std) | vs tuned alone | beyond spread | untuned (vs its alone) | per seed | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {s['method']} | {s['teacher_outputs']} | {_values(s['tuned']['overrides']) if s['tuned'] else '-'} | "
          f"{sweep_val(s)} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f}% | "
          f"{s['gain_points']:+.2f} | {'yes' if s['beats_alone_beyond_spread'] else '-'} | {untuned(s)} | "
          f"{', '.join(f'{100 * a:.2f}' for a in s['per_seed'])} | {_seconds(s['wall_seconds_per_run'])} |" for s in result["methods"]],
        "", f"Methods that beat the tuned student alone by more than the larger seed std: **{len(beating)}** "
        f"({', '.join(beating) or 'none'}); target ≥ 4: **{'met' if len(beating) >= 4 else 'missed'}**.",
    ]


if __name__ == "__main__":
    sys.exit(main())
