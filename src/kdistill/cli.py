"""The `kdistill` command line: parse, build, call. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from kdistill import __version__
from kdistill.errors import KdistillError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"kdistill: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def _parse_pairs(pairs: list[str]) -> dict[str, object]:
    from kdistill.config import parse_yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KdistillError(f"--data {pair!r} must look like key=value, e.g. --data root=/path/to/data")
        out[key] = parse_yaml(value, f"--data {key}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdistill", description="Knowledge distillation: train a small student to imitate a large teacher, and measure what it bought.")
    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    q = sub.add_parser("quickstart", help="teacher, student alone and distilled student on digits; prints the table")
    q.add_argument("--out", default="runs/quickstart", help="directory for the three runs and the report (default: runs/quickstart)")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart in --out")
    q.add_argument("--progress", action="store_true", help="show per-epoch progress")

    for name, text in (("train", "train `model` on `data` with labels only (teachers, baselines)"),
                       ("distill", "train `student` from `teacher` on `data`")):
        p = sub.add_parser(name, help=text, description=text + ". Overrides are dotted key=value pairs, e.g. train.epochs=3 distill.temperature=2.")
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="dotted overrides of config keys")
        p.add_argument("--overwrite", action="store_true", help="replace a finished (or different unfinished) run in `out`")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        if name == "distill":
            p.add_argument("--baseline", action="store_true",
                           help="also train the same student on labels alone (same budget and seeds), and write the "
                                "teacher / alone / distilled table and pictures; `out` becomes a folder of the runs")
            p.add_argument("--seeds", type=int, default=None, metavar="N",
                           help="with --baseline: seeds `seed` .. `seed`+N-1 (default 3)")

    c_text = "precompute the teacher's logits (distill.cache: views, top_k, dir) for a distill config"
    c = sub.add_parser("cache-teacher", help=c_text, description=c_text + ". `kdistill distill` reads the cache with "
                       "distill.teacher_outputs=cached (and builds it on first use). Overrides are dotted key=value pairs, "
                       "e.g. distill.cache.views=10.")
    c.add_argument("config", help="YAML distill config")
    c.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="dotted overrides of config keys")
    c.add_argument("--rebuild", action="store_true", help="rebuild the cache even if one exists (e.g. built for another teacher)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    g_text = "turn a GGUF causal LM (llama.cpp's format) into a Hugging Face folder a causal-lm config can name"
    g = sub.add_parser("import-gguf", help=g_text, description=g_text + ": dequantised float32 safetensors, config and "
                       "tokenizer, checked by comparing logits with the GGUF-loaded model on a few sentences (needs gguf).")
    g.add_argument("gguf", help="the .gguf file")
    g.add_argument("out_dir", help="a new (or empty) folder for the model")
    g.add_argument("--overwrite", action="store_true", help="replace an earlier import in OUT_DIR")

    e = sub.add_parser("evaluate", help="accuracy + efficiency of one trained model")
    e.add_argument("run_dir", help="a run directory written by train or distill")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--data", action="append", default=[], metavar="key=value", help="override a data setting, e.g. --data root=/other/copy")

    x_text = "export a run for deployment (ONNX, int8), each file verified against PyTorch on the validation split"
    x = sub.add_parser("export", help=x_text, description=x_text + ". Files land in RUN_DIR/export/ with export.json "
                       "(sizes, max abs logit difference, argmax agreement, accuracy). A causal-LM run's graph gives the next-token logits "
                       "of every position (no KV cache), verified on 8 validation blocks by next-token accuracy.")
    x.add_argument("run_dir", help="a finished run directory")
    x.add_argument("--format", dest="fmt", choices=["onnx", "torch"], default="onnx",
                   help="onnx: model.onnx (+ int8 ONNX Runtime variants with --quantize); torch: PyTorch dynamic int8 "
                        "(needs --quantize int8)")
    x.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write int8 variants: ONNX Runtime dynamic and (image inputs) static, or PyTorch dynamic")
    x.add_argument("--calibration", type=int, default=256, metavar="N", help="training samples for static int8 calibration")
    x.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    x.add_argument("--overwrite", action="store_true", help="replace variants exported before")
    x.add_argument("--data", action="append", default=[], metavar="key=value", help="override a data setting, e.g. --data root=/other/copy")

    m_text = "one table (Markdown, JSON, HTML) and plots for several runs and their exported variants"
    m = sub.add_parser("compare", help=m_text, description=m_text + ": accuracy, calibration (ECE), params, size on disk, "
                       "batch-1 latency and throughput measured in one process, interleaved, and ratios to the teacher.")
    m.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of run directories (e.g. runs/quickstart)")
    m.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    m.add_argument("--split", choices=["train", "val", "test"], default="test")
    m.add_argument("--teacher", default=None, metavar="RUN_DIR",
                   help="the reference row for agreement and ratios (default: the teacher among the runs, else the one "
                        "the distilled runs recorded)")
    m.add_argument("--repeats", type=int, default=50, help="timed batch-1 passes per model (default 50)")
    m.add_argument("--threads", type=int, default=None, help="CPU threads for every model (default: torch's default)")
    m.add_argument("--no-plots", action="store_true", help="tables only")
    m.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")
    m.add_argument("--data", action="append", default=[], metavar="key=value", help="override a data setting, e.g. --data root=/other/copy")

    w_text = "search distill hyperparameters (temperature, alpha, method, ...) with Optuna; resumable"
    w = sub.add_parser("sweep", help=w_text, description=w_text + ". Each trial is a distill run of CONFIG in "
                       "<sweep dir>/trial-NNN (vision, text or causal-LM); the objective is the best validation accuracy (the "
                       "lowest validation perplexity for causal LMs); a median pruner stops poor "
                       "trials; the study is kept in <sweep dir>/study.db, so the same command continues it. The search "
                       "space is the config's sweep.space (default: distill.temperature in [1, 20] log, distill.alpha "
                       "in [0, 1]). Writes trials.md, trials.json and best.yaml.")
    w.add_argument("config", help="YAML distill config (optionally with a sweep: section)")
    w.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="dotted overrides, e.g. train.epochs=5")
    w.add_argument("--trials", type=int, default=None, help="total trials of the study (default: sweep.trials, 20)")
    w.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="also search distill.method among these (e.g. --methods kd dkd dist)")
    w.add_argument("--out", default=None, help="sweep folder (default: sweep.out, else runs/<name>-sweep)")
    return parser


def _cmd_sweep(args: argparse.Namespace) -> None:
    from kdistill.sweep import run_sweep

    if args.trials is not None and args.trials < 1:
        raise KdistillError(f"--trials {args.trials}: must be at least 1")
    summary = run_sweep(args.config, args.overrides, trials=args.trials, out=args.out, methods=args.methods)
    print(Path(summary["study"]).with_name("trials.md").read_text())


def _cmd_compare(args: argparse.Namespace) -> None:
    from kdistill import tasks

    tasks.compare(args.runs, out=args.out, split=args.split, repeats=args.repeats, threads=args.threads,
                  teacher=args.teacher, overwrite=args.overwrite, data_overrides=_parse_pairs(args.data),
                  plots=not args.no_plots)
    print((Path(args.out) / "compare.md").read_text().rstrip())  # the table each task's comparison wrote
    written = sorted(p.name for p in Path(args.out).iterdir() if p.suffix in (".md", ".json", ".html", ".png"))
    print(f"\ncomparison in {args.out}: {', '.join(written)}")


def _cmd_export(args: argparse.Namespace) -> None:
    from kdistill import tasks

    if args.calibration < 1:
        raise KdistillError(f"--calibration {args.calibration}: must be at least 1")
    record = tasks.export(args.run_dir, fmt=args.fmt, quantize=args.quantize, calibration=args.calibration,
                        opset=args.opset, overwrite=args.overwrite, data_overrides=_parse_pairs(args.data))
    print(f"export record: {args.run_dir}/export/export.json ({len(record['variants'])} variant(s))")


def _cmd_train_or_distill(args: argparse.Namespace) -> None:
    from kdistill import tasks

    t0 = time.perf_counter()
    task, cfg = tasks.load(args.config, args.overrides, args.command)
    if getattr(args, "seeds", None) is not None and not args.baseline:
        raise KdistillError("--seeds goes with --baseline (a single distill run has the config's one seed)")
    if getattr(args, "baseline", False):
        from kdistill.baseline import run_baseline

        result = run_baseline(task, cfg, 3 if args.seeds is None else args.seeds, overwrite=args.overwrite, progress=not args.quiet,
                              log=lambda line: print(line, file=sys.stderr))
        if result:
            print((Path(cfg.out) / "report.md").read_text().rstrip())
            print(f"\nbaseline in {cfg.out}  ({time.perf_counter() - t0:.1f} s)")
        return
    row = task.run(args.command, cfg, overwrite=args.overwrite, progress=not args.quiet)
    if not row:  # a process other than rank 0 under torchrun: rank 0 reports
        return
    print(task.table([row]))
    print(f"run directory: {cfg.out_dir()}  ({time.perf_counter() - t0:.1f} s)")


def _cmd_cache_teacher(args: argparse.Namespace) -> None:
    from kdistill import tasks

    path = tasks.for_config(args.config, args.overrides).cache_teacher(args.config, args.overrides, rebuild=args.rebuild,
                                                                      progress=not args.quiet)
    print(f"teacher cache: {path}")


def _cmd_import_gguf(args: argparse.Namespace) -> None:
    from kdistill.lm.models import import_gguf

    record = import_gguf(args.gguf, args.out_dir, overwrite=args.overwrite)
    print(f"imported {record['architecture']} ({record['params']:,} parameters, {record['layers']} layers, vocabulary "
          f"{record['vocab_size']:,}) into {args.out_dir}; logits on {record['check_sentences']} sentences match the GGUF "
          f"model's within {record['max_abs_logit_diff']:.2g}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from kdistill import tasks

    run_dir = Path(args.run_dir)
    task = tasks.for_run(run_dir)
    print(task.table([task.evaluate(run_dir, args.split, _parse_pairs(args.data))]))


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from kdistill.quickstart import run_quickstart
    from kdistill.evaluate.report import format_table

    t0 = time.perf_counter()
    rows = run_quickstart(args.out, overwrite=args.overwrite, progress=args.progress)
    print()
    print(format_table(rows))
    print(f"\nreport: {args.out}/report.json, {args.out}/report.md  (quickstart took {time.perf_counter() - t0:.1f} s)")
    print(f"next: kdistill export {args.out}/distilled-seed0 --quantize int8 && kdistill compare {args.out} --out {args.out}-compare")


COMMANDS = {"train": _cmd_train_or_distill, "distill": _cmd_train_or_distill, "cache-teacher": _cmd_cache_teacher,
            "evaluate": _cmd_evaluate, "import-gguf": _cmd_import_gguf, "export": _cmd_export, "compare": _cmd_compare, "sweep": _cmd_sweep, "quickstart": _cmd_quickstart}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`train cfg.yaml --overwrite train.epochs=3`): argparse leaves them over.
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, one process speaks for all
    try:
        COMMANDS[args.command](args)
    except KdistillError as exc:
        if main_process:
            sys.stderr.write(f"kdistill: error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:  # the file system said no (a name too long, a full disk, no permission): one line, not a traceback
        if main_process:
            where = f"{exc.filename}: " if exc.filename else ""
            sys.stderr.write(f"kdistill: error: {where}{exc.strerror or exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if main_process:
            again = {"train": "resume from the last completed epoch", "distill": "resume from the last completed epoch",
                     "sweep": "continue the sweep (the interrupted trial runs again)",
                     "cache-teacher": "build the cache again"}.get(args.command, "start over")
            sys.stderr.write(f"kdistill: interrupted; run the same command again to {again}\n")
        return 130
    finally:
        from kdistill.training.distributed import shutdown

        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
