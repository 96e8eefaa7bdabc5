"""kdistill.ownership: every folder kdistill writes records what it wrote, and `--overwrite` removes exactly that.

Each case of the hostile-input report (issue 20) is here, with a tree digest showing that nothing of the
user's changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import one_line_error, tree_digest, write_yaml
from kdistill.cli import main
from kdistill.errors import KdistillError
from kdistill.ownership import FILE, FOLDER, MANIFEST, TREE, Owned


# ---------------------------------------------------------------- the manifest itself

def test_claimed_names_are_owned_and_everything_else_is_foreign(tmp_path):
    owned = Owned(tmp_path / "f")
    owned.claim("a.json")
    owned.claim("sub", kind=FOLDER)
    owned.claim("work", kind=TREE)
    (tmp_path / "f" / "a.json").write_text("1")
    (tmp_path / "f" / "a.json.tmp").write_text("crash leftover")  # the atomic-write sibling of an owned file
    (tmp_path / "f" / "work" / "deep").mkdir(parents=True)
    (tmp_path / "f" / "work" / "deep" / "x.bin").write_text("trainer output")
    Owned(tmp_path / "f" / "sub").claim("inner.txt")
    (tmp_path / "f" / "sub" / "inner.txt").write_text("mine")
    assert owned.foreign() == []
    (tmp_path / "f" / "notes.tmp").write_text("user")  # .tmp is not a pass: notes was never claimed
    (tmp_path / "f" / "sub" / "user.txt").write_text("user")  # checked inside owned folders too
    assert owned.foreign() == ["notes.tmp", "sub/user.txt"]
    with pytest.raises(KdistillError, match="did not write"):
        owned.remove("out")
    assert (tmp_path / "f" / "a.json").exists()  # refused before anything was removed
    (tmp_path / "f" / "notes.tmp").unlink()
    (tmp_path / "f" / "sub" / "user.txt").unlink()
    owned.remove("out")
    assert list((tmp_path / "f").iterdir()) == []


def test_a_folder_without_a_manifest_owns_nothing(tmp_path):
    (tmp_path / "x.txt").write_text("user")
    assert not Owned(tmp_path).is_owned()
    assert Owned(tmp_path).foreign() == ["x.txt"]
    (tmp_path / MANIFEST).write_text("{not json")  # damaged: owns nothing either
    assert Owned(tmp_path).entries() is None and "x.txt" in Owned(tmp_path).foreign()


def test_a_symlink_in_place_of_an_owned_folder_is_unlinked_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("user")
    owned = Owned(tmp_path / "run")
    owned.claim("state", kind=TREE)
    (tmp_path / "run" / "state").symlink_to(target)
    owned.remove("out")
    assert (target / "keep.txt").read_text() == "user"


def test_concurrent_style_claims_keep_every_name(tmp_path):
    a, b = Owned(tmp_path), Owned(tmp_path)
    a.claim("one")
    b.claim("two", kind=FOLDER)
    assert Owned(tmp_path).entries() == {"one": FILE, "two": FOLDER}


# ---------------------------------------------------------------- run directories (train / distill --overwrite)

def test_overwrite_refuses_user_files_named_like_temporary_files(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "notes.tmp").write_text("my notes\n")
    (out / "data.tmp").mkdir()
    (out / "data.tmp" / "rows.csv").write_text("a,b\n")
    before = tree_digest(out)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, "did not write", "notes.tmp")
    assert tree_digest(out) == before


def test_overwrite_refuses_a_user_file_inside_the_state_folder(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "state" / "my-notes.txt").write_text("mine\n")
    before = tree_digest(out)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, "state/my-notes.txt")
    assert tree_digest(out) == before


def test_overwrite_never_touches_a_model_folder_that_holds_config_and_model_json(tmp_path, train_config, capsys):
    folder = tmp_path / "hf-model"
    (folder / "state").mkdir(parents=True)
    (folder / "model.json").write_text("{}\n")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "state" / "optimizer.bin").write_bytes(b"\x00" * 16)
    train_config["out"] = str(folder)
    config = write_yaml(folder / "config.yaml", train_config)
    before = tree_digest(folder)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, "did not write", MANIFEST)
    assert tree_digest(folder) == before


def test_overwrite_removes_exactly_what_the_manifest_records(tmp_path, train_config):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    recorded = Owned(out).entries()
    assert {"config.yaml", "model.json", "model.safetensors", "metrics.jsonl", "report.json"} <= set(recorded)
    assert Owned(out / "state").entries() == {"checkpoint.pt": FILE, "stopped-nonfinite.json": FILE}
    assert Owned(out).foreign() == []
    assert main(["train", str(config), "train.epochs=1", "--overwrite", "-q"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_run_of_a_kdistill_without_manifests_resumes_but_is_never_overwritten(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    for manifest in out.rglob(MANIFEST):  # as an older kdistill left it
        manifest.unlink()
    before = tree_digest(out)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, MANIFEST, "delete it yourself")
    assert tree_digest(out) == before
    (out / "report.json").unlink()  # unfinished, same config: resumed, and adopted
    assert main(["train", str(config), "-q"]) == 0
    assert Owned(out).is_owned() and Owned(out).foreign() == []


# ---------------------------------------------------------------- quickstart, compare, export

def test_quickstart_overwrite_checks_before_it_removes_anything(tmp_path, capsys):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "report.json").write_text('{"mine": true}\n')
    (out / "report.md").write_text("# my report\n")
    before = tree_digest(out)
    assert main(["quickstart", "--out", str(out), "--overwrite"]) == 2
    one_line_error(capsys, str(out), MANIFEST)
    assert tree_digest(out) == before


def test_compare_overwrite_removes_only_its_own_plots(tmp_path, teacher_run, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(teacher_run), "--out", str(out), "--repeats", "3"]) == 0
    owned = Owned(out)
    assert "compare.json" in owned.entries() and owned.foreign() == []
    (out / "my-figure.png").write_bytes(b"\x89PNG user's own")
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["compare", str(teacher_run), "--out", str(out), "--repeats", "3", "--overwrite"]) == 2
    one_line_error(capsys, "my-figure.png", "did not write")
    assert tree_digest(out) == before
    (out / "my-figure.png").unlink()
    assert main(["compare", str(teacher_run), "--out", str(out), "--repeats", "3", "--overwrite", "--no-plots"]) == 0
    assert not list(out.glob("*.png"))  # the old comparison's plots (kdistill's) were removed


def test_compare_refuses_a_folder_that_merely_holds_a_compare_json(tmp_path, teacher_run, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text("{}\n")
    (out / "photo.png").write_bytes(b"\x89PNG")
    before = tree_digest(out)
    assert main(["compare", str(teacher_run), "--out", str(out), "--overwrite"]) == 2
    one_line_error(capsys, "--out", MANIFEST)
    assert tree_digest(out) == before


def test_export_never_replaces_a_file_it_did_not_write(tmp_path, teacher_run, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"the user's own model")
    before = tree_digest(run / "export")
    assert main(["export", str(run), "--overwrite"]) == 2
    one_line_error(capsys, "did not write")
    assert tree_digest(run / "export") == before
    (run / "export" / "model.onnx").unlink()
    (run / "export" / "notes.txt").write_text("kept\n")
    assert main(["export", str(run)]) == 0  # a user's other file in export/ is left alone
    assert (run / "export" / "notes.txt").read_text() == "kept\n"
    assert Owned(run / "export").foreign() == ["notes.txt"]
    assert json.loads((run / "export" / "export.json").read_text())["variants"]["onnx"]["opset"] == 18


# ---------------------------------------------------------------- teacher caches and sweeps

def test_rebuilding_a_cache_never_deletes_a_folder_kdistill_did_not_write(tmp_path, distill_config, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "header.json").write_text("{}")
    (cache / "params.npy").write_bytes(b"user")  # the names of a cache, but no manifest: not kdistill's
    distill_config["distill"] |= {"teacher_outputs": "cached", "cache": {"dir": str(cache)}}
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    before = tree_digest(cache)
    assert main(["cache-teacher", str(config), "--rebuild", "-q"]) == 2
    one_line_error(capsys, str(cache), MANIFEST)
    assert tree_digest(cache) == before


def test_a_cache_built_in_a_users_folder_records_only_itself(tmp_path, distill_config):
    parent = tmp_path / "mine"
    parent.mkdir()
    (parent / "other.txt").write_text("user\n")
    distill_config["distill"] |= {"teacher_outputs": "cached", "cache": {"dir": str(parent / "cache")}}
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["cache-teacher", str(config), "-q"]) == 0
    assert not (parent / MANIFEST).exists()  # the user's folder gets no manifest
    assert Owned(parent / "cache").foreign() == []
    assert main(["cache-teacher", str(config), "--rebuild", "-q"]) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["cache", "other.txt"]


def test_a_teachers_default_cache_is_part_of_its_run(tmp_path, teacher_run, distill_config):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    distill_config |= {"teacher": str(teacher)}
    distill_config["distill"] |= {"teacher_outputs": "cached"}
    assert main(["cache-teacher", str(write_yaml(tmp_path / "kd.yaml", distill_config)), "-q"]) == 0
    assert Owned(teacher).entries()["teacher-cache"] == FOLDER
    assert Owned(teacher).foreign() == []  # teacher-cache/<name>/ and its files are all recorded


def test_a_sweep_records_its_files_and_trials(tmp_path, distill_config):
    pytest.importorskip("optuna")
    distill_config["train"]["epochs"] = 1
    distill_config["sweep"] = {"trials": 1, "out": str(tmp_path / "sw"), "space": {"distill.temperature": [2.0]}}
    assert main(["sweep", str(write_yaml(tmp_path / "s.yaml", distill_config))]) == 0
    owned = Owned(tmp_path / "sw")
    assert owned.entries()["trial-000"] == FOLDER and owned.foreign() == []


def test_a_diverging_sweep_trial_is_recorded_and_the_sweep_goes_on(tmp_path, distill_config, monkeypatch):
    pytest.importorskip("optuna")
    import kdistill.runner as runner
    from kdistill.errors import NonFiniteError

    real, calls = runner.run_distill, {"n": 0}

    def first_diverges(cfg, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise NonFiniteError("epoch 1, step 3: the loss went non-finite (loss=nan); the run stopped")
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner, "run_distill", first_diverges)
    distill_config["train"]["epochs"] = 1
    distill_config["sweep"] = {"trials": 2, "out": str(tmp_path / "sw"), "space": {"distill.temperature": [2.0, 4.0]}}
    assert main(["sweep", str(write_yaml(tmp_path / "s.yaml", distill_config))]) == 0
    trials = json.loads((tmp_path / "sw" / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["diverged", "complete"]


# ---------------------------------------------------------------- from the hostile review of the manifests

def test_a_cache_dir_pointing_at_another_run_is_refused_not_emptied(tmp_path, teacher_run, train_config, distill_config,
                                                                     capsys):
    other = tmp_path / "other-run"
    assert main(["train", str(write_yaml(tmp_path / "o.yaml", {**train_config, "out": str(other)})), "-q"]) == 0
    distill_config["distill"] |= {"teacher_outputs": "cached", "cache": {"dir": str(other)}}
    before = tree_digest(other)
    capsys.readouterr()
    assert main(["cache-teacher", str(write_yaml(tmp_path / "kd.yaml", distill_config)), "-q"]) == 2
    one_line_error(capsys, "not a kdistill cache")
    assert tree_digest(other) == before


def test_a_run_of_an_older_kdistill_with_user_files_in_its_folders_is_not_adopted(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()
    for manifest in out.rglob(MANIFEST):
        manifest.unlink()
    (out / "state" / "notes.txt").write_text("mine\n")
    (out / "export").mkdir()
    (out / "export" / "mine.onnx").write_bytes(b"mine")
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["train", str(config), "-q"]) == 2  # not adopted: kdistill cannot tell its files from these
    one_line_error(capsys, MANIFEST)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, MANIFEST)
    assert tree_digest(out) == before


def test_a_user_folder_under_a_name_kdistill_claimed_is_refused(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "teacher.json").mkdir()  # a train run never writes teacher.json, but the name is recorded
    (out / "teacher.json" / "keep.txt").write_text("mine\n")
    (out / "model.safetensors.tmp").mkdir()
    (out / "model.safetensors.tmp" / "keep.txt").write_text("mine\n")
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, "did not write", "model.safetensors.tmp")
    assert tree_digest(out) == before


def test_an_atomic_write_never_follows_a_symlink_left_in_place_of_its_temporary_file(tmp_path):
    from kdistill.training.rundir import write_owned_text

    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    folder = tmp_path / "f"
    write_owned_text(folder, "a.json", "1\n")
    (folder / "a.json.tmp").symlink_to(precious)
    write_owned_text(folder, "a.json", "2\n")
    assert precious.read_text() == "mine\n" and (folder / "a.json").read_text() == "2\n"


def test_export_never_replaces_an_export_json_it_did_not_write(tmp_path, teacher_run, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text('{"variants": {}, "note": "mine"}\n')
    before = tree_digest(run / "export")
    assert main(["export", str(run)]) == 2
    one_line_error(capsys, "export.json", "did not write")
    assert tree_digest(run / "export") == before


def test_a_sweep_never_writes_into_a_folder_that_merely_holds_a_study_db(tmp_path, distill_config, capsys):
    pytest.importorskip("optuna")
    folder = tmp_path / "my-optuna"
    folder.mkdir()
    (folder / "study.db").write_bytes(b"SQLite format 3\x00 the user's own")
    (folder / "best.yaml").write_text("mine: true\n")
    before = tree_digest(folder)
    distill_config["sweep"] = {"trials": 1, "out": str(folder)}
    assert main(["sweep", str(write_yaml(tmp_path / "s.yaml", distill_config))]) == 2
    one_line_error(capsys, "holds no sweep kdistill wrote")
    assert tree_digest(folder) == before
