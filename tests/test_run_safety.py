"""Regression tests from the code review: --overwrite never deletes what kdistill did not write, the teacher's
run is protected, unfinished runs stay resumable, and odd inputs give one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, tree_digest, write_yaml
from kdistill.cli import main
from kdistill.config import TrainConfig
from kdistill.data.splits import DataSplits, Split
from kdistill.training.engine import fit
from kdistill.methods import build_method
from kdistill.models import build_model, load_run_model
from kdistill.training.teachers import FrozenTeacher


def test_overwrite_never_deletes_a_project_that_happens_to_hold_config_yaml(tmp_path, train_config, capsys):
    project = tmp_path / "myproj"
    (project / "data").mkdir(parents=True)
    (project / "data" / "labels.csv").write_text("a,b\n")
    (project / "model.json").write_text("{}\n")
    train_config["out"] = str(project)
    config = write_yaml(project / "config.yaml", train_config)
    before = tree_digest(project)
    assert main(["train", str(config), "--overwrite", "-q"]) == 2
    one_line_error(capsys, "did not write")
    assert tree_digest(project) == before


def test_out_may_not_be_the_working_directory(tmp_path, train_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "out=.", "--overwrite", "-q"]) == 2
    one_line_error(capsys, "working directory")
    assert (tmp_path / "keep.txt").read_text() == "x"


def test_distill_into_the_teacher_directory_is_refused(tmp_path, teacher_run, distill_config, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    distill_config["teacher"] = str(teacher)
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    before = tree_digest(teacher)
    for out in (teacher, teacher / "sub"):
        assert main(["distill", str(config), f"out={out}", "--overwrite", "-q"]) == 2
        one_line_error(capsys, "teacher")
    assert tree_digest(teacher) == before


def test_overwrite_replaces_only_kdistill_files(tmp_path, train_config):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    assert main(["train", str(config), "train.epochs=1", "--overwrite", "-q"]) == 0
    out = Path(train_config["out"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("override, needle", [("seed=100000000000000", "seed"), ("model.hidden=[-1]", "model"),
                                              ("seed=-1", "seed")])
def test_bad_values_fail_before_anything_is_written(tmp_path, train_config, capsys, override, needle):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), override, "-q"]) == 2
    one_line_error(capsys, needle)
    assert not Path(train_config["out"]).exists()


def test_evaluate_refuses_an_unfinished_run_and_keeps_it_resumable(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()  # as if killed after its last epoch, before the report
    assert main(["evaluate", str(out)]) == 2
    one_line_error(capsys, "unfinished")
    assert not (out / "report.json").exists()
    assert main(["train", str(config), "-q"]) == 0  # resumes and finishes
    assert (out / "report.json").exists()


def test_corrupt_checkpoint_and_cut_metrics_on_resume(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "lo')  # a line cut short by a crash is dropped on resume
    assert main(["train", str(config), "-q"]) == 0
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    (out / "report.json").unlink()
    (out / "state" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", str(config), "-q"]) == 2
    one_line_error(capsys, "checkpoint.pt", "corrupt")


def test_evaluate_data_override_errors(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    assert main(["evaluate", str(out), "--data", "root=["]) == 2
    one_line_error(capsys, "--data")


def test_last_short_accumulation_group_gets_a_full_step(tmp_path):
    """3 micro-batches with grad_accum=2: the lone third one must be averaged over 1, not 2 (plain SGD)."""
    x = torch.randn(3, 1, 8, 8)
    data = DataSplits("t", Split(x.repeat(1, 1, 1, 1), torch.tensor([1, 1, 1])), Split(x, torch.tensor([1, 1, 1])),
                      Split(x, torch.tensor([1, 1, 1])), [str(i) for i in range(10)])
    data.train = Split(x[:1].repeat(3, 1, 1, 1), torch.tensor([1, 1, 1]))  # three identical samples
    norms = []
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [8]}, (1, 8, 8), 10)
    original_step = torch.optim.SGD.step

    def recording_step(self, *a, **k):
        norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
        return original_step(self, *a, **k)

    torch.optim.SGD.step = recording_step
    try:
        cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=1e-6, weight_decay=0.0, scheduler="constant",
                          grad_accum=2, device="cpu")
        fit(model, build_method("ce", {}), data, cfg, run_dir=tmp_path, seed=0, batch_size=1, progress=False)
    finally:
        torch.optim.SGD.step = original_step
    assert len(norms) == 2 and norms[1] == pytest.approx(norms[0], rel=1e-3)


def test_teacher_submodule_flipped_to_train_is_reset(teacher_run):
    model, spec = load_run_model(teacher_run)
    teacher = FrozenTeacher(model, spec)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.stages.train()  # a careless user flips only a submodule
    teacher(torch.randn(4, 1, 8, 8))
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key


def test_interrupted_quickstart_resumes(tmp_path, monkeypatch):
    """Killed during its distilled runs, the same quickstart command picks up where it stopped."""
    import kdistill.quickstart as qs

    monkeypatch.setattr(qs, "TEACHER_TRAIN", {"epochs": 1, "lr": 2e-3})
    monkeypatch.setattr(qs, "STUDENT_TRAIN", {"epochs": 1, "lr": 3e-3})
    real = qs.run_distill
    monkeypatch.setattr(qs, "run_distill", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        qs.run_quickstart(tmp_path / "qs", seeds=(0,))
    teacher_before = tree_digest(tmp_path / "qs" / "teacher")
    monkeypatch.setattr(qs, "run_distill", real)
    rows = qs.run_quickstart(tmp_path / "qs", seeds=(0,))
    assert [r["role"] for r in rows] == ["teacher", "student", "distilled"]
    assert tree_digest(tmp_path / "qs" / "teacher") == teacher_before  # reused, not retrained


def _retrain_in_place(teacher: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(teacher / "model.safetensors")
    state = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(teacher / "model.safetensors"))


def test_teacher_identity_is_recorded_and_checked(tmp_path, teacher_run, distill_config, capsys, monkeypatch):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    distill_config["teacher"] = str(teacher)
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["distill", str(config), "-q"]) == 0
    out = Path(distill_config["out"])
    record = json.loads((out / "teacher.json").read_text())
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert record["path"] == str(teacher.resolve()) and row["teacher_sha256"] == record["weights_sha256"]

    monkeypatch.chdir(tmp_path / "..")  # evaluate from elsewhere: the recorded absolute path is used
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0

    _retrain_in_place(teacher)
    assert main(["evaluate", str(out)]) == 2
    one_line_error(capsys, "different weights")
    (out / "report.json").unlink()  # an unfinished run: resuming with the changed teacher is refused
    assert main(["distill", str(config), "-q"]) == 2
    one_line_error(capsys, "different weights")


def test_finished_row_reuses_only_a_finished_run_of_the_same_config(tmp_path, train_config):
    from kdistill.config import TrainRunConfig, validate_config
    from kdistill.runner import finished_row, run_train

    cfg = validate_config(train_config, TrainRunConfig)
    assert finished_row(cfg) is None  # nothing there yet
    row = run_train(cfg, progress=False)
    assert finished_row(cfg)["accuracy"] == row["accuracy"]
    changed = validate_config({**train_config, "train": {**train_config["train"], "lr": 1e-3}}, TrainRunConfig)
    assert finished_row(changed) is None  # same folder, another config: must be retrained
    (Path(cfg.out) / "report.json").unlink()
    assert finished_row(cfg) is None  # unfinished (no report): must be retrained
