"""`kdistill train` / `distill` / `evaluate` with `task: text-classification`, through the real CLI, on a
CSV slice of Debian-sections with non-default column names and a tiny BERT folder built here."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli, tree_digest, write_yaml

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

# A small slice of the real Debian-sections set, kept in the repository (tests/data/cut_debian_slice.py).
DEBIAN = Path(__file__).resolve().parent / "data" / "debian-sections"
LABELS = ["admin", "devel", "libs", "net"]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    """train/validation/test CSVs with columns `description,section` and a 4-layer tiny BERT in `tiny-bert/`."""
    out = tmp_path_factory.mktemp("text")
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        per: dict[str, list[str]] = {name: [] for name in LABELS}
        with open(DEBIAN / f"{split}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["label"] in per and len(per[row["label"]]) < n:
                    per[row["label"]].append(row["text"])
        with open(out / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["description", "section"])
            for name in reversed(LABELS):  # not sorted in the file: ids must still come out sorted
                writer.writerows([text, name] for text in per[name])
    words = Counter(w for row in csv.DictReader(open(out / "train.csv")) for w in re.findall(r"\w+|[^\w\s]", row["description"].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(700)]
    model_dir = out / "tiny-bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True).save_pretrained(model_dir)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(model_dir)
    return out


def _data(root: Path) -> dict:
    return {"format": "csv", "root": str(root), "text_column": "description", "label_column": "section",
            "max_length": 48, "batch_size": 16}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory, text_data) -> dict:
    """A tiny-BERT teacher trained through the CLI and a 2-layer student distilled from it (with their configs)."""
    root = tmp_path_factory.mktemp("text-runs")
    teacher_cfg = {"task": "text-classification", "name": "tt", "data": _data(text_data),
                   "model": f"hf:{text_data / 'tiny-bert'}", "train": {"epochs": 2, "lr": 1e-3, "device": "cpu"},
                   "out": str(root / "teacher")}
    teacher = run_cli("train", str(write_yaml(root / "teacher.yaml", teacher_cfg)), "-q")
    assert teacher.returncode == 0, teacher.stderr
    student_cfg = {"task": "text-classification", "name": "ts", "data": _data(text_data), "teacher": str(root / "teacher"),
                   "student": {"from_teacher": {"num_layers": 2}}, "distill": {"temperature": 2.0, "alpha": 0.5},
                   "train": {"epochs": 1, "lr": 1e-3, "device": "cpu"}, "out": str(root / "student")}
    config = write_yaml(root / "student.yaml", student_cfg)
    student = run_cli("distill", str(config), "-q")
    assert student.returncode == 0, student.stderr
    return {"teacher": root / "teacher", "student": root / "student", "student_config": config, "student_stdout": student.stdout}


def test_text_teacher_then_distilled_student_through_the_cli(text_runs):
    teacher = text_runs["teacher"]
    for name in ("config.yaml", "model.json", "config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "report.json"):
        assert (teacher / name).is_file(), name
    hf_config = json.loads((teacher / "config.json").read_text())
    assert [hf_config["id2label"][str(i)] for i in range(4)] == LABELS  # sorted label names, saved with the model
    assert [json.loads(line)["epoch"] for line in (teacher / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    row = json.loads((teacher / "report.json").read_text())["rows"][0]
    assert row["role"] == "teacher" and row["samples"] == 32 and row["latency_ms"]["batch"] == 1 and row["params"] > 0

    assert "| ts | distilled |" in text_runs["student_stdout"]
    student = text_runs["student"]
    report = json.loads((student / "report.json").read_text())["rows"][0]
    assert report["params"] < row["params"] and report["agreement_with_teacher"] is not None
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(student)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.kdistill_layers_from_teacher == [0, 2]

    evaluated = run_cli("evaluate", str(student), "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (student / "report-val.json").is_file() and "| ts | distilled |" in evaluated.stdout

    before = tree_digest(student)
    again = run_cli("distill", str(text_runs["student_config"]), "-q")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert tree_digest(student) == before


# int8 variants of the tiny BERT must stay within this many points of fp32 on the 32-sample validation slice.
INT8_TOLERANCE_POINTS = 10.0


def test_text_export_round_trip_onnx_and_int8(text_runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    student = text_runs["student"]
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run_cli("export", str(student), "--quantize", "int8", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert not any(elsewhere.iterdir())  # ONNX Runtime's shape-inference dumps must not land in the user's directory
    result = run_cli("export", str(student), "--format", "torch", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    record = json.loads((student / "export" / "export.json").read_text())
    assert set(record["variants"]) == {"onnx", "onnx-int8-dynamic", "torch-int8-dynamic"}  # no static int8 for text
    assert record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    fp32 = record["variants"]["onnx"]["verify"]
    assert fp32["samples"] == 32 and fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    for variant in ("onnx-int8-dynamic", "torch-int8-dynamic"):
        check = record["variants"][variant]["verify"]
        assert abs(check["accuracy"] - check["reference_accuracy"]) * 100 <= INT8_TOLERANCE_POINTS, (variant, check)
    assert record["variants"]["onnx-int8-dynamic"]["size_bytes"] < 0.5 * record["variants"]["onnx"]["size_bytes"]

    # The graph takes any batch size and sequence length, padded or not, and gives PyTorch's logits.
    model = transformers.AutoModelForSequenceClassification.from_pretrained(student).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(student)
    texts = ["a library for parsing network packets", "tools to administer a server and back up its disks "
             "every night with rotation of old archives", "x"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    session = ort.InferenceSession(str(student / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {k: v.numpy() for k, v in enc.items()})[0]
    import torch

    with torch.no_grad():
        reference = model(**enc).logits.numpy()
    assert onnx_logits.shape == (3, 4) and abs(onnx_logits - reference).max() < 1e-4


def test_text_compare_table_and_plots(text_runs, text_data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    result = run_cli("compare", str(text_runs["student"]), "--out", str(out), "--repeats", "3")  # the teacher comes by itself
    assert result.returncode == 0, result.stderr
    table = json.loads((out / "compare.json").read_text())
    labels = [r["label"] for r in table["rows"]]
    assert labels[0] == "teacher" and "student" in labels and table["samples"] == 32 and table["dataset"] == text_data.name
    assert table["teacher"] == "teacher" and all(r["latency_ms"]["median"] > 0 for r in table["rows"])
    rows = {r["label"]: r for r in table["rows"]}
    assert rows["student"]["agreement_with_teacher"] is not None and rows["student"]["vs_teacher"]["times_smaller"] > 1
    for name in ("compare.md", "compare.html", "tradeoff.png", "curves.png", "reliability.png"):
        assert (out / name).is_file(), name
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_data_errors_are_one_line(tmp_path, text_data):
    cfg = {"task": "text-classification", "name": "bad", "data": {**_data(text_data), "text_column": "text"},
           "model": f"hf:{text_data / 'tiny-bert'}", "train": {"epochs": 1, "device": "cpu"}, "out": str(tmp_path / "bad")}
    result = run_cli("train", str(write_yaml(tmp_path / "bad.yaml", cfg)))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "no column 'text' (columns: description, section)" in result.stderr
    cfg["data"] = _data(text_data)
    cfg["model"] = f"hf:{tmp_path}"
    result = run_cli("train", str(write_yaml(tmp_path / "bad2.yaml", cfg)))
    assert result.returncode == 2 and "not a Hugging Face model folder" in result.stderr
    assert not (tmp_path / "bad").exists()
    distill = {"task": "text-classification", "name": "d", "data": _data(text_data), "teacher": f"hf:{text_data / 'tiny-bert'}",
               "student": {"from_teacher": {"num_layers": 1}}, "out": str(tmp_path / "d")}
    result = run_cli("distill", str(write_yaml(tmp_path / "d.yaml", distill)))
    assert result.returncode == 2 and "not a trained classifier" in result.stderr


def test_an_interrupted_text_run_resumes_from_its_last_checkpoint(tmp_path, text_data):
    # A finished 2-epoch run, set back to how a kill after epoch 1 leaves it (checkpoint-epoch-1 in state/, no
    # final model or report): running the same config again resumes there and ends with the same weights.
    from safetensors.torch import load_file

    cfg = {"task": "text-classification", "name": "r", "seed": 3, "data": _data(text_data),
           "model": f"hf:{text_data / 'tiny-bert'}", "train": {"epochs": 2, "lr": 1e-3, "device": "cpu"}, "out": str(tmp_path / "r")}
    path = write_yaml(tmp_path / "r.yaml", cfg)
    assert run_cli("train", str(path), "-q").returncode == 0
    run = tmp_path / "r"
    finished = load_file(run / "model.safetensors")
    checkpoints = sorted((run / "state").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 2
    import shutil

    shutil.rmtree(checkpoints[-1])
    for name in ("model.safetensors", "report.json", "metrics.jsonl"):
        (run / name).unlink()
    # A mark in the checkpoint's log: a run that started over instead of resuming would not carry it.
    state = checkpoints[0] / "trainer_state.json"
    record = json.loads(state.read_text())
    next(e for e in record["log_history"] if "loss" in e)["loss"] = 123.0
    state.write_text(json.dumps(record))
    resumed = run_cli("train", str(path), "-q")
    assert resumed.returncode == 0, resumed.stderr
    again = load_file(run / "model.safetensors")
    assert all(torch_allclose(again[k], finished[k]) for k in finished)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0]["loss"] == 123.0


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-5))


def test_a_text_run_whose_loss_goes_nan_stops_with_one_line(tmp_path, text_data, capsys, monkeypatch):
    from kdistill.cli import main

    real = transformers.Trainer.compute_loss
    monkeypatch.setattr(transformers.Trainer, "compute_loss",
                        lambda self, *a, **k: real(self, *a, **k) * float("nan") if self.state.global_step >= 2
                        else real(self, *a, **k))
    cfg = {"task": "text-classification", "name": "nan", "data": _data(text_data), "model": f"hf:{text_data / 'tiny-bert'}",
           "train": {"epochs": 2, "device": "cpu"}, "out": str(tmp_path / "nan")}
    assert main(["train", str(write_yaml(tmp_path / "nan.yaml", cfg)), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epoch 1, step 3: the loss went non-finite (nan)" in err, err
    assert not (tmp_path / "nan" / "report.json").exists() and not (tmp_path / "nan" / "model.safetensors").exists()


def test_a_text_data_set_with_one_class_is_an_error(tmp_path, text_data):
    one = tmp_path / "one"
    one.mkdir()
    for split in ("train", "validation", "test"):
        rows = [r for r in csv.DictReader(open(text_data / f"{split}.csv")) if r["section"] == "net"]
        with open(one / f"{split}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["description", "section"])
            writer.writeheader()
            writer.writerows(rows)
    cfg = {"task": "text-classification", "name": "one", "data": _data(one), "model": f"hf:{text_data / 'tiny-bert'}",
           "train": {"epochs": 1, "device": "cpu"}, "out": str(tmp_path / "run")}
    result = run_cli("train", str(write_yaml(tmp_path / "one.yaml", cfg)))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "1 class (net)" in result.stderr and "at least 2" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("distill, terms", [
    ({"method": "dkd", "warmup_epochs": 1, "beta": 2.0}, ["ce", "dkd"]),
    ({"method": "dist"}, ["ce", "dist"]),
    ({"method": "ls_kd"}, ["ce", "ls_kd"]),
    ({"method": "kd", "terms": [{"method": "dist", "weight": 0.5}]}, ["ce", "kd", "dist"]),
], ids=["dkd", "dist", "ls_kd", "kd+dist-term"])
def test_text_distils_with_the_method_library(text_runs, text_data, tmp_path, distill, terms):
    """The vision methods that need only logits, with the same config keys, through the Hugging Face path."""
    cfg = {"task": "text-classification", "name": "m", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": distill,
           "train": {"epochs": 1, "lr": 1e-3, "device": "cpu"}, "out": str(tmp_path / "m")}
    result = run_cli("distill", str(write_yaml(tmp_path / "m.yaml", cfg)), "-q")
    assert result.returncode == 0, result.stderr
    line = json.loads((tmp_path / "m" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(terms) <= set(line), line  # each term of the method is logged
    assert line["loss"] == pytest.approx(sum(line[t] for t in terms), rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_a_text_run_logs_to_tensorboard(text_runs, text_data, tmp_path):
    """train.log_to on a text run: the Trainer's logs per epoch, named as in metrics.jsonl, in the run's tensorboard/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = {"task": "text-classification", "name": "tb", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": {"method": "kd"},
           "train": {"epochs": 2, "lr": 1e-3, "device": "cpu", "log_to": ["tensorboard"]}, "out": str(tmp_path / "tb")}
    result = run_cli("distill", str(write_yaml(tmp_path / "tb.yaml", cfg)), "-q")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    lines = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "kd", "ce", "val_accuracy", "lr"):
        logged = sorted((e.step, e.value) for e in events.Scalars(key))
        assert logged == [(line["epoch"], pytest.approx(line[key], rel=1e-5)) for line in lines], key


