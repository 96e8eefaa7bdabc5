"""`kdistill train` / `distill` / `evaluate` with `task: text-classification`, through the real CLI, on a
CSV slice of Debian-sections with non-default column names and a tiny BERT folder built here."""

from __future__ import annotations

import csv
import os
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli, tree_digest, write_yaml

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

# ../shared beside the checkout (or KDISTILL_SHARED, for a clone elsewhere); tests skip when it is absent.
DEBIAN = Path(os.environ.get("KDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "debian-sections"
LABELS = ["admin", "devel", "libs", "net"]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    """train/validation/test CSVs with columns `description,section` and a 4-layer tiny BERT in `tiny-bert/`."""
    if not (DEBIAN / "train.csv").is_file():
        pytest.skip("the Debian-sections data set is not on this machine")
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


def test_text_teacher_then_distilled_student_through_the_cli(tmp_path, text_data):
    teacher_cfg = {"task": "text-classification", "name": "tt", "data": _data(text_data),
                   "model": f"hf:{text_data / 'tiny-bert'}", "train": {"epochs": 2, "lr": 1e-3, "device": "cpu"},
                   "out": str(tmp_path / "teacher")}
    result = run_cli("train", str(write_yaml(tmp_path / "teacher.yaml", teacher_cfg)), "-q")
    assert result.returncode == 0, result.stderr
    teacher = tmp_path / "teacher"
    for name in ("config.yaml", "model.json", "config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "report.json"):
        assert (teacher / name).is_file(), name
    hf_config = json.loads((teacher / "config.json").read_text())
    assert [hf_config["id2label"][str(i)] for i in range(4)] == LABELS  # sorted label names, saved with the model
    assert [json.loads(line)["epoch"] for line in (teacher / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    row = json.loads((teacher / "report.json").read_text())["rows"][0]
    assert row["role"] == "teacher" and row["samples"] == 32 and row["latency_ms"]["batch"] == 1 and row["params"] > 0

    student_cfg = {"task": "text-classification", "name": "ts", "data": _data(text_data), "teacher": str(teacher),
                   "student": {"from_teacher": {"num_layers": 2}}, "distill": {"temperature": 2.0, "alpha": 0.5},
                   "train": {"epochs": 1, "lr": 1e-3, "device": "cpu"}, "out": str(tmp_path / "student")}
    path = write_yaml(tmp_path / "student.yaml", student_cfg)
    result = run_cli("distill", str(path), "-q")
    assert result.returncode == 0, result.stderr
    assert "| ts | distilled |" in result.stdout
    student = tmp_path / "student"
    report = json.loads((student / "report.json").read_text())["rows"][0]
    assert report["params"] < row["params"] and report["agreement_with_teacher"] is not None
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(student)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.kdistill_layers_from_teacher == [0, 2]

    evaluated = run_cli("evaluate", str(student), "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr
    assert (student / "report-val.json").is_file() and "| ts | distilled |" in evaluated.stdout

    before = tree_digest(student)
    again = run_cli("distill", str(path), "-q")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert tree_digest(student) == before


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
