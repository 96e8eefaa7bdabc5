"""Streaming images from disk (issue 16): memory that does not grow with the data set, and epoch speed.

The script writes synthetic image folders (64x64 RGB PNGs, 10 classes; each class a coloured pattern
plus noise, so there is something to learn) under `--work` (outside git), then measures:

1. **Peak memory of a streamed distillation run, at two folder sizes** (`--sizes`, default 20,000 and
   100,000 training images): `kdistill distill` in a subprocess, `data.in_memory: false`, Hinton KD from
   a cached teacher (the cache built first by `kdistill cache-teacher`, not timed), one epoch; the memory
   of the whole process tree (main process + DataLoader workers) is sampled every 0.1 s, as the sum of
   PSS (shared pages divided among the processes mapping them: what the tree takes) and, for comparison,
   the sum of RSS (which counts the pages forked workers share with the main process once per process).
2. **Streamed vs in-memory epoch time** on the smaller folder (which fits in memory both ways): the same
   student-alone epoch (`kdistill train`, 1 epoch) with `data.in_memory: true` and `false`, interleaved over
   `--rounds`; the engine's own samples/s of the epoch (validation excluded).
3. **Samples/s vs `data.workers`** (0, 1, 2) for the streamed epoch on the smaller folder.
4. **Several stored views per decoded image (FKD)** on the smaller folder, streamed, random crop and flip:
   a student-alone epoch (`kdistill train`) against cached Hinton KD epochs (a 4-view cache) with
   `distill.cache.views_per_image` 1, 2 and 4, interleaved over `--rounds`. With K views per image an
   epoch is K x the training split from one read of each image, so the comparison is time per trained
   sample (1 / the engine's samples/s): the distilled student's cost over the student alone's.

Run: `make bench-streaming` or `python benchmarks/streaming.py [--sizes 20000 100000] [--rounds 3]`.
Results: benchmarks/results/streaming.{json,md}. The teacher (a small CNN) is trained for one epoch on
the smaller folder first; only memory and speed are measured here, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent
CLASSES = 10
SIZE = 64
STUDENT = {"name": "cnn", "channels": [8, 16]}
TEACHER = {"name": "cnn", "channels": [16, 32, 64]}


def write_folder(root: Path, n_train: int, n_val: int = 500, seed: int = 0) -> Path:
    """root/{train,val}/<class>/<i>.png, written once (a `.complete` marker says it was finished)."""
    from PIL import Image

    if (root / ".complete").is_file():
        return root
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (CLASSES, 3))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(CLASSES):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            c = i % CLASSES
            stripes = ((xx * (c + 1) + yy * (CLASSES - c)) // 8) % 2
            pixels = palette[c] * stripes[..., None] * 0.6 + rng.integers(0, 100, (SIZE, SIZE, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / split / f"class{c}" / f"{i:06d}.png")
    (root / ".complete").write_text("done\n")
    return root


def kdistill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdistill", *args], capture_output=True, text=True)


def tree_memory(process: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, RSS of the main process) over a process and its children. Forked DataLoader
    workers share the parent's pages, which RSS counts once per process; PSS divides each shared page among
    the processes that map it, so the PSS sum is the memory the tree really takes."""
    rss = pss = 0
    main = 0
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:  # the run has just ended
        return 0, 0, 0
    for p in tree:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        main = info.rss if p.pid == process.pid else main
    return rss, pss, main


def peak_memory_of(command: list[str]) -> tuple[dict[str, int], subprocess.CompletedProcess]:
    """Run `command`, sampling the memory of it and its children every 0.1 s; (peaks in bytes, result)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, done = psutil.Process(proc.pid), threading.Event()
    peak = {"rss_sum": 0, "pss_sum": 0, "main_rss": 0}

    def sample() -> None:
        while not done.is_set():
            for key, value in zip(peak, tree_memory(watched)):
                peak[key] = max(peak[key], value)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    return peak, subprocess.CompletedProcess(command, proc.returncode, out, err)


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def data(root: Path, **more) -> dict:
    return {"name": "imagefolder", "root": str(root), "batch_size": 256, **more}


def epoch_samples_per_s(work: Path, name: str, root: Path, **more) -> float:
    raw = {"name": name, "seed": 0, "data": data(root, **more), "model": STUDENT, "role": "student",
           "train": {"epochs": 1, "lr": 3e-3}, "out": str(work / "runs" / name)}
    return samples_per_s_of("train", work, name, raw)


def samples_per_s_of(command: str, work: Path, name: str, raw: dict) -> float:
    """Run `kdistill COMMAND` on the config `raw` (one epoch); the engine's samples/s of that epoch."""
    result = kdistill(command, str(write_config(work / f"{name}.yaml", raw)), "--overwrite", "-q")
    if result.returncode:
        raise SystemExit(result.stderr)
    line = json.loads((work / "runs" / name / "metrics.jsonl").read_text().splitlines()[-1])
    return float(line["samples_per_s"])


