"""The training loop: frozen teacher, train/eval modes, logged terms, accumulation, exact resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import interrupt_distill, REPO, tree_digest, write_yaml
from kdistill.config import DistillRunConfig, TrainConfig, validate_config
from kdistill.data import load_dataset
from kdistill.config import DataConfig
from kdistill.data.splits import DataSplits, Split
from kdistill.training.engine import fit, lr_factor
from kdistill.methods import build_method
from kdistill.models import build_model, load_run_model
from kdistill.runner import run_distill
from kdistill.training.teachers import FrozenTeacher


def _small_digits(n_train: int = 256) -> DataSplits:
    full = load_dataset(DataConfig(name="digits"))
    return DataSplits("digits", Split(full.train.inputs[:n_train], full.train.labels[:n_train]), full.val, full.test, full.classes)


def test_teacher_frozen_and_student_modes(tmp_path, teacher_run):
    """Teacher: eval + inference_mode on every call, weights untouched, no grads. Student: train mode with
    grad while training, eval mode for validation."""
    before = tree_digest(teacher_run)
    model, spec = load_run_model(teacher_run)
    teacher = FrozenTeacher(model, spec, source=str(teacher_run))
    teacher_params = {k: v.clone() for k, v in model.state_dict().items()}
    teacher_calls, student_calls = [], []
    model.register_forward_pre_hook(lambda m, a: teacher_calls.append((m.training, torch.is_inference_mode_enabled())))
    model.train()  # a careless caller flips it: the wrapper must put it back before every call

    data = _small_digits()
    student = build_model("mlp", {"hidden": [16], "dropout": 0.1}, data.input_shape, data.num_classes)
    student.register_forward_pre_hook(lambda m, a: student_calls.append((m.training, torch.is_grad_enabled())))
    method = build_method("kd", {"temperature": 4.0, "alpha": 0.1})
    fit(student, method, data, TrainConfig(epochs=2), run_dir=tmp_path / "run", seed=0, batch_size=64,
        teacher=teacher, progress=False)

    assert teacher_calls and all(not training and inference for training, inference in teacher_calls)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), teacher_params[key]), f"teacher tensor {key} changed"
    assert tree_digest(teacher_run) == before
    train_calls = [c for c in student_calls if c[0]]
    eval_calls = [c for c in student_calls if not c[0]]
    assert len(train_calls) == 2 * 4 and all(grad for _, grad in train_calls)  # 256/64 batches x 2 epochs
    assert len(eval_calls) == 2 and not any(grad for _, grad in eval_calls)  # one validation pass per epoch
    assert not student.training  # left in eval mode for evaluation


def test_terms_are_summed_and_logged(tmp_path, teacher_run):
    model, spec = load_run_model(teacher_run)
    data = _small_digits()
    student = build_model("mlp", {"hidden": [16]}, data.input_shape, data.num_classes)
    fit(student, build_method("kd", {"alpha": 0.3}), data, TrainConfig(epochs=3), run_dir=tmp_path, seed=0,
        batch_size=64, teacher=FrozenTeacher(model, spec), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    for r in lines:
        assert r["loss"] == pytest.approx(r["ce"] + r["kd"], rel=1e-6)
        assert {"lr", "train_accuracy", "val_accuracy", "seconds", "samples_per_s"} <= set(r)
    assert lines[-1]["kd"] < lines[0]["kd"]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "last.safetensors").is_file()
    best_epoch = max(lines, key=lambda r: r["val_accuracy"])["epoch"]  # the first epoch reaching the best
    best, last = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "last.safetensors")
    same = all(torch.equal(best[k], last[k]) for k in best)
    assert same == (best_epoch == 3), f"model.safetensors should hold epoch {best_epoch}, last.safetensors epoch 3"


def test_grad_accumulation_matches_large_batch(tmp_path):
    """Two accumulated micro-batches of 32 take the same SGD step as one batch of 64 (no BN, no dropout)."""
    data = _small_digits(128)
    results = []
    for batch, accum in ((64, 1), (32, 2)):
        torch.manual_seed(0)
        student = build_model("mlp", {"hidden": [16]}, data.input_shape, data.num_classes)
        cfg = TrainConfig(epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.0, scheduler="constant", grad_accum=accum)
        fit(student, build_method("ce", {}), data, cfg, run_dir=tmp_path / f"b{batch}", seed=0, batch_size=batch, progress=False)
        results.append(student.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_lr_schedules():
    cosine = lr_factor(TrainConfig(epochs=10, scheduler="cosine"), steps_per_epoch=10)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.5) and cosine(99) < 0.01
    warm = lr_factor(TrainConfig(epochs=10, warmup_epochs=2, scheduler="constant"), steps_per_epoch=10)
    assert warm(0) == pytest.approx(1 / 20) and warm(19) == pytest.approx(1.0) and warm(60) == 1.0
    step = lr_factor(TrainConfig(epochs=10, scheduler="step", step_size=3, gamma=0.5), steps_per_epoch=10)
    assert step(29) == 1.0 and step(30) == 0.5 and step(65) == 0.25


def test_bf16_autocast_trains(tmp_path, distill_config):
    distill_config["train"]["precision"] = "bf16"
    row = run_distill(validate_config(distill_config, DistillRunConfig), progress=False)
    lines = [json.loads(line) for line in (Path(distill_config["out"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    assert row["accuracy"] > 0.3


def _resume_config(distill_config: dict, out: Path) -> dict:
    cfg = json.loads(json.dumps(distill_config))
    cfg["student"] = {"name": "mlp", "hidden": [32], "dropout": 0.2}  # dropout: the RNG state must be restored too
    cfg["data"]["augment"] = ["random-crop"]
    cfg["train"]["epochs"] = 4
    cfg["train"]["device"] = "cpu"  # bit-exact resume is promised on the CPU (CUDA kernels may be nondeterministic)
    cfg["out"] = str(out)
    return cfg


def test_exact_resume_after_interrupt(tmp_path, distill_config, monkeypatch):
    """Interrupted in the middle of epoch 3, the same command resumes from epoch 2 and ends bit-identical."""
    reference = validate_config(_resume_config(distill_config, tmp_path / "straight"), DistillRunConfig)
    run_distill(reference, progress=False)

    cfg = validate_config(_resume_config(distill_config, tmp_path / "resumed"), DistillRunConfig)
    interrupt_distill(cfg, monkeypatch, 1 + 17 * 2 + 5)  # dry run + two full epochs (17 batches each) + 5 batches
    out = tmp_path / "resumed"
    assert not (out / "report.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    run_distill(cfg, progress=False)
    for name in ("last.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(out / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k not in ("seconds", "samples_per_s")} for l in p.read_text().splitlines()]
    assert strip(out / "metrics.jsonl") == strip(tmp_path / "straight" / "metrics.jsonl")


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, teacher_run):
    """A real `kdistill distill` process killed with SIGKILL after its first epoch, started again with the same
    command, ends with the same weights as an uninterrupted run."""
    def config(out: Path) -> Path:
        return write_yaml(tmp_path / f"{out.name}.yaml", {
            "name": out.name, "data": {"name": "digits", "batch_size": 16}, "teacher": str(teacher_run),
            "student": {"name": "cnn", "channels": [32, 64], "dropout": 0.1}, "distill": {"temperature": 2.0},
            "train": {"epochs": 5, "device": "cpu"}, "out": str(out)})

    killed_out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kdistill", "distill", str(config(killed_out)), "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed_out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_out / "report.json").exists()
    done_before = len(metrics.read_text().splitlines())
    assert 1 <= done_before <= 5  # under load the kill may land late; every point must resume

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight_out = tmp_path / "straight"
    assert subprocess.run([sys.executable, "-m", "kdistill", "distill", str(config(straight_out)), "-q"],
                          cwd=REPO, capture_output=True).returncode == 0
    a, b = load_file(killed_out / "last.safetensors"), load_file(straight_out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after resume (killed after {done_before} metric lines)"
    assert [json.loads(l)["epoch"] for l in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_a_clean_error(tmp_path, distill_config, capsys):
    from kdistill.cli import main

    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["distill", str(config), "train.device=cuda", "-q"]) == 2
    assert "train.device" in capsys.readouterr().err
    assert not Path(distill_config["out"]).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distill_on_cuda(tmp_path, distill_config, precision):
    """On a GPU: student and teacher on cuda, report measured on the CPU, resume state loads."""
    distill_config["train"].update(device="cuda", precision=precision, epochs=3)
    row = run_distill(validate_config(distill_config, DistillRunConfig), progress=False)
    assert row["accuracy"] > 0.3 and row["latency_ms"]["batch"] == 1
    ckpt = torch.load(Path(distill_config["out"]) / "state/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and len(ckpt["rng"]["cuda"]) >= 1
