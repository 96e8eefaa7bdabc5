"""Run directories: create, resume, or refuse — never clobber a finished run by accident.

A directory is a *run* when it holds kdistill's own `config.yaml` and `model.json`;
*finished* when it also holds `report.json`; *unfinished* otherwise (a run that was killed).
The same config resumes an unfinished run; anything else is refused unless the user passes
--overwrite, and even then only the files kdistill writes are removed: a directory holding
anything else (a user's project, the working directory) is never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError

RUN_MARKERS = ("config.yaml", "model.json")
# Everything a train/distill/evaluate run writes at the top of its directory.
# `teacher-cache` holds a teacher's output caches (kdistill.teacher_cache): retraining the
# teacher with --overwrite removes them with the rest, as they describe the old weights;
# so does `export` (kdistill.export: ONNX and int8 files).
RUN_FILES = {"config.yaml", "model.json", "teacher.json", "model.safetensors", "last.safetensors", "metrics.jsonl", "state", "export",
             "report.json", "report-val.json", "report-train.json", "report-test.json", "teacher-cache",
             # text runs (kdistill.text.runner): the model's save_pretrained output and its tokenizer
             "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
             "chat_template.jinja"}


def is_run_dir(path: Path) -> bool:
    return all((Path(path) / name).is_file() for name in RUN_MARKERS)


def _foreign_entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.endswith(".tmp"))


def _remove_run(out: Path) -> None:
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def overlaps(a: Path, b: Path) -> bool:
    """True when two paths are the same directory or one contains the other (compared as absolute paths)."""
    a, b = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    return a == b or a in b.parents or b in a.parents


def check_out_dir(out: Path, protected: list[Path] = ()) -> None:
    """Refuse outputs that would overwrite the working directory, one of its parents, or a protected run (the teacher)."""
    target = Path(os.path.abspath(out))
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise KdistillError(f"out: {out} is the working directory or one of its parents; set out=<a new sub-directory>")
    for other in protected:
        if overlaps(target, other):
            raise KdistillError(f"out: {out} overlaps the teacher's run directory {other}; set out=<another dir>")


def prepare_run_dir(out: Path, config_yaml: str, model_json: dict[str, Any], *, overwrite: bool) -> bool:
    """Make `out` ready for this run; returns True when it resumes an unfinished run."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KdistillError(f"out: {out} exists and is not a directory")
    try:
        if out.is_dir() and any(out.iterdir()):
            if not is_run_dir(out):
                raise KdistillError(f"out: {out} is not empty and is not a kdistill run directory; choose another out=")
            foreign = _foreign_entries(out)
            if foreign:
                raise KdistillError(f"out: {out} holds files kdistill did not write ({', '.join(foreign[:3])}); choose another out=")
            finished = (out / "report.json").is_file()
            same_config = (out / "config.yaml").read_text(errors="replace") == config_yaml
            if overwrite:
                _remove_run(out)
            elif finished:
                raise KdistillError(f"out: {out} already holds a finished run; pass --overwrite to replace it or set out=<another dir>")
            elif same_config:
                write_text_atomic(out / "model.json", json.dumps(model_json, indent=2) + "\n")
                (out / "state").mkdir(exist_ok=True)
                return True
            else:
                raise KdistillError(
                    f"out: {out} holds an unfinished run of a different config; rerun that config to resume it, "
                    "pass --overwrite to start over, or set out=<another dir>"
                )
        (out / "state").mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "model.json", json.dumps(model_json, indent=2) + "\n")
        write_text_atomic(out / "config.yaml", config_yaml)  # written last: it is what marks the directory a run
    except OSError as exc:
        raise KdistillError(f"out: cannot write the run directory {out}: {exc.strerror or exc}") from None
    return False
