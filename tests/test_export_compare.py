"""`kdistill export` (ONNX, int8) and `kdistill compare` (table, page, plots) on real digits runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, tree_digest
from kdistill.config import DataConfig, DistillRunConfig, TrainRunConfig, validate_config
from kdistill.data import load_dataset
from kdistill.errors import KdistillError
from kdistill.deploy.export import load_torch_int8, quantize_torch_dynamic, read_export_record
from kdistill.models import load_run_model
from kdistill.evaluate.report import calibration
from kdistill.runner import run_distill, run_train

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

DATA = {"name": "digits", "batch_size": 64}
# int8 variants may cost accuracy; on digits they must stay within this many points of fp32 (val split, 359 samples).
INT8_TOLERANCE_POINTS = 3.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A CNN teacher, an MLP student alone and the MLP distilled from the teacher (digits, a few epochs)."""
    root = tmp_path_factory.mktemp("runs")
    teacher = root / "teacher"
    run_train(validate_config({"name": "teacher", "data": DATA, "model": {"name": "cnn", "channels": [8, 16]},
                               "train": {"epochs": 3, "lr": 3e-3}, "out": str(teacher)}, TrainRunConfig), progress=False)
    student = root / "student"
    run_train(validate_config({"name": "student", "role": "student", "data": DATA, "model": {"name": "mlp", "hidden": [32]},
                               "train": {"epochs": 3, "lr": 3e-3}, "out": str(student)}, TrainRunConfig), progress=False)
    distilled = root / "distilled"
    run_distill(validate_config({"name": "distilled", "data": DATA, "teacher": str(teacher), "student": {"name": "mlp", "hidden": [32]},
                                 "distill": {"method": "kd"}, "train": {"epochs": 3, "lr": 3e-3}, "out": str(distilled)},
                                DistillRunConfig), progress=False)
    return {"teacher": teacher, "student": student, "distilled": distilled}


def _val():
    return load_dataset(DataConfig.model_validate(DATA)).val


