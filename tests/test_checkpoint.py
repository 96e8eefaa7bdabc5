"""kdistill.training.checkpoint and the engine's NaN guard: a run that goes non-finite stops with one line and keeps its
last committed epoch; a damaged, foreign or hostile checkpoint is one line; a full disk during an epoch's commit
leaves the directory as it was after the previous epoch."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

import kdistill.training.checkpoint as checkpoint
from conftest import one_line_error, tree_digest, write_yaml
from kdistill.cli import main
from kdistill.methods.ce import CrossEntropy


def _epochs(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def nan_in_epoch_2(monkeypatch):
    """The label loss turns nan in the second batch of epoch 2 (one dry-run call, then 17 batches an epoch: digits
    at batch 64)."""
    real = CrossEntropy.forward
    calls = {"n": 0}

    def forward(self, batch, student_logits, teacher_logits):
        calls["n"] += 1
        terms = real(self, batch, student_logits, teacher_logits)
        return {"ce": terms["ce"] * float("nan")} if calls["n"] == 1 + 17 + 2 else terms

    monkeypatch.setattr(CrossEntropy, "forward", forward)
    return calls


def test_a_nan_loss_stops_the_run_and_keeps_the_last_committed_epoch(tmp_path, train_config, capsys, monkeypatch,
                                                                     nan_in_epoch_2):
    train_config["train"]["epochs"] = 3
    config = write_yaml(tmp_path / "c.yaml", train_config)
    out = Path(train_config["out"])
    assert main(["train", str(config), "-q"]) == 2
    err = one_line_error(capsys, "epoch 2, step 2", "ce=nan", "train.lr", "epoch 1's checkpoint")
    assert "Traceback" not in err
    assert _epochs(out) == [1]  # the epoch that went non-finite was not committed
    assert torch.load(out / "state/checkpoint.pt", weights_only=True)["epoch"] == 1
    committed = {k: v for k, v in tree_digest(out).items() if k != "state/stopped-nonfinite.json"}

    monkeypatch.undo()  # the loss is finite again; the rerun uses a smaller lr and resumes from epoch 1
    assert {k: v for k, v in tree_digest(out).items() if k != "state/stopped-nonfinite.json"} == committed
    assert main(["train", str(config), "train.lr=1e-3", "-q"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert _epochs(out) == [1, 2, 3]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / 51))  # noqa: E731 - 3 epochs x 17 steps
    assert lines[0]["lr"] == pytest.approx(3e-3 * cosine(16))  # epoch 1 at the first run's lr
    assert lines[1]["lr"] == pytest.approx(1e-3 * cosine(33))  # epoch 2 at the new one, same schedule
    assert not (out / "state/stopped-nonfinite.json").exists()


def test_a_changed_config_other_than_lr_does_not_resume_a_stopped_run(tmp_path, train_config, capsys, nan_in_epoch_2,
                                                                       monkeypatch):
    config = write_yaml(tmp_path / "c.yaml", {**train_config, "train": {**train_config["train"], "epochs": 3}})
    assert main(["train", str(config), "-q"]) == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", str(config), "train.epochs=4", "-q"]) == 2
    one_line_error(capsys, "different config")


def test_a_diverging_run_stops_on_its_gradient_norm_under_grad_clip(tmp_path, train_config, capsys):
    train_config["train"] |= {"optimizer": "sgd", "lr": 1e30, "grad_clip": 1.0, "epochs": 2}
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 2
    one_line_error(capsys, "went non-finite", "epoch 1")
    assert not (Path(train_config["out"]) / "report.json").exists()


@pytest.mark.parametrize("content, needle", [
    ([1, 2, 3], "not kdistill's mapping"),
    ({"epoch": 1}, "'best_val_accuracy' is missing"),
    ("empty", "empty (0 bytes)"),
    ("pickle", "weights-only load refuses"),
], ids=["a-list", "no-student", "zero-bytes", "malicious-pickle"])
def test_a_bad_resume_checkpoint_is_one_line(tmp_path, train_config, capsys, content, needle):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()  # unfinished: the next run resumes from the checkpoint
    path = out / "state/checkpoint.pt"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "pickle":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))
        path.write_bytes(pickle.dumps(Evil()))
    else:
        torch.save(content, path)
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["train", str(config), "-q"]) == 2
    err = one_line_error(capsys, "checkpoint.pt", needle)
    assert "weights_only" not in err and "False" not in err  # never PyTorch's hint to load it unsafely
    assert not (tmp_path / "pwned").exists()
    assert tree_digest(out) == before


def test_a_checkpoint_of_another_architecture_is_one_line(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    other = write_yaml(tmp_path / "o.yaml", {**train_config, "model": {"name": "mlp", "hidden": [8]},
                                            "out": str(tmp_path / "other")})
    assert main(["train", str(config), "-q"]) == 0
    assert main(["train", str(other), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()
    (out / "state/checkpoint.pt").write_bytes((tmp_path / "other/state/checkpoint.pt").read_bytes())
    capsys.readouterr()
    assert main(["train", str(config), "-q"]) == 2
    one_line_error(capsys, "checkpoint's student has", "of shape")


def test_a_full_disk_during_a_commit_keeps_the_previous_epoch(tmp_path, train_config, capsys, monkeypatch):
    train_config["train"]["epochs"] = 3
    config = write_yaml(tmp_path / "c.yaml", train_config)
    out = Path(train_config["out"])
    real_save = torch.save
    commits = {"n": 0}

    def save(obj, path, *a, **k):
        commits["n"] += 1
        if commits["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(["train", str(config), "-q"]) == 2
    one_line_error(capsys, "epoch 2 could not be saved", "No space left on device", "epoch 1's checkpoint")
    assert _epochs(out) == [1]  # no metrics line for the epoch that was not committed
    assert not (out / "state/checkpoint.pt.tmp").exists()
    monkeypatch.undo()
    assert main(["train", str(config), "-q"]) == 0  # room again: the same command resumes
    assert _epochs(out) == [1, 2, 3]


def test_a_safetensors_failure_during_a_commit_is_one_line(tmp_path, train_config, capsys, monkeypatch):
    from safetensors import SafetensorError

    import kdistill.models as models

    def save_file(*a, **k):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(models, "save_file", save_file)
    assert main(["train", str(write_yaml(tmp_path / "c.yaml", train_config)), "-q"]) == 2
    one_line_error(capsys, "epoch 1 could not be saved", "No space left", "no epoch had been committed")
    metrics = Path(train_config["out"]) / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""


@pytest.mark.parametrize("tamper, needle", [
    (lambda c: c.update(epoch=10**6), "do not fit a run of 2 epochs"),
    (lambda c: c.update(epoch=-5), "do not fit"),
    (lambda c: c.update(best_val_accuracy=float("nan")), "do not fit"),
    (lambda c: next(iter(c["optimizer"]["state"].values())).update(exp_avg=torch.zeros(3)), "optimiser state exp_avg"),
], ids=["epoch-too-large", "epoch-negative", "nan-accuracy", "optimizer-shape"])
def test_a_tampered_checkpoint_is_one_line(tmp_path, train_config, capsys, tamper, needle):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "-q"]) == 0
    out = Path(train_config["out"])
    (out / "report.json").unlink()
    ckpt = torch.load(out / "state/checkpoint.pt", weights_only=True)
    ckpt["epoch"] = ckpt["best_epoch"] = 1  # as if after epoch 1 of 2
    tamper(ckpt)
    torch.save(ckpt, out / "state/checkpoint.pt")
    capsys.readouterr()
    assert main(["train", str(config), "-q"]) == 2
    one_line_error(capsys, needle)
