"""Run directories: create, resume, or refuse — never clobber a finished run by accident.

A directory is a *run* when it holds kdistill's own `config.yaml` and `model.json`;
*finished* when it also holds `report.json`; *unfinished* otherwise (a run that was killed).
The same config resumes an unfinished run; anything else is refused unless the user passes
--overwrite, and even then only the paths the run's manifest records (kdistill.ownership) are
removed: a directory holding anything else (a user's project, the working directory) is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from kdistill.training.checkpoint import NONFINITE
from kdistill.errors import KdistillError
from kdistill.ownership import FILE, FOLDER, MANIFEST, TREE, Owned, fresh_tmp

RUN_MARKERS = ("config.yaml", "model.json")
# What a train/distill run claims in its manifest when the directory is created (kdistill.ownership), before
# writing any of it. `export` (kdistill.deploy.export) and `teacher-cache` (kdistill.training.teacher_cache: retraining the
# teacher with --overwrite removes its caches, which describe the old weights) are folders with manifests of
# their own, written later by other commands; evaluate claims its report-<split>.json when it writes one.
RUN_FILES = ("config.yaml", "model.json", "teacher.json", "model.safetensors", "last.safetensors", "metrics.jsonl",
             "report.json", "tracking.json")
RUN_FOLDERS = ("export", "teacher-cache")
# The files a run directory of a kdistill older than the manifest could hold at its top (adopted only to resume it).
LEGACY_RUN_FILES = {*RUN_FILES, "report-val.json", "report-train.json", "report-test.json",
                    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                    "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja"}


def _adopt_legacy_run(out: Path) -> bool:
    """Give a run directory of a kdistill older than the manifest its manifests, when everything in it is what such
    a run held: kdistill's top-level files and a `state/` of the engine's checkpoint or the Trainer's checkpoint-N
    folders. Only for a run resumed with its byte-identical config; anything else leaves it unowned (refused)."""
    top = {p.name: p for p in out.iterdir()}
    state = top.pop("state", None)
    if any(name not in LEGACY_RUN_FILES or path.is_dir() or path.is_symlink() for name, path in top.items()):
        return False
    if state is not None:
        if not state.is_dir() or state.is_symlink():
            return False
        inner = {p.name: p for p in state.iterdir()}
        engine = {"checkpoint.pt", "checkpoint.pt.tmp"}
        for name, path in inner.items():
            ok = (name in engine and path.is_file()) or (re.fullmatch(r"checkpoint-\d+", name) and path.is_dir())
            if not ok or path.is_symlink():
                return False
    owned = Owned(out)
    owned.claim(*top)
    if state is not None:
        owned.claim("state", kind=FOLDER)
        for name, path in inner.items():
            Owned(state).claim(name, kind=TREE if path.is_dir() else FILE)
    return True


def check_finished(run_dir: Path, then: str) -> None:
    """One line for a run that has not finished: it is resumed by its command, not read (an evaluate would write
    its report and so mark it finished)."""
    if not (run_dir / "report.json").is_file() and (run_dir / "state").is_dir():
        raise KdistillError(f"{run_dir} is an unfinished run; resume it by running its train/distill command again, then {then}")


def finished_hf_run_config(run_dir: Path, train_config: type, distill_config: type, then: str,
                           data_overrides: dict[str, Any] | None) -> Any:
    """The validated config of a finished run whose model is a Hugging Face folder (text and causal-LM runs),
    with `--data` overrides applied; a distill run's config is the one with a `student`."""
    from kdistill.config import read_yaml, validate_config, with_data_overrides

    check_finished(run_dir, then)
    raw = read_yaml(run_dir / "config.yaml")
    cfg = validate_config(raw, distill_config if "student" in raw else train_config, source=str(run_dir / "config.yaml"))
    cfg.data = with_data_overrides(cfg.data, data_overrides)
    return cfg


def is_run_dir(path: Path) -> bool:
    return all((Path(path) / name).is_file() for name in RUN_MARKERS)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through `NAME.tmp` and rename, so a reader never sees half a file (claim NAME first in an owned folder)."""
    tmp = fresh_tmp(path)
    tmp.write_text(text)
    tmp.replace(path)


def write_owned_text(folder: Path, name: str, text: str) -> Path:
    """Claim `name` in `folder`'s manifest, then write it atomically. A folder that holds files but no manifest
    (a run of an older kdistill, say) is written into without one: kdistill never starts a manifest there,
    which would claim the folder while listing one file of it."""
    owned = Owned(folder)
    if owned.is_owned() or not folder.exists() or not any(folder.iterdir()):
        owned.claim(name)
    path = folder / name
    write_text_atomic(path, text)
    return path


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


def _not_owned_message(out: Path) -> str:
    return (f"out: {out} holds files kdistill did not write, as far as it can tell: it has no {MANIFEST} (a user's "
            "folder, or a run of a kdistill older than the manifest); delete it yourself or choose another out=")


# What may change when a run the NaN guard stopped is run again: the settings that make training stable.
STABILITY_KEYS = ("lr", "weight_decay", "grad_clip")


def _stability_apart(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A raw config without its train.lr/weight_decay/grad_clip, and those settings."""
    train = dict(raw.get("train") or {})
    stable = {key: train.pop(key, None) for key in STABILITY_KEYS}
    return {**raw, "train": train}, stable


