"""Transfer data (kdistill.data.transfer): unlabelled training samples learn from the teacher only.

The label term is checked against an explicit loop (value and gradient), a mixed batch's whole loss against
an explicit computation, the normalisation over several processes against one process, and the CLI end to
end: labeled_samples in train and distill runs, data.unlabeled folders (in memory and streamed), the teacher
cache and a bit-exact resume with unlabelled samples.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import interrupt_distill, run_cli, write_yaml
from kdistill.config import DataConfig, DistillRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.data.splits import Batch
from kdistill.data.transfer import UNLABELED, drop_unlabeled, train_subset, unlabel_rest
from kdistill.errors import KdistillError
from kdistill.losses import dkd_loss
from kdistill.methods import build_method
from kdistill.methods.base import check_labels, labeled_cross_entropy
from kdistill.runner import run_distill


def _mixed(n: int = 12, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, classes, generator=g)
    teacher = torch.randn(n, classes, generator=g) * 2
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[::3] = UNLABELED
    return student, teacher, labels


def _explicit_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the labelled samples of -log softmax(logits)[label], one sample at a time."""
    terms = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        if label < 0:
            continue
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        terms.append(log_z - row[label])
    return sum(terms) / len(terms)


def test_the_label_term_is_the_mean_over_labelled_samples_with_its_gradient():
    student, _, labels = _mixed()
    logits = student.clone().requires_grad_(True)
    ce = labeled_cross_entropy(logits, Batch(student, labels, torch.arange(12)))
    assert float(ce.detach()) == pytest.approx(_explicit_ce(student, labels), rel=1e-6)
    ce.backward()
    labeled = labels >= 0
    expected = torch.softmax(student, -1) - F.one_hot(labels.clamp(min=0), 5).float()
    expected[~labeled] = 0
    assert torch.allclose(logits.grad, expected / int(labeled.sum()), atol=1e-7)  # d/dz = (p - y) / labelled count
    # All labelled: exactly F.cross_entropy's mean, as before transfer data existed.
    full = torch.randint(0, 5, (12,))
    assert torch.equal(labeled_cross_entropy(student, Batch(student, full, torch.arange(12))),
                       F.cross_entropy(student, full))
    # No label in the batch: 0, and still differentiable (every process must take part in the backward pass).
    none = torch.full((12,), UNLABELED)
    zero = labeled_cross_entropy(logits, Batch(student, none, torch.arange(12)))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_shards_scaled_by_the_global_share_sum_to_the_global_mean():
    """What the engine does under torchrun: each process's term over (its n x the global labelled share), times
    its n / N (the engine's share of the global batch), summed over processes = the global labelled mean."""
    student, _, labels = _mixed(n=16)
    share = float((labels >= 0).sum()) / 16
    total = 0.0
    for part in (slice(0, 9), slice(9, 16)):  # uneven, and holding different numbers of labels
        shard = Batch(student[part], labels[part], torch.arange(16)[part], labeled_share=share)
        n = labels[part].shape[0]
        total += float(labeled_cross_entropy(student[part], shard)) * n / 16
    assert total == pytest.approx(_explicit_ce(student, labels), rel=1e-6)


def test_a_mixed_batch_kd_loss_against_an_explicit_computation():
    student, teacher, labels = _mixed()
    method = build_method("kd", {"temperature": 3.0, "alpha": 0.3})
    terms = method(Batch(student, labels, torch.arange(12)), student, teacher)
    t = 3.0
    kl = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = np.exp(np.array(t_row) / t - np.logaddexp.reduce(np.array(t_row) / t))
        log_q = np.array(s_row) / t - np.logaddexp.reduce(np.array(s_row) / t)
        kl.append(float((p * (np.log(p) - log_q)).sum()))
    assert float(terms["ce"]) == pytest.approx(0.3 * _explicit_ce(student, labels), rel=1e-6)
    assert float(terms["kd"]) == pytest.approx(0.7 * t * t * sum(kl) / 12, rel=1e-5)  # every sample, labelled or not


