"""Distillation speed: student alone vs live teacher vs teacher output cache, on Fashion-MNIST.

In one process, interleaved round by round (fair on a noisy machine), each mode trains a
fresh student for one epoch through the engine (`kdistill.training.engine.fit`, the code path of
`kdistill distill`); the training seconds of that epoch (validation excluded) are the
sample, and the median over `--repeats` rounds is reported with its ratio to the
student-alone epoch:

- `alone`: the student on labels only (`ce`), same augmentation;
- `live`: Hinton KD with the teacher run on every batch;
- `cached-vN`: Hinton KD reading logits (and each view's augmentation) from a cache of N views.

Also measured: one teacher inference pass over the training split (at the training batch,
with the same augmentation: what live distillation adds), the one-time cache builds, the
caches' size on disk, and the peak resident memory of the process during each mode.

Then (unless --skip-accuracy) the accuracy check: for each seed, the student alone, live KD
and cached KD (`--accuracy-views` views) trained through `run_train`/`run_distill` with the
same budget and augmentation; mean ± std test accuracy.

Run: `make bench-speed` or `python benchmarks/throughput.py [--repeats 5] [--skip-accuracy]`.
The teacher is `--teacher` (default runs/fmnist-teacher); if it is missing it is trained
first from configs/fmnist-teacher.yaml.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.config import CacheConfig, DataConfig, DistillRunConfig, TrainConfig, TrainRunConfig, load_config, validate_config
from kdistill.data import load_dataset
from kdistill.data.augment import build_augmentation
from kdistill.data.splits import iterate_batches
from kdistill.training.engine import fit, resolve_device, seed_everything
from kdistill.methods import build_method
from kdistill.models import build_model
from kdistill.evaluate.report import aggregate_seeds, format_table
from kdistill.runner import run_distill, run_train
from kdistill.training.teacher_cache import cache_fingerprint, open_or_build_cache
from kdistill.training.teachers import load_teacher

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
STUDENT = {"name": "cnn", "channels": [8, 16, 32]}  # the vision_kd student, 2% of the teacher
AUGMENT = ["random-crop", "hflip"]


class PeakRSS:
    """Peak resident set size (MB) of this process while the block runs, sampled every 20 ms from /proc."""

    def __enter__(self) -> "PeakRSS":
        self.peak_mb = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())


def _median_summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/fmnist-teacher", help="teacher run directory (trained if missing)")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files (default: the loader's search order)")
    parser.add_argument("--work", default="runs/bench-speed", help="where the runs and caches go")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where throughput.{json,md} go")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per mode (interleaved rounds)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 10], help="cache views to time")
    parser.add_argument("--student", type=json.loads, default=STUDENT, help="zoo spec as JSON")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--skip-accuracy", action="store_true", help="timings only")
    parser.add_argument("--accuracy-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--accuracy-epochs", type=int, default=10)
    parser.add_argument("--accuracy-views", type=int, default=4)
    parser.add_argument("--name", default="throughput", help="results file stem")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)

    teacher_dir = Path(args.teacher)
    if not (teacher_dir / "report.json").is_file():
        print(f"training the teacher into {teacher_dir} (configs/fmnist-teacher.yaml)", flush=True)
        overrides = [f"out={teacher_dir}", f"train.device={args.device}"] + ([f"data.root={args.data_root}"] if args.data_root else [])
        run_train(load_config(REPO / "configs" / "fmnist-teacher.yaml", overrides, TrainRunConfig), progress=False)

    data_cfg = {"name": "fashion-mnist", "root": args.data_root, "batch_size": args.batch_size, "augment": AUGMENT}
    data = load_dataset(DataConfig(**data_cfg))
    augment = build_augmentation(AUGMENT, data.input_shape)
    teacher = load_teacher(teacher_dir).to(device)
    train_cfg = TrainConfig(epochs=1, lr=3e-3, device=args.device)
    kd_params = {"temperature": args.temperature, "alpha": args.alpha}

    # One teacher inference pass over the training split, as live distillation runs it.
    def teacher_pass() -> float:
        generator = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for batch in iterate_batches(data.train, args.batch_size, shuffle=True, generator=generator):
            teacher(augment(batch.inputs, generator).to(device))
        return time.perf_counter() - t0

    teacher_pass()  # warm-up
    teacher_seconds = [teacher_pass() for _ in range(args.repeats)]

    # The one-time cache builds.
    caches, builds = {}, {}
    for views in args.views:
        ccfg = CacheConfig(views=views)
        fingerprint = cache_fingerprint(teacher, data.name, data.train, data.classes, augment, ccfg)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            cache, _ = open_or_build_cache(work / f"cache-v{views}", teacher, data.train, data.num_classes, augment, ccfg,
                                           fingerprint, device, rebuild=True, progress=False)
            seconds = time.perf_counter() - t0
        caches[views] = cache
        builds[views] = {"seconds": seconds, "size_mb": cache.size_bytes() / 1e6, "peak_rss_mb": rss.peak_mb,
                         "teacher_batch": ccfg.batch_size}
        print(f"cache build, {views} view(s): {seconds:.1f} s, {builds[views]['size_mb']:.1f} MB", flush=True)

    modes: dict[str, Callable[[Path], float]] = {}

    def epoch(method_name: str, params: dict, cache=None, use_teacher: bool = False) -> Callable[[Path], float]:
        def run(run_dir: Path) -> float:
            seed_everything(0)
            student = build_model(args.student["name"], {k: v for k, v in args.student.items() if k != "name"},
                                  data.input_shape, data.num_classes)
            method = build_method(method_name, params)
            fit(student, method, data, train_cfg, run_dir=run_dir, seed=0, batch_size=args.batch_size,
                teacher=teacher if use_teacher else None, augment=augment, cache=cache, progress=False)
            return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]
        return run

    modes["alone"] = epoch("ce", {})
    modes["live"] = epoch("kd", kd_params, use_teacher=True)
    for views, cache in caches.items():
        modes[f"cached-v{views}"] = epoch("kd", kd_params, cache=cache)

    seconds: dict[str, list[float]] = {m: [] for m in modes}
    peak: dict[str, float] = {m: 0.0 for m in modes}
    for r in range(args.repeats + 1):  # round 0 warms up and is discarded
        for mode, run in modes.items():
            run_dir = work / f"{mode}-round{r}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            with PeakRSS() as rss:
                value = run(run_dir)
            if r > 0:
                seconds[mode].append(value)
                peak[mode] = max(peak[mode], rss.peak_mb)
        print(f"round {r}: " + " ".join(f"{m}={seconds[m][-1]:.2f}s" for m in modes if r > 0 and seconds[m]), flush=True)

    alone = statistics.median(seconds["alone"])
    teacher_median = statistics.median(teacher_seconds)
    timing_rows = []
    for mode in modes:
        median = statistics.median(seconds[mode])
        timing_rows.append({"mode": mode, "epoch_seconds": _median_summary(seconds[mode]), "ratio_to_alone": median / alone,
                            "peak_rss_mb": peak[mode]})
    live = statistics.median(seconds["live"])
    targets = {
        "cached_over_alone": {f"cached-v{v}": statistics.median(seconds[f"cached-v{v}"]) / alone for v in args.views},
        "cached_limit": 1.10,
        "live_over_alone_plus_teacher_pass": live / (alone + teacher_median),
        "live_limit": 1.10,
    }

    accuracy = None
    if not args.skip_accuracy:
        accuracy = _accuracy_check(args, data_cfg, teacher_dir, work)

    result = {
        "benchmark": "throughput",
        "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "teacher": {"dir": str(teacher_dir), "params": sum(p.numel() for p in teacher.model.parameters()),
                    "spec": teacher.spec.get("kwargs")},
        "student": args.student,
        "data": {"name": data.name, "train_samples": len(data.train), "batch_size": args.batch_size, "augment": AUGMENT},
        "repeats": args.repeats,
        "teacher_inference_pass_seconds": _median_summary(teacher_seconds),
        "cache_builds": builds,
        "epochs": timing_rows,
        "targets": targets,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - started,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = _markdown(result)
    (results / f"{args.name}.md").write_text(markdown)
    print(markdown)
    return 0


def _accuracy_check(args: argparse.Namespace, data_cfg: dict, teacher_dir: Path, work: Path) -> dict[str, Any]:
    """Student alone, live KD and cached KD (accuracy_views) per seed, same budget and augmentation."""
    train = {"epochs": args.accuracy_epochs, "lr": 3e-3, "device": args.device}
    distill = {"method": "kd", "temperature": args.temperature, "alpha": args.alpha}
    rows: dict[str, list[dict]] = {"alone": [], "live": [], "cached": []}
    for seed in args.accuracy_seeds:
        base = {"seed": seed, "data": data_cfg, "train": train}
        runs = {
            "alone": (run_train, validate_config({**base, "name": "alone", "role": "student", "model": args.student,
                                                  "out": str(work / f"acc-alone-seed{seed}")}, TrainRunConfig)),
            "live": (run_distill, validate_config({**base, "name": "live", "teacher": str(teacher_dir), "student": args.student,
                                                   "distill": distill, "out": str(work / f"acc-live-seed{seed}")}, DistillRunConfig)),
            "cached": (run_distill, validate_config({**base, "name": "cached", "teacher": str(teacher_dir), "student": args.student,
                                                     "distill": {**distill, "teacher_outputs": "cached",
                                                                 "cache": {"views": args.accuracy_views, "dir": str(work / f"acc-cache-v{args.accuracy_views}")}},
                                                     "out": str(work / f"acc-cached-seed{seed}")}, DistillRunConfig)),
        }
        for mode, (fn, cfg) in runs.items():
            t0 = time.perf_counter()
            row = fn(cfg, overwrite=True, progress=False)
            row["train_seconds"] = time.perf_counter() - t0
            rows[mode].append(row)
            print(f"accuracy {mode} seed {seed}: {100 * row['accuracy']:.2f}% ({row['train_seconds']:.0f} s)", flush=True)
    summary = {mode: aggregate_seeds(r) for mode, r in rows.items()}
    return {
        "epochs": args.accuracy_epochs, "views": args.accuracy_views, "seeds": args.accuracy_seeds, "distill": distill,
        "per_seed": {mode: [r["accuracy"] for r in rs] for mode, rs in rows.items()},
        "wall_seconds_per_run": {mode: statistics.mean(r["train_seconds"] for r in rs) for mode, rs in rows.items()},
        "mean": {mode: s["accuracy"] for mode, s in summary.items()},
        "std": {mode: s["accuracy_std"] for mode, s in summary.items()},
        "cached_minus_live_points": 100 * (summary["cached"]["accuracy"] - summary["live"]["accuracy"]),
        "target_points": 0.3,
        "table": format_table([{**summary["alone"], "name": "student alone"}, {**summary["live"], "name": "live KD"},
                               {**summary["cached"], "name": f"cached KD ({args.accuracy_views} views)"}]),
    }


def _markdown(result: dict[str, Any]) -> str:
    t = result["targets"]
    lines = [
        "# Distillation throughput: student alone vs live teacher vs teacher output cache", "",
        f"Command: `{result['command']}` on {result['device']} ({result['cpu_threads']} threads), torch {result['torch']}. "
        f"Fashion-MNIST, {result['data']['train_samples']} training samples, batch {result['data']['batch_size']}, "
        f"augmentation {' + '.join(result['data']['augment'])} in every mode. Teacher: CNN, "
        f"{result['teacher']['params']:,} parameters; student: `{json.dumps(result['student'])}`. "
        f"Median of {result['repeats']} one-epoch runs per mode, interleaved round by round (a warm-up round discarded); "
        "training seconds only (validation excluded).", "",
        "| mode | epoch (s), median [min, max] | × student alone | peak RSS (MB) |", "|---|---|---|---|",
    ]
    for row in result["epochs"]:
        e = row["epoch_seconds"]
        lines.append(f"| {row['mode']} | {e['median']:.2f} [{e['min']:.2f}, {e['max']:.2f}] | {row['ratio_to_alone']:.2f} | {row['peak_rss_mb']:.0f} |")
    tp = result["teacher_inference_pass_seconds"]
    lines += ["", f"One teacher inference pass over the training split (batch {result['data']['batch_size']}, augmented): "
                  f"{tp['median']:.2f} s (median).", "",
              "| cache | one-time build (s) | size on disk (MB) | teacher batch |", "|---|---|---|---|"]
    for views, b in result["cache_builds"].items():
        lines.append(f"| {views} view(s) | {b['seconds']:.1f} | {b['size_mb']:.1f} | {b['teacher_batch']} |")
    cached = ", ".join(f"{k} {v:.2f}×" for k, v in t["cached_over_alone"].items())
    ok_cached = all(v <= t["cached_limit"] for v in t["cached_over_alone"].values())
    ok_live = t["live_over_alone_plus_teacher_pass"] <= t["live_limit"]
    lines += ["", "Targets:", "",
              f"- cached epoch ≤ {t['cached_limit']:.2f} × student-alone epoch: {cached} — **{'met' if ok_cached else 'not met'}**",
              f"- live epoch ≤ {t['live_limit']:.2f} × (student-alone epoch + one teacher pass): "
              f"{t['live_over_alone_plus_teacher_pass']:.2f}× — **{'met' if ok_live else 'not met'}**"]
    acc = result.get("accuracy")
    if acc:
        ok_acc = abs(acc["cached_minus_live_points"]) <= acc["target_points"]
        lines += ["", f"## Accuracy: cached ({acc['views']} views) vs live distillation", "",
                  f"{len(acc['seeds'])} seeds, {acc['epochs']} epochs each, KD T={acc['distill']['temperature']:g} "
                  f"alpha={acc['distill']['alpha']:g}, same augmentation; test split.", "",
                  acc["table"], "",
                  f"Cached − live: **{acc['cached_minus_live_points']:+.2f} points** (target: within ±{acc['target_points']}) — "
                  f"**{'met' if ok_acc else 'not met'}**. Mean wall time per run (training + report): "
                  + ", ".join(f"{m} {s:.0f} s" for m, s in acc["wall_seconds_per_run"].items()) + ".", "",
                  "| seed | student alone | live KD | cached KD |", "|---|---|---|---|",
                  *[f"| {s} | {100 * a:.2f}% | {100 * l:.2f}% | {100 * c:.2f}% |"
                    for s, a, l, c in zip(acc["seeds"], acc["per_seed"]["alone"], acc["per_seed"]["live"], acc["per_seed"]["cached"])]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
