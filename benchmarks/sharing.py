"""Two kdistill runs sharing one machine: each epoch's time beside another run vs alone (issue 20, part 4).

For each thread setting, one run of the config trains alone, then two identical runs are started together;
the ratio of their median epoch time to the lone run's is the slowdown (2.0x is a fair half of the machine;
the target is <= 2.2x). The lone run's time under each setting against libgomp's default says whether the
setting costs single-run speed. Runs go through the real CLI (`python -m kdistill train`), so the thread
policy the CLI sets is the one measured.

Settings (N = torch's default thread count here, one per core):
- `pinned`: train.threads=N, what every run did before kdistill.training.threads (libgomp's default waiting: spin);
- `pinned+passive`: the same with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning);
- `auto`: kdistill's default, train.threads=auto (each run takes N / live kdistill runs, per epoch);
- `1-thread`: train.threads=1.

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


def _settings(default_threads: int) -> dict[str, tuple[dict, list[str]]]:
    pinned = [f"train.threads={default_threads}"]
    return {"pinned": ({}, pinned), "pinned+passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, pinned), "auto": ({}, []),
            "1-thread": ({}, ["train.threads=1"])}


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


def _measure(config: Path, work: Path, name: str, env: dict, overrides: list[str]) -> dict:
    """One run alone, then two started together: their epoch times (s)."""
    _wait([_start(config, work / f"{name}-alone", env, overrides)])
    alone = _epoch_seconds(work / f"{name}-alone")
    _wait([_start(config, work / f"{name}-pair{i}", env, overrides) for i in (0, 1)])
    return {"alone_epoch_s": alone, "pair_epoch_s": [_epoch_seconds(work / f"{name}-pair{i}") for i in (0, 1)]}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every setting (ratios are taken per round)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-sharing"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(_config(work / "run", args), sort_keys=False))

    import torch

    settings = _settings(torch.get_num_threads())
    rounds: list[dict[str, dict]] = []
    for r in range(args.repeats):
        measured = {}
        for name, (env, overrides) in settings.items():
            t0 = time.perf_counter()
            measured[name] = m = _measure(config, work, name, env, overrides)
            print(f"round {r + 1}, {name}: alone {statistics.median(m['alone_epoch_s']):.2f} s/epoch, together "
                  f"{' / '.join(f'{statistics.median(p):.2f}' for p in m['pair_epoch_s'])} s/epoch "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        rounds.append(measured)

    rows = []
    for name, (env, overrides) in settings.items():
        alone = [statistics.median(rd[name]["alone_epoch_s"]) for rd in rounds]
        pairs = [statistics.median(p) for rd in rounds for p in rd[name]["pair_epoch_s"]]
        pinned = [statistics.median(rd["pinned"]["alone_epoch_s"]) for rd in rounds]  # the old single-run speed
        rows.append({"setting": name, "env": env, "overrides": overrides, "rounds": [rd[name] for rd in rounds],
                     "alone_median_s": statistics.median(alone), "pair_median_s": statistics.median(pairs),
                     "alone_vs_pinned": [a / p for a, p in zip(alone, pinned)],
                     "slowdown": [statistics.median(q) / pinned[i] for i, rd in enumerate(rounds)
                                  for q in rd[name]["pair_epoch_s"]],
                     "slowdown_vs_own_alone": [statistics.median(q) / alone[i] for i, rd in enumerate(rounds)
                                               for q in rd[name]["pair_epoch_s"]]})

    meta = {"command": "python benchmarks/sharing.py " + " ".join(sys.argv[1:]), "data": args.data,
            "default_threads": torch.get_num_threads(), "train_samples": args.train_samples, "epochs": args.epochs,
            "repeats": args.repeats, "model": "cnn [16, 32, 32]", "batch_size": 128, "cpus": os.cpu_count(),
            "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sharing.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Two runs on one machine ({args.data}, {args.train_samples} training images, {args.epochs} epochs, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.repeats} rounds)", "",
             f"`{meta['command']}`. Median epoch time (training only) of one run alone and of each of two identical "
             "runs started together, in each round. The slowdown is together / the pinned run alone in the same round "
             "(the old single-run speed): 2.0x is a fair half of the machine, the target is <= 2.2x. `alone vs "
             "pinned` is what the setting costs a run that has the machine to itself. Ratios: median [min-max] over "
             "rounds (and both runs of each pair).", "",
             "| setting | alone s/epoch | alone vs pinned | together s/epoch | slowdown | slowdown vs its own alone |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['alone_median_s']:.2f} | {_spread(row['alone_vs_pinned'])} | "
                     f"{row['pair_median_s']:.2f} | {_spread(row['slowdown'])} | {_spread(row['slowdown_vs_own_alone'])} |")
    (RESULTS / "sharing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