FKD_VIEWS = 4
AUGMENT = ["random-crop", "hflip"]


def views_per_image_speed(work: Path, root: Path, teacher_dir: Path, rounds: int, workers: int) -> dict[str, list[float]]:
    """Samples/s of a streamed student-alone epoch and of streamed cached KD epochs with 1, 2 and 4 stored views
    per decoded image, interleaved over `rounds`."""
    def kd(per_image: int) -> dict:
        return {"name": f"fkd-{per_image}", "seed": 0, "data": data(root, in_memory=False, workers=workers, augment=AUGMENT),
                "teacher": str(teacher_dir), "student": STUDENT,
                "distill": {"method": "kd", "teacher_outputs": "cached",
                            "cache": {"views": FKD_VIEWS, "views_per_image": per_image, "dir": str(work / "cache-fkd")}},
                "train": {"epochs": 1, "lr": 3e-3}, "out": str(work / "runs" / f"fkd-{per_image}")}

    built = kdistill("cache-teacher", str(write_config(work / "fkd-1.yaml", kd(1))))
    if built.returncode:
        raise SystemExit(built.stderr)
    speed: dict[str, list[float]] = {"alone": [], **{f"kd, {k} view(s) per image": [] for k in (1, 2, 4)}}
    for round_ in range(rounds):
        speed["alone"].append(epoch_samples_per_s(work, "fkd-alone", root, in_memory=False, workers=workers,
                                                  augment=AUGMENT))
        for k in (1, 2, 4):
            speed[f"kd, {k} view(s) per image"].append(samples_per_s_of("distill", work, f"fkd-{k}", kd(k)))
        print(f"round {round_ + 1}: " + ", ".join(f"{name} {v[-1]:.0f}/s" for name, v in speed.items()), file=sys.stderr)
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="runs/bench-streaming")
    parser.add_argument("--results", default=str(ROOT / "results" / "streaming"))
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders = {n: write_folder(work / f"images-{n}", n) for n in args.sizes}
    small = folders[min(args.sizes)]
    cpus = os.cpu_count() or 1

    teacher_dir = work / "runs" / "teacher"
    if not (teacher_dir / "report.json").is_file():
        raw = {"name": "teacher", "seed": 0, "data": data(small, in_memory=False), "model": TEACHER,
               "train": {"epochs": 1, "lr": 3e-3}, "out": str(teacher_dir)}
        result = kdistill("train", str(write_config(work / "teacher.yaml", raw)), "--overwrite", "-q")
        if result.returncode:
            raise SystemExit(result.stderr)

    memory = []
    for n, folder in folders.items():
        raw = {"name": f"kd-{n}", "seed": 0, "data": data(folder, in_memory=False), "teacher": str(teacher_dir),
               "student": STUDENT, "distill": {"method": "kd", "teacher_outputs": "cached",
                                               "cache": {"dir": str(work / f"cache-{n}")}},
               "train": {"epochs": 1, "lr": 3e-3}, "out": str(work / "runs" / f"kd-{n}")}
        config = write_config(work / f"kd-{n}.yaml", raw)
        built = kdistill("cache-teacher", str(config))
        if built.returncode:
            raise SystemExit(built.stderr)
        peak, result = peak_memory_of([sys.executable, "-m", "kdistill", "distill", str(config), "--overwrite", "-q"])
        if result.returncode:
            raise SystemExit(result.stderr)
        line = json.loads((work / "runs" / f"kd-{n}" / "metrics.jsonl").read_text().splitlines()[-1])
        memory.append({"train_images": n, **{f"peak_{k}_mb": v / 2**20 for k, v in peak.items()},
                       "samples_per_s": line["samples_per_s"], "decoded_mb_if_in_memory": n * 3 * SIZE * SIZE * 4 / 2**20})
        print(f"streamed KD, {n} images: peak PSS {peak['pss_sum'] / 2**20:.0f} MB (RSS summed "
              f"{peak['rss_sum'] / 2**20:.0f} MB), {line['samples_per_s']:.0f} samples/s", file=sys.stderr)

    speed: dict[str, list[float]] = {"in_memory": [], "streamed": []}
    for round_ in range(args.rounds):
        speed["in_memory"].append(epoch_samples_per_s(work, "alone-memory", small, in_memory=True))
        speed["streamed"].append(epoch_samples_per_s(work, "alone-streamed", small, in_memory=False, workers=cpus))
        print(f"round {round_ + 1}: in memory {speed['in_memory'][-1]:.0f}/s, streamed {speed['streamed'][-1]:.0f}/s",
              file=sys.stderr)
    ratio = statistics.median(speed["in_memory"]) / statistics.median(speed["streamed"])

    by_workers = {}
    for workers in (0, 1, 2):
        by_workers[workers] = epoch_samples_per_s(work, f"alone-w{workers}", small, in_memory=False, workers=workers)
        print(f"workers {workers}: {by_workers[workers]:.0f}/s", file=sys.stderr)

    fkd = views_per_image_speed(work, small, teacher_dir, args.rounds, cpus)
    alone = statistics.median(fkd["alone"])
    fkd_ratio = {name: alone / statistics.median(values) for name, values in fkd.items() if name != "alone"}

    machine = {"cpus": cpus, "python": platform.python_version()}
    result = {"command": " ".join(["python", "benchmarks/streaming.py", *sys.argv[1:]]), "machine": machine,
              "memory": memory, "epoch": {"samples_per_s": speed, "streamed_time_over_in_memory": ratio,
                                          "train_images": min(args.sizes)},
              "workers": by_workers,
              "views_per_image": {"samples_per_s": fkd, "time_per_sample_over_alone": fkd_ratio,
                                  "cache_views": FKD_VIEWS, "augment": AUGMENT, "train_images": min(args.sizes)}}
    Path(args.results + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Streaming images from disk (CPU, {cpus} cores)", "", f"`{result['command']}`; synthetic 64x64 RGB PNGs, "
             f"10 classes, student `cnn {STUDENT['channels']}`, batch 256.", "",
             "## Peak memory of a streamed distillation epoch (cached teacher, main process + workers)", "",
             "| training images | decoded size if held in memory | peak PSS, all processes | peak RSS summed "
             "(counts shared pages once per worker) | main process RSS | samples/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['train_images']:,} | {m['decoded_mb_if_in_memory']:,.0f} MB | {m['peak_pss_sum_mb']:,.0f} MB | "
              f"{m['peak_rss_sum_mb']:,.0f} MB | {m['peak_main_rss_mb']:,.0f} MB | {m['samples_per_s']:,.0f} |" for m in memory]
    lines += ["", f"## Epoch time, streamed vs in memory ({min(args.sizes):,} images, student alone, {args.rounds} "
              "interleaved rounds, median)", "",
              "| path | samples/s (median) | all rounds |", "|---|---|---|",
              f"| in memory | {statistics.median(speed['in_memory']):,.0f} | {', '.join(f'{v:,.0f}' for v in speed['in_memory'])} |",
              f"| streamed ({cpus} workers) | {statistics.median(speed['streamed']):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in speed['streamed'])} |", "",
              f"Streamed epoch time / in-memory epoch time: **{ratio:.2f}×** (target ≤ 1.3×).", "",
              "## Samples/s vs data.workers (streamed, student alone)", "", "| workers | samples/s |", "|---|---|"]
    lines += [f"| {w} | {v:,.0f} |" for w, v in by_workers.items()]
    lines += ["", f"## Several stored views per decoded image (FKD; {min(args.sizes):,} images streamed, {cpus} workers, "
              f"random crop + flip, {FKD_VIEWS}-view cache, {args.rounds} interleaved rounds, median)", "",
              "An epoch with K views per image trains on K x the images from one read of each, so the unit is the "
              "time per trained sample.", "",
              "| run | samples/s (median) | all rounds | time per sample / student alone |", "|---|---|---|---|"]
    lines += [f"| {name} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | "
              + ("1 |" if name == "alone" else f"**{fkd_ratio[name]:.2f}×** |") for name, values in fkd.items()]
    lines += ["", "Goal: a cached distillation epoch costs ≤ 1.0× the student alone's per sample (stretch ≤ 0.9×)."]
    Path(args.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
