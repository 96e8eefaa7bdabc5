"""Teachers from outside kdistill (kdistill.training.teacher_files, kdistill.training.teacher_input): the same trained teacher
given as a run directory, as its ONNX file, as a torch.export program and as architecture + weights gives the
same logits and, cached with one seed, the same student; every bad form gets one line and changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import tree_digest, write_yaml
from kdistill.config import DistillRunConfig, TeacherInput, TeacherWeights, validate_config
from kdistill.data import load_dataset
from kdistill.config import DataConfig
from kdistill.errors import KdistillError
from kdistill.deploy.export import export_onnx
from kdistill.models import load_run_model
from kdistill.runner import evaluate_run, run_distill
from kdistill.training.teachers import check_teacher_on_data, load_teacher
from test_cli_errors import cli, assert_user_error

CNN = {"name": "cnn", "channels": [8, 16]}  # the architecture of conftest's teacher_run


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


@pytest.fixture(scope="module")
def teacher_files(teacher_run, tmp_path_factory) -> dict[str, Path]:
    """teacher_run written in each outside form: ONNX (dynamic and fixed batch), .pt2, safetensors, a .pt checkpoint."""
    root = tmp_path_factory.mktemp("teacher-files")
    model, _ = load_run_model(teacher_run)
    example = torch.randn(2, 1, 8, 8)
    files = {"onnx": root / "teacher.onnx", "onnx-batch-1": root / "teacher-b1.onnx", "pt2": root / "teacher.pt2",
             "safetensors": root / "teacher.safetensors", "checkpoint": root / "teacher-ckpt.pt"}
    export_onnx(model, (example,), files["onnx"])
    export_onnx(model, (example[:1],), files["onnx-batch-1"], dynamic_shapes=({},))
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(files["pt2"]))
    shutil.copy(teacher_run / "model.safetensors", files["safetensors"])
    # What DDP + Lightning-style training scripts save: a wrapper dict, a `module.` prefix, other entries beside it.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, files["checkpoint"])
    return files


def forms(teacher_run: Path, files: dict[str, Path]) -> dict[str, object]:
    return {"run": str(teacher_run), "onnx": str(files["onnx"]), "onnx-batch-1": str(files["onnx-batch-1"]),
            "pt2": str(files["pt2"]), "safetensors": TeacherWeights(model=CNN, weights=str(files["safetensors"])),
            "checkpoint": TeacherWeights(model=CNN, weights=str(files["checkpoint"]))}


def test_every_form_of_one_teacher_gives_the_same_logits(teacher_run, teacher_files, digits):
    inputs = digits.train.inputs
    reference = load_teacher(str(teacher_run))(inputs)
    for name, ref in forms(teacher_run, teacher_files).items():
        teacher = load_teacher(ref, data=digits, trust=True)
        logits = teacher(inputs)
        assert logits.shape == reference.shape, name
        assert (logits - reference).abs().max().item() < 1e-4, name
        assert teacher.weights_sha256 and len(teacher.weights_sha256) == 64, name
        assert teacher.has_modules == (name in ("run", "safetensors", "checkpoint")), name


@pytest.mark.slow
def test_cached_students_from_every_form_match(teacher_run, teacher_files, distill_config, tmp_path):
    rows = {}
    for name, ref in forms(teacher_run, teacher_files).items():
        if name == "onnx-batch-1":
            continue
        raw = {**distill_config, "teacher": ref if isinstance(ref, str) else ref.model_dump(), "teacher_trust": True,
               "out": str(tmp_path / name), "train": {"epochs": 1, "lr": 3e-3},
               "distill": {**distill_config["distill"], "teacher_outputs": "cached",
                           "cache": {"dir": str(tmp_path / f"cache-{name}")}}}
        rows[name] = run_distill(validate_config(raw, DistillRunConfig), progress=False)
    accuracies = {name: row["accuracy"] for name, row in rows.items()}
    assert len(set(accuracies.values())) == 1, accuracies
    # Not just the accuracy: nearly the same student. Not bit-equal: ONNX Runtime's logits differ from PyTorch's in
    # the last bits (about 1e-6), which can round a cached float16 logit the other way.
    students = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in rows}
    for name, state in students.items():
        gap = max((state[k] - students["run"][k]).abs().max().item() for k in state)
        assert gap < 1e-3, (name, gap)
    # The run records the teacher file it learnt from, and `evaluate` finds it again.
    record = json.loads((tmp_path / "onnx" / "teacher.json").read_text())
    assert record["path"] == str(teacher_files["onnx"].resolve())
    again = evaluate_run(tmp_path / "onnx")
    assert again["accuracy"] == rows["onnx"]["accuracy"]
    assert again["agreement_with_teacher"] == rows["onnx"]["agreement_with_teacher"] is not None


def test_a_pt2_teacher_needs_teacher_trust(teacher_run, teacher_files, distill_config, tmp_path, capsys):
    raw = {**distill_config, "teacher": str(teacher_files["pt2"])}
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
    assert_user_error(code, err, "teacher_trust: true", "can run code")
    assert not Path(raw["out"]).exists()


def test_feature_methods_refuse_graph_teachers(teacher_files, distill_config, tmp_path, capsys):
    for name in ("onnx", "pt2"):
        raw = {**distill_config, "teacher": str(teacher_files[name]), "teacher_trust": True,
               "distill": {"method": "fitnet"}}
        code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
        assert_user_error(code, err, "fitnet", "intermediate features", "weights: FILE")


def test_a_weights_teacher_serves_feature_methods(teacher_files, distill_config, tmp_path):
    raw = {**distill_config, "teacher": {"model": CNN, "weights": str(teacher_files["safetensors"])},
           "distill": {"method": "fitnet"}, "train": {"epochs": 1, "lr": 3e-3}}
    row = run_distill(validate_config(raw, DistillRunConfig), progress=False)
    assert 0.0 <= row["accuracy"] <= 1.0


def test_a_file_teacher_needs_a_cache_dir(teacher_files, distill_config, tmp_path, capsys):
    raw = {**distill_config, "teacher": str(teacher_files["onnx"]), "distill": {**distill_config["distill"],
                                                                               "teacher_outputs": "cached"}}
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
    assert_user_error(code, err, "distill.cache.dir is required", "onnx teacher")


def test_onnx_teacher_refuses_bf16(teacher_files, digits):
    with pytest.raises(KdistillError, match="ONNX Runtime"):
        load_teacher(str(teacher_files["onnx"]), "bf16", data=digits)


@pytest.mark.parametrize("case,needle", [
    ("missing", "missing"), ("unexpected", "unexpected"), ("shape", "has shape"), ("pickle", "weights-only load refuses"),
    ("absent", "file not found"), ("garbage", "not a readable"), ("not-a-dict", "not a state dict"),
])
def test_bad_weights_files_are_named(teacher_run, digits, tmp_path, case, needle):
    model, _ = load_run_model(teacher_run)
    state = model.state_dict()
    path = tmp_path / "w.pt"
    if case == "missing":
        torch.save({k: v for k, v in state.items() if not k.startswith("classifier")}, path)
    elif case == "unexpected":
        torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    elif case == "shape":
        path = tmp_path / "w.safetensors"
        save_file({k: (v[:5].contiguous() if k.startswith("classifier") else v) for k, v in state.items()}, str(path))
    elif case == "pickle":
        torch.save({"weights": state, "made_by": Path("/tmp")}, path)  # a Path object: weights_only refuses it
    elif case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "not-a-dict":
        torch.save([torch.zeros(2)], path)
    before = tree_digest(tmp_path)
    with pytest.raises(KdistillError, match=needle) as info:
        load_teacher(TeacherWeights(model=CNN, weights=str(path)), data=digits)
    assert "\n" not in str(info.value)
    if case in ("missing", "unexpected", "shape"):
        assert "classifier.0" in str(info.value) or "extra.weight" in str(info.value)
    assert tree_digest(tmp_path) == before


def test_a_teacher_exported_in_training_mode_is_refused(teacher_run, digits, tmp_path):
    model, _ = load_run_model(teacher_run)
    model.train()  # BatchNorm on batch statistics: each image's logits depend on its batch
    program = torch.export.export(model, (torch.randn(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "train-mode.pt2"))
    teacher = load_teacher(str(tmp_path / "train-mode.pt2"), data=digits, trust=True)
    with pytest.raises(KdistillError, match="after model.eval"):
        check_teacher_on_data(teacher, digits)


def test_a_teacher_in_another_class_order_is_warned_about(teacher_run, digits, tmp_path):
    model, _ = load_run_model(teacher_run)
    state = model.state_dict()
    head = [k for k in state if k.startswith("classifier")]
    order = torch.roll(torch.arange(10), 3)  # output i is class i+3
    shuffled = {k: (v[order] if k in head else v) for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in shuffled.items()}, str(tmp_path / "shuffled.safetensors"))
    teacher = load_teacher(TeacherWeights(model=CNN, weights=str(tmp_path / "shuffled.safetensors")), data=digits)
    notes = check_teacher_on_data(teacher, digits)
    assert "validation samples" in notes[0] and "better than chance" in notes[1] and "class order" in notes[1], notes
    fine = load_teacher(TeacherWeights(model=CNN, weights=str(teacher_run / "model.safetensors")), data=digits)
    notes = check_teacher_on_data(fine, digits)
    assert len(notes) == 1 and "validation samples" in notes[0], notes


def test_a_teacher_with_other_outputs_is_refused(digits, tmp_path):
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)).eval()
    export_onnx(other, (torch.randn(2, 1, 8, 8),), tmp_path / "seven.onnx")
    teacher = load_teacher(str(tmp_path / "seven.onnx"), data=digits)
    with pytest.raises(KdistillError, match="10 classes"):
        check_teacher_on_data(teacher, digits)
    wrong_size = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)).eval()
    export_onnx(wrong_size, (torch.randn(2, 3, 16, 16),), tmp_path / "rgb16.onnx")
    teacher = load_teacher(str(tmp_path / "rgb16.onnx"), data=digits)
    with pytest.raises(KdistillError, match="teacher_input"):
        check_teacher_on_data(teacher, digits)


# ---------------------------------------------------------------- teacher_input


def test_teacher_input_undoes_the_data_normalisation(digits):
    """mean 0, std 1 and the data's own size: the teacher sees raw pixels / 16 (digits' scale), exactly."""
    from sklearn.datasets import load_digits

    seen = {}
    probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    probe.register_forward_hook(lambda module, args, out: seen.setdefault("input", args[0]))
    from kdistill.training.teacher_input import TeacherInputAdapter, attach_input_adapter

    adapter = TeacherInputAdapter(TeacherInput(mean=[0.0], std=[1.0]), digits.input_shape, digits.normalization)
    attach_input_adapter(probe, adapter)
    probe(digits.test.inputs[:5])
    pixels = seen["input"]
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    raw = torch.tensor(load_digits().images, dtype=torch.float32) / 16
    # every adapted image is one of the raw digit images
    distances = torch.cdist(pixels.flatten(1), raw.flatten(1)).min(dim=1).values
    assert float(distances.max()) < 1e-5


def test_teacher_input_matches_its_closed_form(teacher_run, digits, tmp_path):
    """An RGB 16x16 teacher with ImageNet statistics sees exactly (resize(x*s+m) - mean) / std, repeated to 3 channels."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    rgb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10)).eval()
    export_onnx(rgb, (torch.randn(2, 3, 16, 16),), tmp_path / "rgb.onnx")
    settings = TeacherInput(mean=mean, std=std, size=16, channels=3)
    teacher = load_teacher(str(tmp_path / "rgb.onnx"), data=digits, teacher_input=settings)
    x = digits.val.inputs[:8]
    m, s = digits.normalization["mean"], digits.normalization["std"]
    by_hand = F.interpolate(x * s + m, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    by_hand = (by_hand.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = rgb(by_hand)
    assert (teacher(x) - expected).abs().max().item() < 1e-4
    assert teacher.spec["teacher_input"]["size"] == 16


def test_teacher_input_is_in_the_cache_fingerprint(teacher_run, digits):
    from kdistill.config import CacheConfig
    from kdistill.training.teacher_cache import cache_fingerprint

    plain = load_teacher(str(teacher_run), data=digits)
    resized = load_teacher(str(teacher_run), data=digits, teacher_input=TeacherInput(size=8))
    a = cache_fingerprint(plain, digits.name, digits.train, digits.classes, None, CacheConfig())
    b = cache_fingerprint(resized, digits.name, digits.train, digits.classes, None, CacheConfig())
    assert "teacher_input" not in a and b["teacher_input"]["size"] == 8
    assert a["teacher_sha256"] == b["teacher_sha256"]


@pytest.mark.parametrize("settings,needle", [
    ({"mean": [0.5]}, "mean and std together"), ({"mean": [0.5, 0.5], "std": [0.2]}, "mean and std together"),
    ({"mean": [0.5], "std": [0.0]}, "positive"), ({"size": [1, 2, 3]}, "height, width"), ({"size": 0}, "between"),
])
def test_bad_teacher_input_settings(distill_config, tmp_path, capsys, settings, needle):
    raw = {**distill_config, "teacher_input": settings}
    code, _, err = cli(capsys, "distill", write_yaml(tmp_path / "d.yaml", raw))
    assert_user_error(code, err, "teacher_input", needle)