def test_dkd_takes_the_teachers_class_for_unlabelled_samples_and_tf_kd_refuses_them():
    student, teacher, labels = _mixed()
    method = build_method("dkd", {"warmup_epochs": 0})
    terms = method(Batch(student, labels, torch.arange(12)), student, teacher)
    target = torch.where(labels >= 0, labels, teacher.argmax(-1))
    assert torch.allclose(terms["dkd"], dkd_loss(student, teacher, target, 1.0, 8.0, 4.0))
    with pytest.raises(KdistillError, match="'tf_kd' builds its virtual teacher from each sample's label, and 4 "):
        check_labels(build_method("tf_kd", {}), labels)
    check_labels(build_method("tf_kd", {}), labels.clamp(min=0))  # every label there: fine


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def test_labeled_samples_keep_exactly_the_train_samples_subset(digits):
    masked = unlabel_rest(digits, 100)
    subset = train_subset(digits, 100, "labeled_samples")
    labeled = masked.train.labels != UNLABELED
    assert int(labeled.sum()) == 100 and len(masked.train) == len(digits.train)
    assert torch.equal(masked.train.inputs[labeled], subset.train.inputs)
    assert torch.equal(masked.train.labels[labeled], subset.train.labels)
    assert torch.equal(torch.bincount(subset.train.labels), torch.full((10,), 10))  # stratified
    dropped = drop_unlabeled(masked)
    assert torch.equal(dropped.train.inputs, subset.train.inputs)
    with pytest.raises(KdistillError, match="fewer than the 10 classes"):
        unlabel_rest(digits, 5)


def _write_pngs(folder, images: np.ndarray, size: int, nested: bool = True) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        sub = folder / f"part{i % 2}" if nested else folder  # any depth, no class meaning
        sub.mkdir(exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST).save(sub / f"{i:03d}.png")


def test_an_unlabelled_folder_is_decoded_as_the_data_set_and_streams_alike(tmp_path, digits):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    _write_pngs(tmp_path / "extra", pixels, 16)  # another size: resized to 8 x 8
    loaded = load_dataset(DataConfig(name="digits", unlabeled={"root": str(tmp_path / "extra")}))
    assert len(loaded.train) == len(digits.train) + 6
    assert torch.equal(loaded.train.labels[-6:], torch.full((6,), UNLABELED))
    assert torch.equal(loaded.train.inputs[:-6], digits.train.inputs)
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "extra" / "part0" / "000.png").convert("L")
                       .resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    expected = (first - digits.normalization["mean"]) / digits.normalization["std"]
    assert np.allclose(loaded.train.inputs[-6, 0].numpy(), expected, atol=1e-5)  # the data set's normalisation

    # An image folder streamed from disk gets the same unlabelled images, decoded in the workers.
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for c in range(2):
            _write_pngs(root / split / str(c), pixels[c * 3:(c + 1) * 3], 8, nested=False)
    held = load_dataset(DataConfig(name="imagefolder", root=str(root), unlabeled={"root": str(tmp_path / "extra")}))
    streamed = load_dataset(DataConfig(name="imagefolder", root=str(root), in_memory=False, workers=1,
                                       unlabeled={"root": str(tmp_path / "extra")}))
    assert len(streamed.train) == len(held.train) == 12
    batch = next(iter(streamed.train.inputs.batches([torch.arange(12)])))
    assert torch.allclose(batch, held.train.inputs, atol=1e-6)
    assert torch.equal(streamed.train.labels, held.train.labels)
    with pytest.raises(KdistillError, match="are validation or test images of imagefolder"):  # the data set's own val/
        load_dataset(DataConfig(name="imagefolder", root=str(root), unlabeled={"root": str(root)}))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(KdistillError, match="holds no .png"):
        load_dataset(DataConfig(name="digits", unlabeled={"root": str(tmp_path / "empty")}))