def _resumable_after_nonfinite(out: Path, config_yaml: str) -> bool:
    """A run the NaN guard stopped resumes with a config that differs only in train.lr/weight_decay/grad_clip."""
    if not (out / NONFINITE).is_file():
        return False
    try:
        old, new = yaml.safe_load((out / "config.yaml").read_text()), yaml.safe_load(config_yaml)
    except (OSError, yaml.YAMLError):
        return False
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    (old_rest, before), (new_rest, after) = _stability_apart(old), _stability_apart(new)
    if old_rest != new_rest:
        return False
    text = ", ".join(f"train.{k} {before[k]} -> {after[k]}" for k in STABILITY_KEYS if before[k] != after[k])
    print(f"kdistill: resuming {out} after its non-finite stop with {text}", file=sys.stderr)
    return True


def save_into(folder: Path, save: Callable[[Path], None]) -> None:
    """Let another library write files into an owned folder (`save(work_dir)`, e.g. `save_pretrained`): it writes
    into a claimed work folder, and each entry is claimed before it is moved into place. When `save` raises,
    the work folder is removed and nothing is moved."""
    owned = Owned(folder)
    work = owned.path(".saving", kind=TREE)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        save(work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        owned.release(".saving")
        raise
    for entry in sorted(work.iterdir()):
        owned.claim(entry.name, kind=TREE if entry.is_dir() else FILE)
        target = folder / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        entry.replace(target)
    work.rmdir()
    owned.release(".saving")


def prepare_run_dir(out: Path, config_yaml: str, model_json: dict[str, Any], *, overwrite: bool) -> bool:
    """Make `out` ready for this run; returns True when it resumes an unfinished run.

    `--overwrite` removes exactly the paths the run's manifest records, and refuses when anything else is
    there. `state/` is a folder with a manifest of its own: the engine's checkpoint, or the Trainer's
    checkpoint-N folders (recorded as each is saved, kdistill.text.guard)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KdistillError(f"out: {out} exists and is not a directory")
    owned = Owned(out)
    try:
        if out.is_dir() and any(out.iterdir()):
            if not is_run_dir(out):
                raise KdistillError(f"out: {out} is not empty and is not a kdistill run directory; choose another out=")
            finished = (out / "report.json").is_file()
            same_config = (out / "config.yaml").read_text(errors="replace") == config_yaml
            if overwrite:
                if not owned.is_owned():
                    raise KdistillError(_not_owned_message(out))
                owned.remove("out")  # refuses first when anything else is there
            elif finished:
                raise KdistillError(f"out: {out} already holds a finished run; pass --overwrite to replace it or set out=<another dir>")
            elif same_config or _resumable_after_nonfinite(out, config_yaml):
                if not owned.is_owned() and not _adopt_legacy_run(out):
                    raise KdistillError(_not_owned_message(out))
                owned.check_removable("out")
                write_owned_text(out, "model.json", json.dumps(model_json, indent=2) + "\n")
                if not same_config:
                    write_owned_text(out, "config.yaml", config_yaml)
                owned.claim("state", kind=FOLDER)
                (out / "state").mkdir(exist_ok=True)
                return True
            else:
                raise KdistillError(
                    f"out: {out} holds an unfinished run of a different config; rerun that config to resume it, "
                    "pass --overwrite to start over, or set out=<another dir>"
                )
        owned.claim(*RUN_FILES)
        owned.claim(*RUN_FOLDERS, kind=FOLDER)
        owned.claim("state", kind=FOLDER)
        (out / "state").mkdir(exist_ok=True)
        write_owned_text(out, "model.json", json.dumps(model_json, indent=2) + "\n")
        write_owned_text(out, "config.yaml", config_yaml)  # written last: it is what marks the directory a run
    except OSError as exc:
        raise KdistillError(f"out: cannot write the run directory {out}: {exc.strerror or exc}") from None
    return False
