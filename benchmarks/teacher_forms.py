"""Teacher cache build time for one teacher given in each form kdistill reads (issue 16).

One trained Fashion-MNIST teacher (the architecture of configs/fmnist-teacher.yaml, 322k parameters) is
written as an ONNX file, a torch.export program and a safetensors weights file, and `kdistill cache-teacher`
(`runner.run_cache_teacher`, rebuilding) stores its logits on the whole training split (55,000 images, one
view) from each form in turn: the run directory (PyTorch), `{model, weights}` (PyTorch), `.onnx` (ONNX
Runtime, CPU) and `.pt2` (the exported program). Rounds are interleaved so that the machine's noise falls on
every form alike; the build seconds of each (the cache header's, teacher passes only) are reported as median,
min and max, with the ratio to the run directory's median. The logits of each form are also compared with
the run directory's on 2,048 training images.

Run: `make bench-teachers` or `python benchmarks/teacher_forms.py [--rounds 3] [--teacher RUN_DIR]`. Without
`--teacher`, the teacher is trained for one epoch into the work dir first (timing does not depend on how well
it was trained). Results: benchmarks/results/teacher_forms.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import yaml

from kdistill.config import DistillRunConfig, TrainRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.deploy.export import export_onnx
from kdistill.models import load_run_model
from kdistill.runner import run_cache_teacher, run_train
from kdistill.training.teachers import load_teacher

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
FORMS = ("run", "weights", "onnx", "pt2")


def teacher_run(args: argparse.Namespace, work: Path) -> Path:
    if args.teacher:
        return Path(args.teacher)
    out = work / "teacher"
    if not (out / "report.json").is_file():
        raw = yaml.safe_load((REPO / "configs" / "fmnist-teacher.yaml").read_text())
        raw.update(out=str(out), train={**raw["train"], "epochs": 1}, data={**raw["data"], "augment": []})
        run_train(validate_config(raw, TrainRunConfig), overwrite=True, progress=False)
    return out


def write_forms(run: Path, work: Path) -> dict[str, object]:
    """The run directory's teacher as each form a config can name."""
    model, spec = load_run_model(run)
    example = torch.zeros(2, *spec["input_shape"])
    onnx, pt2 = work / "teacher.onnx", work / "teacher.pt2"
    export_onnx(model, (example,), onnx)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(pt2))
    weights = {"model": {"name": spec["name"], **spec["kwargs"]}, "weights": str(run / "model.safetensors")}
    return {"run": str(run), "weights": weights, "onnx": str(onnx), "pt2": str(pt2)}


def config(form: object, name: str, work: Path) -> DistillRunConfig:
    return validate_config({
        "name": f"forms-{name}", "data": {"name": "fashion-mnist", "batch_size": 128}, "teacher": form,
        "teacher_trust": True, "student": {"name": "mlp", "hidden": [16]},
        "distill": {"method": "kd", "teacher_outputs": "cached", "cache": {"dir": str(work / f"cache-{name}")}},
        "out": str(work / f"unused-{name}"),
    }, DistillRunConfig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--teacher", default=None, help="a trained run directory (default: train one epoch)")
    parser.add_argument("--work", default="runs/bench-teacher-forms")
    parser.add_argument("--results", default=str(ROOT / "results" / "teacher_forms"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = teacher_run(args, work)
    forms = write_forms(run, work)
    data = load_dataset(config(forms["run"], "run", work).data)
    probe = data.train.inputs[:2048]
    reference = load_teacher(forms["run"], data=data)(probe)
    gaps = {}
    for name, form in forms.items():
        cfg = config(form, name, work)
        logits = load_teacher(cfg.teacher, data=data, trust=True)(probe)
        gaps[name] = float((logits - reference).abs().max())
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for round_ in range(args.rounds):
        for name, form in forms.items():
            cache = run_cache_teacher(config(form, name, work), rebuild=True, progress=False)
            seconds[name].append(float(cache.header["seconds"]))
            print(f"round {round_ + 1}: {name}: {seconds[name][-1]:.2f} s", file=sys.stderr)
    base = statistics.median(seconds["run"])
    rows = [{"form": name, "median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
             "ratio_to_run_dir": statistics.median(s) / base, "max_abs_logit_diff": gaps[name], "seconds": s}
            for name, s in seconds.items()]
    machine = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    result = {"command": " ".join(["python", "benchmarks/teacher_forms.py", *sys.argv[1:]]), "teacher": str(run),
              "samples": len(data.train), "rounds": args.rounds, "machine": machine, "rows": rows}
    Path(args.results + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Teacher cache build time by teacher form (CPU, {machine['cpu_threads']} threads)", "",
             f"`{result['command']}`; {len(data.train):,} Fashion-MNIST training images, one view, teacher batch 1024, "
             f"{args.rounds} interleaved rounds.", "",
             "| teacher form | build s (median) | min | max | × run directory | max abs logit diff |", "|---|---|---|---|---|---|"]
    labels = {"run": "run directory (PyTorch)", "weights": "{model, weights} (PyTorch)", "onnx": ".onnx (ONNX Runtime)",
              "pt2": ".pt2 (torch.export)"}
    for row in rows:
        lines.append(f"| {labels[row['form']]} | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['max_s']:.2f} | "
                     f"{row['ratio_to_run_dir']:.2f} | {row['max_abs_logit_diff']:.1e} |")
    Path(args.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
