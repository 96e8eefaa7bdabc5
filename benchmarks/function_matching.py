"""Consistent and patient teaching on Fashion-MNIST (issue 19's third row): function matching with mixup
views held in the teacher cache, against the same student trained alone.

Beyer et al. (CVPR 2022, "Knowledge distillation: A good teacher is patient and consistent") distil on
aggressively mixed images that teacher and student see *alike*, for a long schedule, with the KL to the
teacher as the only loss (T = 1, no labels). Here the teacher's logits on each stored view (crop, flip,
mixup partner and lambda) come from the teacher cache, so a long schedule costs what training the student
alone costs. Rows, each over `--seeds` (test accuracy, mean ± std):

- the student alone, random-crop + hflip (kdistill's vision recipe);
- the student alone, random-crop + hflip + mixup (the same images without the teacher: does mixing alone help?);
- function matching: random-crop + hflip + mixup, cached (`--views` views per image), KD at T = 1, alpha = 0.

The teacher is a finished all-labels Fashion-MNIST run (`--teacher`, default the one benchmarks/transfer.py
trains). Runs that finished with the same config are reused.

Run: `make bench-fm` or `python benchmarks/function_matching.py [--epochs 40] [--seeds 0 1 2]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from kdistill.config import DistillRunConfig, TrainRunConfig, validate_config
from kdistill.evaluate.report import aggregate_seeds, format_table, report_row
from kdistill.runner import run_distill, run_train
from runs import run_or_reuse
from transfer import all_labels_teacher

ROOT = Path(__file__).resolve().parent
STUDENT = {"name": "cnn", "channels": [16, 32, 32]}
TARGET = 1.0  # points over the student alone, beyond the seed spread (issue 19)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None,
                        help="a finished teacher run (default: benchmarks/transfer.py's all-labels teacher, "
                             "trained here into --transfer-work when it has not finished)")
    parser.add_argument("--transfer-work", default="runs/bench-transfer", help="where benchmarks/transfer.py's runs are")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work", default="runs/bench-fm")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--name", default="function_matching")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=1.0, help="mixup's Beta(alpha, alpha)")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()  # absolute: a run is reused only when its config, out path included, matches
    if args.teacher is None:
        teacher_cfg = all_labels_teacher(Path(args.transfer_work).resolve(), args.data_root, device=args.device)
        run_or_reuse("teacher (all labels)", run_train, teacher_cfg)
        teacher_dir = teacher_cfg.out_dir()
    else:
        teacher_dir = Path(args.teacher)
    if not (teacher_dir / "report.json").is_file():
        raise SystemExit(f"{teacher_dir}: not a finished teacher run")
    plain = ["random-crop", "hflip"]
    mixed = plain + [{"name": "mixup", "alpha": args.alpha}]
    data = {"name": "fashion-mnist", "root": args.data_root, "batch_size": 128}
    train = {"epochs": args.epochs, "lr": 3e-3, "weight_decay": 5e-4, "device": args.device}
    started = time.perf_counter()

    def alone(seed: int, augment: list, tag: str) -> TrainRunConfig:
        return validate_config({"name": tag, "role": "student", "seed": seed, "data": {**data, "augment": augment},
                                "model": STUDENT, "train": train, "out": str(work / f"{tag}-seed{seed}")}, TrainRunConfig)

    def matching(seed: int) -> DistillRunConfig:
        return validate_config({"name": "function-matching", "seed": seed, "data": {**data, "augment": mixed},
                                "teacher": str(teacher_dir), "student": STUDENT,
                                "distill": {"method": "kd", "temperature": 1.0, "alpha": 0.0, "teacher_outputs": "cached",
                                            "cache": {"views": args.views, "dir": str(work / "cache")}},
                                "train": train, "out": str(work / f"function-matching-seed{seed}")}, DistillRunConfig)

    groups = {"alone (crop + flip)": [], "alone (crop + flip + mixup)": [], "function matching (cached mixup views)": []}
    for seed in args.seeds:
        groups["alone (crop + flip)"].append(run_or_reuse(f"alone seed {seed}", run_train, alone(seed, plain, "alone")))
        groups["alone (crop + flip + mixup)"].append(run_or_reuse(f"alone+mixup seed {seed}", run_train,
                                                           alone(seed, mixed, "alone-mixup")))
        groups["function matching (cached mixup views)"].append(run_or_reuse(f"function matching seed {seed}", run_distill,
                                                                      matching(seed)))
    rows = [report_row(teacher_dir) | {"name": "teacher (all labels)"}]
    rows += [aggregate_seeds(members) | {"name": name} for name, members in groups.items()]
    best_alone = max(rows[1:3], key=lambda r: r["accuracy"])
    gain = rows[3]["accuracy"] - best_alone["accuracy"]
    spread = max(rows[3]["accuracy_std"], best_alone["accuracy_std"])
    result = {
        "benchmark": "function_matching",
        "command": "python benchmarks/function_matching.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
        "teacher_dir": str(teacher_dir), "student": STUDENT, "epochs": args.epochs, "views": args.views,
        "mixup_alpha": args.alpha, "seeds": args.seeds, "rows": rows,
        "per_seed": {name: [r["accuracy"] for r in members] for name, members in groups.items()},
        "gain_points_over_best_alone": 100 * gain, "spread_points": 100 * spread,
        "target_points": TARGET, "target_met": 100 * gain >= TARGET and gain > spread,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Fashion-MNIST: function matching (cached mixup views) vs the student alone", "",
        f"Command: `{result['command']}` — training on {result['device']}, {result['cpu_threads']} CPU threads; student "
        f"`{json.dumps(STUDENT)}`, {args.epochs} epochs for every student, all 55,000 labels; teacher {teacher_dir}; "
        f"function matching: KD at T = 1 with no label term (alpha 0), mixup alpha {args.alpha:g}, {args.views} cached "
        f"views per image; test accuracy over seeds {', '.join(map(str, args.seeds))}; "
        f"{result['seconds'] / 60:.0f} minutes in all.", "",
        format_table(rows), "",
        f"Function matching − the better student alone: **{100 * gain:+.2f} points** (largest seed std "
        f"{100 * spread:.2f}); target ≥ +{TARGET:g} beyond the spread: **{'met' if result['target_met'] else 'missed'}**.", "",
        "| seed | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups),
        *[f"| {s} | " + " | ".join(f"{100 * members[i]['accuracy']:.2f}%" for members in groups.values()) + " |"
          for i, s in enumerate(args.seeds)], "",
    ]
    (out / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