def _transfer_config(distill_config: dict, tmp_path, name: str, **data) -> dict:
    return {**distill_config, "data": {**distill_config["data"], "labeled_samples": 100, **data},
            "train": {**distill_config["train"], "epochs": 3}, "out": str(tmp_path / name)}


def test_cli_train_drops_and_distill_keeps_the_unlabelled_samples(tmp_path, distill_config, train_config):
    train = {**train_config, "data": {**train_config["data"], "labeled_samples": 100}}
    result = run_cli("train", str(write_yaml(tmp_path / "alone.yaml", train)), "-q")
    assert result.returncode == 0, result.stderr
    alone = [json.loads(line) for line in (tmp_path / "mlp" / "metrics.jsonl").read_text().splitlines()]
    assert all("unlabeled_samples" not in m for m in alone)  # 100 labelled samples, nothing else
    assert (tmp_path / "mlp" / "model.json").is_file()

    cfg = _transfer_config(distill_config, tmp_path, "kd", augment=["random-crop", "hflip"])
    cfg["distill"] = {**cfg["distill"], "teacher_outputs": "cached", "cache": {"views": 2, "dir": str(tmp_path / "cache")}}
    result = run_cli("distill", str(write_yaml(tmp_path / "kd.yaml", cfg)), "-q")
    assert result.returncode == 0, result.stderr
    assert "100 labelled and 978 unlabelled training samples" in result.stderr
    metrics = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["labeled_samples"] == 100 and m["unlabeled_samples"] == 978 for m in metrics)
    assert (tmp_path / "cache" / "header.json").is_file()  # the cache covers all 1,078 samples
    assert json.loads((tmp_path / "cache" / "header.json").read_text())["fingerprint"]["data"]["samples"] == 1078

    refused = run_cli("distill", str(write_yaml(tmp_path / "tf.yaml", {**_transfer_config(distill_config, tmp_path, "tf"),
                                                                       "distill": {"method": "tf_kd"}})), "-q")
    assert refused.returncode == 2 and refused.stderr.count("kdistill: error:") == 1 and "978" in refused.stderr
    assert not (tmp_path / "tf").exists()


def test_cached_distillation_with_unlabelled_samples_resumes_exactly(tmp_path, distill_config, monkeypatch):
    raw = _transfer_config(distill_config, tmp_path, "straight", augment=["random-crop", "hflip"])
    raw["distill"] = {**raw["distill"], "teacher_outputs": "cached", "cache": {"views": 2, "dir": str(tmp_path / "cache")}}
    run_distill(validate_config(raw, DistillRunConfig), progress=False)

    resumed = validate_config({**raw, "out": str(tmp_path / "resumed")}, DistillRunConfig)
    interrupt_distill(resumed, monkeypatch, 1 + 17 + 5)  # dry run + one epoch (17 batches) + 5 batches
    run_distill(resumed, progress=False)
    a, b = load_file(tmp_path / "straight" / "last.safetensors"), load_file(tmp_path / "resumed" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_with_unlabelled_samples_match_one_process(tmp_path, distill_config):
    """The label term's normalisation by the global batch's labelled share makes 2 processes = 1 process, although
    the two halves of a batch hold different numbers of labels."""
    cfg = _transfer_config(distill_config, tmp_path, "ddp")
    cfg["train"] = {**cfg["train"], "epochs": 2, "device": "cpu"}
    path = write_yaml(tmp_path / "ddp.yaml", cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "kdistill", "distill", str(path), "-q"], capture_output=True, text=True, env=env,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    single = run_cli("distill", str(path), f"out={tmp_path / 'single'}", "-q")
    assert single.returncode == 0, single.stderr
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(tmp_path / "single" / "last.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # the same arithmetic up to the order of sums
    for x, y in zip(*[[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                      for run in (tmp_path / "ddp", tmp_path / "single")]):
        assert x["ce"] == pytest.approx(y["ce"], rel=1e-5) and x["labeled_samples"] == y["labeled_samples"] == 100