def test_onnx_export_round_trip_and_int8_variants(runs):
    import onnxruntime as ort

    run = runs["teacher"]
    # A relative RUN_DIR: ONNX Runtime's pre-processing runs inside the work folder, so paths must not be relative to it.
    result = run_cli("export", run.name, "--quantize", "int8", cwd=run.parent)
    assert result.returncode == 0, result.stderr
    assert "model.onnx" in result.stdout and "argmax agreement" in result.stdout
    record = read_export_record(run)
    assert set(record["variants"]) == {"onnx", "onnx-int8-dynamic", "onnx-int8-static"}
    for info in record["variants"].values():
        assert (run / "export" / info["file"]).stat().st_size == info["size_bytes"]

    # Independent check: ONNX Runtime on real validation samples, at a batch size never exported, vs PyTorch.
    model, _ = load_run_model(run)
    val = _val()
    inputs = val.inputs[:37]
    with torch.no_grad():
        expected = model(inputs).numpy()
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.numpy()})[0]
    assert got.shape == (37, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    fp32 = record["variants"]["onnx"]["verify"]
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4 and fp32["samples"] == len(val)

    for variant in ("onnx-int8-dynamic", "onnx-int8-static"):
        check = record["variants"][variant]["verify"]
        assert check["accuracy"] >= check["reference_accuracy"] - INT8_TOLERANCE_POINTS / 100, (variant, check)
        assert record["variants"][variant]["size_bytes"] < record["variants"]["onnx"]["size_bytes"]  # int8 weights (graph overhead dominates a model this small)
    assert record["variants"]["onnx-int8-static"]["calibration_samples"] == 256


def test_torch_int8_file_rebuilds_the_quantised_model_exactly(runs):
    run = runs["student"]
    result = run_cli("export", str(run), "--format", "torch", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    model, _ = load_run_model(run)
    loaded = load_torch_int8(model, run / "export" / "model.int8-dynamic.safetensors")
    direct = quantize_torch_dynamic(model)
    val = _val()
    with torch.no_grad():
        a, b, ref = loaded(val.inputs), direct(val.inputs), model(val.inputs)
    assert torch.equal(a, b)  # the file holds exactly the quantised weights
    assert not torch.equal(a, ref)  # and they are int8, not the fp32 ones
    agreement = (a.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agreement >= 0.95
    check = read_export_record(run)["variants"]["torch-int8-dynamic"]["verify"]
    assert check["accuracy"] >= check["reference_accuracy"] - INT8_TOLERANCE_POINTS / 100


def test_export_refuses_to_overwrite_and_bad_requests(runs, tmp_path):
    run = runs["distilled"]
    assert run_cli("export", str(run)).returncode == 0
    before = tree_digest(run)
    again = run_cli("export", str(run))
    assert again.returncode == 2
    assert again.stderr.startswith("kdistill: error:") and "--overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    assert tree_digest(run) == before
    torch_fp32 = run_cli("export", str(run), "--format", "torch")
    assert torch_fp32.returncode == 2 and "--quantize int8" in torch_fp32.stderr
    missing = run_cli("export", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert not list((run / "export").glob(".work-*"))  # no work folder left behind
    assert run_cli("export", str(run), "--overwrite").returncode == 0


def test_corrupt_int8_file_is_a_clear_error(runs, tmp_path):
    model, _ = load_run_model(runs["student"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(KdistillError, match="corrupt int8 weights"):
        load_torch_int8(model, bad)


def test_calibration_matches_an_explicit_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen) * 3
    labels = torch.randint(0, 7, (500,), generator=gen)
    bins = 10
    probs = torch.softmax(logits, -1).tolist()
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [(max(p), int(max(range(7), key=lambda k: p[k]) == y)) for p, y in zip(probs, labels.tolist())
                   if lo < max(p) <= hi]
        if members:
            conf = sum(c for c, _ in members) / len(members)
            acc = sum(a for _, a in members) / len(members)
            total += len(members) / 500 * abs(acc - conf)
    got = calibration(logits, labels, bins=bins)
    assert got["ece"] == pytest.approx(total, abs=1e-6)
    assert sum(b["count"] for b in got["bins"]) == 500
    # Closed forms: uniform logits have confidence 1/C, so ECE = |accuracy - 1/C|; certain and right gives 0.
    flat_labels = torch.tensor([0, 0, 1, 2])
    flat_acc = float((torch.zeros(4, 4).argmax(-1) == flat_labels).float().mean())
    assert calibration(torch.zeros(4, 4), flat_labels)["ece"] == pytest.approx(abs(flat_acc - 0.25), abs=1e-6)
    sure = calibration(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), torch.tensor([0, 1]))
    assert sure["ece"] == pytest.approx(0.0, abs=1e-6)


def test_compare_writes_table_page_and_plots(runs, tmp_path):
    from PIL import Image

    for extra in ([], ["--format", "torch", "--quantize", "int8"]):  # ONNX and PyTorch int8 rows for the student
        assert run_cli("export", str(runs["student"]), "--overwrite", *extra).returncode == 0
    out = tmp_path / "cmp"
    # Only the students are named: the teacher the distilled run recorded joins as the reference row.
    result = run_cli("compare", str(runs["student"]), str(runs["distilled"]), "--out", str(out), "--repeats", "5")
    assert result.returncode == 0, result.stderr
    assert "| model | role | format |" in result.stdout
    for name in ("compare.json", "compare.md", "compare.html", "tradeoff.png", "curves.png", "reliability.png"):
        assert (out / name).is_file(), name
    for png in ("tradeoff.png", "curves.png", "reliability.png"):
        with Image.open(out / png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300
    report = json.loads((out / "compare.json").read_text())
    labels = [r["label"] for r in report["rows"]]
    assert labels[0] == "teacher" and report["teacher"] == "teacher"
    assert "student [onnx]" in labels and "student [torch-int8-dynamic]" in labels and "distilled" in labels
    teacher_row = report["rows"][0]
    assert teacher_row["agreement_with_teacher"] is None
    assert teacher_row["vs_teacher"]["times_faster"] == 1.0 and teacher_row["vs_teacher"]["accuracy_delta_points"] == 0.0
    for row in report["rows"]:
        assert row["latency_ms"]["repeats"] == 5 and row["latency_ms"]["p10"] <= row["latency_ms"]["median"] <= row["latency_ms"]["p90"]
        assert 0.0 <= row["ece"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["size_bytes"] == Path(row["file"]).stat().st_size
        assert math.isclose(row["vs_teacher"]["times_smaller"], teacher_row["size_bytes"] / row["size_bytes"])
    student = next(r for r in report["rows"] if r["label"] == "student")
    onnx = next(r for r in report["rows"] if r["label"] == "student [onnx]")
    assert onnx["accuracy"] == student["accuracy"]  # fp32 ONNX predicts what PyTorch predicts
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    table_lines = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table_lines) == len(report["rows"]) + 1  # header + one line per row

    # A second comparison into the same folder needs --overwrite; a folder of someone else's files is refused.
    before = tree_digest(out)
    again = run_cli("compare", str(runs["student"]), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert tree_digest(out) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = run_cli("compare", str(runs["student"]), "--out", str(foreign))
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_compare_draws_runs_that_differ_only_by_seed_as_one_group(runs, tmp_path):
    from kdistill.runner import read_run_config

    other = read_run_config(runs["student"]).model_dump(mode="json") | {"seed": 1, "out": str(tmp_path / "student-seed1")}
    run_train(validate_config(other, TrainRunConfig), progress=False)
    out = tmp_path / "cmp"
    result = run_cli("compare", str(runs["student"]), str(tmp_path / "student-seed1"), str(runs["distilled"]),
                     "--out", str(out), "--repeats", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "compare.json").read_text())
    groups = {g["group"]: g for g in report["groups"] if g["variant"] == "pytorch"}
    assert groups["student"]["runs"] == ["student", "student-seed1"] and groups["distilled"]["runs"] == ["distilled"]
    seeds = [r["accuracy"] for r in report["rows"] if r["group"] == "student" and r["variant"] == "pytorch"]
    assert groups["student"]["accuracy_mean"] == pytest.approx(sum(seeds) / 2)
    assert "Runs that differ only by seed" in (out / "compare.md").read_text()
    assert (out / "tradeoff.png").is_file() and (out / "curves.png").is_file()


def test_compare_expands_a_folder_of_runs(runs, tmp_path):
    out = tmp_path / "cmp"
    result = run_cli("compare", str(runs["teacher"].parent), "--out", str(out), "--repeats", "3", "--no-plots")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "compare.json").read_text())
    assert {r["run"] for r in report["rows"]} == {"teacher", "student", "distilled"}
    assert not (out / "tradeoff.png").exists()
    bad = run_cli("compare", str(tmp_path / "empty-nothing"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("kdistill: error:")