def test_a_feature_method_on_text_is_one_line(text_runs, text_data, tmp_path):
    cfg = {"task": "text-classification", "name": "f", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": {"method": "at"}, "out": str(tmp_path / "f")}
    result = run_cli("distill", str(write_yaml(tmp_path / "f.yaml", cfg)))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "method 'at' runs on vision tasks only" in result.stderr and "dkd" in result.stderr
    bad = {**cfg, "distill": {"method": "dkd", "betta": 1.0}}
    result = run_cli("distill", str(write_yaml(tmp_path / "b.yaml", bad)))
    assert result.returncode == 2 and "unknown parameter 'distill.betta'" in result.stderr, result.stderr
    assert not (tmp_path / "f").exists()


def test_overwrite_refuses_a_user_file_in_a_text_runs_state(text_runs, tmp_path):
    import shutil

    run = tmp_path / "student"
    shutil.copytree(text_runs["student"], run)
    assert (run / "state" / "kdistill-manifest.json").is_file()  # the Trainer's checkpoints are recorded
    (run / "state" / "notes.txt").write_text("mine\n")
    before = tree_digest(run)
    cfg = {**yaml_load(text_runs["student_config"]), "out": str(run)}
    result = run_cli("distill", str(write_yaml(tmp_path / "s.yaml", cfg)), "--overwrite", "-q")
    assert result.returncode == 2 and "state/notes.txt" in result.stderr, result.stderr
    assert tree_digest(run) == before


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def test_text_transfer_rows_unlabelled_learn_from_the_teacher_only(text_runs, text_data, tmp_path):
    """data.labeled_samples and data.unlabeled on text: the rest and the file's texts join the training rows with
    label -1 in a distill run (label term masked); a train run keeps only the same stratified labelled rows."""
    from kdistill.errors import KdistillError
    from kdistill.text.data import TextDataConfig, load_text_splits

    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"body": f"library for parsing data {i}"}) + "\n" for i in range(10)))
    data = {**_data(text_data), "labeled_samples": 20, "unlabeled": {"path": str(extra), "text_column": "body"}}
    full = load_text_splits(TextDataConfig(**_data(text_data)))
    transfer = load_text_splits(TextDataConfig(**data))
    alone = load_text_splits(TextDataConfig(**data), unlabeled=False)
    assert len(transfer.train) == 96 + 10 and sum(r["label"] >= 0 for r in transfer.train) == 20
    assert [r for r in transfer.train if r["label"] >= 0] == alone.train  # the same 20 labelled rows
    assert all(r in full.train for r in alone.train) and sorted(Counter(r["label"] for r in alone.train).values()) == [5] * 4
    assert transfer.train[-1] == {"text": "library for parsing data 9", "label": -1}
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"body": full.test[0]["text"]}) + "\n")
    with pytest.raises(KdistillError, match="are validation or test texts"):
        load_text_splits(TextDataConfig(**{**data, "unlabeled": {"path": str(leak), "text_column": "body"}}))

    cfg = {"task": "text-classification", "name": "tr", "data": data, "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": {"method": "kd"},
           "train": {"epochs": 1, "lr": 1e-3, "device": "cpu"}, "out": str(tmp_path / "tr")}
    result = run_cli("distill", str(write_yaml(tmp_path / "tr.yaml", cfg)), "-q")
    assert result.returncode == 0, result.stderr
    assert "20 labelled and 86 unlabelled training rows" in result.stderr
    line = json.loads((tmp_path / "tr" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(line["ce"]) and math.isfinite(line["kd"])
    refused = run_cli("distill", str(write_yaml(tmp_path / "tf.yaml", {**cfg, "distill": {"method": "tf_kd"},
                                                                       "out": str(tmp_path / "tf")})), "-q")
    assert refused.returncode == 2 and refused.stderr.count("kdistill: error:") == 1 and "86" in refused.stderr


def test_text_baseline_trains_the_same_student_alone(text_runs, text_data, tmp_path):
    """--baseline on a text config: the alone student is built from the teacher's layers like the distilled one,
    trained on labels only (method ce), and reported as a student."""
    cfg = {"task": "text-classification", "name": "tb", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": {"method": "kd"},
           "train": {"epochs": 1, "lr": 1e-3, "device": "cpu"}, "out": str(tmp_path / "tb")}
    result = run_cli("distill", str(write_yaml(tmp_path / "tb.yaml", cfg)), "--baseline", "--seeds", "1", "-q")
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "tb" / "report.json").read_text())["rows"]
    assert [r["role"] for r in rows] == ["teacher", "student", "distilled"]
    alone = json.loads((tmp_path / "tb" / "alone-seed0" / "report.json").read_text())["rows"][0]
    assert alone["role"] == "student" and rows[1]["accuracy"] == alone["accuracy"]
    assert "ce" in json.loads((tmp_path / "tb" / "alone-seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "tb" / "compare" / "compare.md").is_file()


@pytest.mark.parametrize("student, distill, terms", [
    ({"from_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}},
     {"method": "tinybert", "attention_weight": 0.5, "terms": [{"method": "kd", "temperature": 2.0}]},
     ["ce", "hidden", "attention", "kd"]),
    ({"from_teacher": {"num_layers": 2}}, {"method": "minilm"}, ["ce", "attention", "value_relation"]),
], ids=["tinybert+kd", "minilm"])
def test_text_feature_methods_distil_through_the_cli(text_runs, text_data, tmp_path, student, distill, terms):
    """TinyBERT (a narrower student: its projection trains with it, then leaves the saved model) and MiniLM read
    both encoders' layers through hooks, with the live teacher."""
    from safetensors import safe_open

    cfg = {"task": "text-classification", "name": "feat", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": student, "distill": distill, "train": {"epochs": 2, "lr": 1e-3, "device": "cpu"},
           "out": str(tmp_path / "feat")}
    result = run_cli("distill", str(write_yaml(tmp_path / "feat.yaml", cfg)), "-q")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "feat" / "metrics.jsonl").read_text().splitlines()]
    assert set(terms) <= set(lines[0]), lines[0]
    assert lines[0]["loss"] == pytest.approx(sum(lines[0][t] for t in terms), rel=1e-4)
    assert all(lines[0][t] > 0 for t in terms)
    with safe_open(str(tmp_path / "feat" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "kdistill_method" in k]
    checkpoint = sorted((tmp_path / "feat" / "state").glob("checkpoint-*"))[-1]
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:  # the resume checkpoint keeps the projection
        assert bool([k for k in f.keys() if "kdistill_method" in k]) == (distill["method"] == "tinybert")
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "feat")
    assert loaded.config.num_hidden_layers == 2
    assert json.loads((tmp_path / "feat" / "report.json").read_text())["rows"][0]["agreement_with_teacher"] is not None


def test_kdistill_sweep_searches_a_text_config(text_runs, text_data, tmp_path):
    """`kdistill sweep` on a text config: each trial is a Hugging Face distill run, reported epoch by epoch; the
    objective is the run's own best validation accuracy, and best.yaml is a valid text config of the best trial."""
    pytest.importorskip("optuna")
    cfg = {"task": "text-classification", "name": "tsw", "data": _data(text_data), "teacher": str(text_runs["teacher"]),
           "student": {"from_teacher": {"num_layers": 1}}, "distill": {"temperature": 2.0, "alpha": 0.5},
           "train": {"epochs": 2, "lr": 1e-3, "device": "cpu"},
           "sweep": {"seed": 0, "startup_trials": 2, "space": {"distill.temperature": {"low": 1.0, "high": 8.0}}}}
    path = write_yaml(tmp_path / "sweep.yaml", cfg)
    out = tmp_path / "sweep"
    result = run_cli("sweep", str(path), "--trials", "3", "--out", str(out), "--methods", "kd", "dist")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "trials.json").read_text())
    assert summary["objective"] == "best validation accuracy" and len(summary["trials"]) == 3
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert complete and {t["state"] for t in summary["trials"]} <= {"complete", "pruned"}
    for t in complete:
        epochs = [json.loads(line) for line in (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert len(epochs) == 2 and t["epochs"] == 2
        assert t["val_accuracy"] == pytest.approx(max(e["val_accuracy"] for e in epochs), abs=1e-9)
        assert t["test_accuracy"] == json.loads((Path(t["run_dir"]) / "report.json").read_text())["rows"][0]["accuracy"]
        assert t["overrides"]["distill.method"] in ("kd", "dist")
    assert summary["best"]["val_accuracy"] == max(t["val_accuracy"] for t in complete)
    from kdistill import tasks

    best = tasks.for_config(out / "best.yaml", []).load_config(out / "best.yaml", [], "distill")
    assert best.distill.method == summary["best"]["overrides"]["distill.method"]
    again = run_cli("sweep", str(path), "--trials", "3", "--out", str(out), "--methods", "kd", "dist")
    assert again.returncode == 0 and "running" not in again.stdout  # a finished study runs no more trials
