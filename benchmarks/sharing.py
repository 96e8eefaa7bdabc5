"""Two kdistill runs sharing one machine: each epoch's time beside another run vs alone (issue 20, part 4).

For each thread setting, one run of the config trains alone, then two identical runs are started together;
the ratio of their median epoch time to the lone run's is the slowdown (2.0x is a fair half of the machine;
the target is <= 2.2x). The lone run's time under each setting against libgomp's default says whether the
setting costs single-run speed. Runs go through the real CLI (`python -m kdistill train`), so the thread
policy the CLI sets is the one measured.

Settings:
- `spin` (the old behaviour): OMP_WAIT_POLICY set empty, so libgomp spins as it does by default;
- `kdistill`: what `kdistill` does unless told otherwise (OMP_WAIT_POLICY=PASSIVE, train.threads=auto);
- `1-thread`: the kdistill default with train.threads=1.

    python benchmarks/sharing.py                 # Fashion-MNIST, 10,000 training images, 4 epochs
    python benchmarks/sharing.py --epochs 2 --train-samples 3000

Run it alone on the machine. Results: benchmarks/results/sharing.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {"spin": ({"OMP_WAIT_POLICY": ""}, []), "kdistill": ({}, []), "1-thread": ({}, ["train.threads=1"])}


def _config(out: Path, args: argparse.Namespace) -> dict:
    return {"name": "sharing", "seed": 0, "role": "student",
            "data": {"name": args.data, "batch_size": 128, "train_samples": args.train_samples},
            "model": {"name": "cnn", "channels": [16, 32, 32]},
            "train": {"epochs": args.epochs, "lr": 3e-3, "device": "cpu"}, "out": str(out)}


def _start(config: Path, out: Path, env_extra: dict, overrides: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env_extra
    return subprocess.Popen([sys.executable, "-m", "kdistill", "train", str(config), f"out={out}", "--overwrite", "-q",
                             *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _epoch_seconds(out: Path) -> list[float]:
    return [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a run failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-sharing"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(_config(work / "run", args), sort_keys=False))

    rows = []
    for name, (env, overrides) in SETTINGS.items():
        t0 = time.perf_counter()
        _wait([_start(config, work / f"{name}-alone", env, overrides)])
        alone = _epoch_seconds(work / f"{name}-alone")
        _wait([_start(config, work / f"{name}-pair{i}", env, overrides) for i in (0, 1)])
        pair = [_epoch_seconds(work / f"{name}-pair{i}") for i in (0, 1)]
        row = {"setting": name, "env": env, "overrides": overrides, "alone_epoch_s": alone, "pair_epoch_s": pair,
               "alone_median_s": statistics.median(alone),
               "pair_median_s": [statistics.median(p) for p in pair]}
        row["slowdown"] = [m / row["alone_median_s"] for m in row["pair_median_s"]]
        rows.append(row)
        print(f"{name}: alone {row['alone_median_s']:.2f} s/epoch, together {row['pair_median_s'][0]:.2f} / "
              f"{row['pair_median_s'][1]:.2f} s/epoch -> {row['slowdown'][0]:.2f}x / {row['slowdown'][1]:.2f}x "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    base = rows[0]["alone_median_s"]
    for row in rows:
        row["alone_vs_spin"] = row["alone_median_s"] / base

    import torch

    meta = {"command": "python benchmarks/sharing.py " + " ".join(sys.argv[1:]), "data": args.data,
            "train_samples": args.train_samples, "epochs": args.epochs, "model": "cnn [16, 32, 32]", "batch_size": 128,
            "cpus": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sharing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Two runs on one machine ({args.data}, {args.train_samples} training images, {args.epochs} epochs, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__})", "",
             f"`{meta['command']}`. Median epoch time (training only) of one run alone and of each of two identical "
             "runs started together; the slowdown is together / alone (2.0x is a fair half of the machine; target "
             "<= 2.2x). `alone vs spin` is the lone run's speed cost of the setting.", "",
             "| setting | alone s/epoch | together s/epoch | slowdown | alone vs spin |", "|---|---|---|---|---|"]
    for row in rows:
        together = " / ".join(f"{m:.2f}" for m in row["pair_median_s"])
        slow = " / ".join(f"{s:.2f}x" for s in row["slowdown"])
        lines.append(f"| {row['setting']} | {row['alone_median_s']:.2f} | {together} | {slow} | {row['alone_vs_spin']:.2f}x |")
    (RESULTS / "sharing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
