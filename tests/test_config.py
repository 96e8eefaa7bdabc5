"""kdistill.config against hostile and absurd input: non-finite numbers, unbounded sizes, hostile YAML,
unvalidated sections; each is one `kdistill: error:` line and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import one_line_error, tree_digest, write_yaml
from kdistill.cli import main


@pytest.mark.parametrize("override, needle", [
    ("train.lr=.inf", "train.lr"), ("train.lr=1e400", "train.lr"), ("train.lr=.nan", "train.lr"),
    ("train.weight_decay=.inf", "train.weight_decay"), ("train.grad_clip=.inf", "train.grad_clip"),
    ("data.batch_size=1000000000000000000000000000000", "data.batch_size"), ("data.batch_size=10^30", "data.batch_size"),
    ("data.image_size=100000", "data.image_size"), ("model.hidden=[1e400]", "hidden"),
])
def test_non_finite_and_absurd_train_settings_are_refused(tmp_path, train_config, capsys, override, needle):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), override, "-q"]) == 2
    one_line_error(capsys, needle)
    assert not Path(train_config["out"]).exists()


@pytest.mark.parametrize("override, needle", [
    ("distill.temperature=.inf", "distill.temperature"), ("distill.soft_weight=.inf", "distill.soft_weight"),
    ("distill.temperature=1e400", "temperature"), ("distill.terms=[{method: at, weight: .inf}]", "distill.terms"),
    ("distill.cache.batch_size=1000000000000", "distill.cache.batch_size"),
])
def test_non_finite_distill_settings_are_refused(tmp_path, distill_config, capsys, override, needle):
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["distill", str(config), override, "-q"]) == 2
    one_line_error(capsys, needle)
    assert not Path(distill_config["out"]).exists()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    return path


def test_deeply_nested_yaml_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, "name: x\nmodel: " + "[" * 20000 + "]" * 20000 + "\n")
    assert main(["train", str(path), "-q"]) == 2
    one_line_error(capsys, "nested more than")


def test_a_5000_digit_integer_is_one_line(tmp_path, capsys):
    path = _write(tmp_path, "name: x\nseed: " + "9" * 5000 + "\n")
    assert main(["train", str(path), "-q"]) == 2
    one_line_error(capsys, "cannot be read")


def test_an_alias_bomb_under_an_unvalidated_key_is_refused_before_it_expands(tmp_path, train_config, capsys):
    """About 700 bytes that expand to 9^9 strings once the resolved config is written (model kwargs have no schema)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = _write(tmp_path, f"name: bomb\nout: {train_config['out']}\nmodel:\n  name: mlp\n  junk:\n"
                  + "\n".join("    " + line for line in lines) + "\n")
    assert path.stat().st_size < 1000
    assert main(["train", str(path), "-q"]) == 2
    one_line_error(capsys, "expands to more than")
    assert not Path(train_config["out"]).exists()


def test_an_alias_bomb_in_an_override_and_in_data_is_refused(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    value = "{a: &a [x,x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]," \
            " d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
    assert main(["train", str(config), f"model.junk={value}", "-q"]) == 2
    one_line_error(capsys, "override model.junk", "expands to more than")
    assert main(["evaluate", str(tmp_path), "--data", f"root={value}"]) == 2
    one_line_error(capsys, "--data root", "expands to more than")


def test_a_huge_config_file_is_refused(tmp_path, capsys):
    path = _write(tmp_path, "name: x\n" + "#" * (2 << 20) + "\n")
    assert main(["train", str(path), "-q"]) == 2
    one_line_error(capsys, "larger than")


def test_every_section_is_validated_including_sweep_in_a_distill_config(tmp_path, distill_config, capsys):
    distill_config["sweep"] = {"trials": 3, "spacee": {}}
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["distill", str(config), "-q"]) == 2
    one_line_error(capsys, "sweep.spacee")
    assert not Path(distill_config["out"]).exists()


def test_an_empty_sweep_space_is_an_error(tmp_path, distill_config, capsys):
    pytest.importorskip("optuna")
    distill_config["sweep"] = {"trials": 2, "space": {}, "out": str(tmp_path / "sw")}
    config = write_yaml(tmp_path / "kd.yaml", distill_config)
    assert main(["sweep", str(config)]) == 2
    one_line_error(capsys, "empty search space")
    assert not (tmp_path / "sw").exists()


def test_a_path_component_longer_than_the_file_name_limit_is_one_line(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), f"out={tmp_path / ('x' * 300)}", "-q"]) == 2
    one_line_error(capsys, "File name too long")


def test_a_teacher_model_json_asking_for_a_million_layers_is_one_line(tmp_path, teacher_run, distill_config, capsys):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    spec = json.loads((teacher / "model.json").read_text())
    spec["kwargs"]["channels"] = [8] * 1_000_000
    (teacher / "model.json").write_text(json.dumps(spec))
    before = tree_digest(teacher)
    config = write_yaml(tmp_path / "kd.yaml", {**distill_config, "teacher": str(teacher)})
    assert main(["distill", str(config), "-q"]) == 2
    one_line_error(capsys, "channels", "at most")
    assert tree_digest(teacher) == before


def test_a_student_wider_than_the_parameter_limit_is_one_line(tmp_path, train_config, capsys):
    config = write_yaml(tmp_path / "c.yaml", train_config)
    assert main(["train", str(config), "model.hidden=[60000, 60000, 60000, 60000, 60000]", "-q"]) == 2
    one_line_error(capsys, "parameters, more than")


def test_export_opset_outside_the_range_is_one_line_and_writes_nothing(tmp_path, teacher_run, capsys):
    pytest.importorskip("onnxruntime")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    before = tree_digest(run)
    for opset in ("1", "99999"):
        assert main(["export", str(run), "--opset", opset]) == 2
        one_line_error(capsys, f"--opset {opset}", "opsets 18 to")
    assert tree_digest(run) == before


def test_an_image_folder_with_one_class_is_an_error(tmp_path, train_config, capsys):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "img" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), color=i * 40).save(tmp_path / "img" / split / "cat" / f"{i}.png")
    train_config["data"] = {"name": "imagefolder", "root": str(tmp_path / "img"), "batch_size": 2}
    assert main(["train", str(write_yaml(tmp_path / "c.yaml", train_config)), "-q"]) == 2
    one_line_error(capsys, "1 class", "at least 2")


@pytest.mark.parametrize("text", ["seed: 0x" + "f" * 5000, "seed: 1" + ":59" * 3000],
                         ids=["hex", "base-60"])
def test_huge_integers_in_other_bases_are_one_line(tmp_path, capsys, text):
    path = _write(tmp_path, "name: x\n" + text + "\n")
    assert main(["train", str(path), "-q"]) == 2
    one_line_error(capsys, "too large")


def test_a_non_finite_value_under_a_dotted_or_numeric_key_is_one_line(tmp_path, distill_config, capsys):
    for section, value in (("distill", {"a.b": float("nan")}), ("data", {1: float("nan")})):
        raw = {**distill_config, section: {**distill_config[section], **value}}
        assert main(["distill", str(write_yaml(tmp_path / "c.yaml", raw)), "-q"]) == 2
        one_line_error(capsys, "must be a finite number")


def test_float_widths_are_bounded_too(tmp_path, train_config, capsys):
    assert main(["train", str(write_yaml(tmp_path / "c.yaml", train_config)), "model.hidden=[1.0e+9]", "-q"]) == 2
    one_line_error(capsys, "model.hidden", "limit")
