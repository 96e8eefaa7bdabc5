"""Command-line error handling of `kdistill train`, `distill` and `evaluate`.

The contract: a user error prints exactly one line `kdistill: error: <what is wrong and how
to fix it>` on stderr, exits with code 2, shows no traceback, damages or overwrites nothing
already on disk, and leaves nothing half-written behind.

Most cases call `kdistill.cli.main([...])` in-process (fast); a few go through the real
entry point in a subprocess (`run_cli`) to prove the real exit code and the absence of a
traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, tree_digest, write_yaml
from kdistill.cli import main
from kdistill.models import save_weights
from kdistill.models.mlp import MLP

EXIT_USAGE = 2


# --------------------------------------------------------------------------- helpers


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `kdistill ARGS` in-process; returns (exit code, stdout, stderr).

    argparse errors end in SystemExit; errors handled by main() are its return value.
    """
    capsys.readouterr()  # drop anything printed earlier in the test
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, stderr is one non-empty `kdistill: error: ...` line, no traceback, names every needle."""
    assert "Traceback" not in err, err
    assert code == EXIT_USAGE, f"exit code {code!r}, stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}: {err!r}"
    line = lines[0]
    assert line.startswith("kdistill: error:"), line
    assert line[len("kdistill: error:"):].strip(), f"empty error message: {line!r}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def expect_error(capsys, args: list, *needles: str, out: Path | None = None) -> str:
    """Run in-process, check the error contract, and that a configured out dir was not created."""
    code, _, err = cli(capsys, *args)
    line = assert_user_error(code, err, *needles)
    if out is not None:
        assert not Path(out).exists(), f"{out} was created although the command failed"
    return line


def edit_model_json(run_dir: Path, **changes) -> None:
    path = run_dir / "model.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


@pytest.fixture
def teacher_copy(tmp_path, teacher_run) -> Path:
    """A private, writable copy of the session teacher (teacher_run itself stays read-only)."""
    return Path(shutil.copytree(teacher_run, tmp_path / "teacher_copy"))


@pytest.fixture
def teacher_digest(teacher_run):
    """Checks after the test that the shared teacher run was not touched."""
    before = tree_digest(teacher_run)
    yield
    assert tree_digest(teacher_run) == before, "the teacher run directory was modified"


@pytest.fixture
def train_yaml(tmp_path, train_config) -> Path:
    return write_yaml(tmp_path / "train.yaml", train_config)


@pytest.fixture
def distill_yaml(tmp_path, distill_config) -> Path:
    return write_yaml(tmp_path / "distill.yaml", distill_config)


@pytest.fixture
def config_for(train_yaml, distill_yaml, train_config, distill_config):
    """cmd -> (config path, out dir) for 'train' / 'distill'."""
    return {"train": (train_yaml, Path(train_config["out"])),
            "distill": (distill_yaml, Path(distill_config["out"]))}


# --------------------------------------------------------------------------- the config file


@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_missing_config_file(capsys, tmp_path, cmd):
    missing = tmp_path / "nope.yaml"
    expect_error(capsys, [cmd, "-q", missing], "config file not found", str(missing))
    assert not missing.exists()


@pytest.mark.parametrize("text", [
    pytest.param("train: {epochs: 3\n", id="unclosed-brace"),
    pytest.param("name: a\nmodel: b: c\n", id="mapping-in-scalar"),
    pytest.param("\tname: a\n", id="tab-indent"),
    pytest.param("name: !!python/object/apply:os.system ['echo hi']\n", id="python-tag"),
])
def test_config_not_yaml(capsys, tmp_path, text):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    expect_error(capsys, ["train", "-q", cfg], str(cfg), "not valid YAML", out=tmp_path / "runs")


def test_config_binary_file(capsys, tmp_path, teacher_run):
    cfg = tmp_path / "weights.yaml"
    shutil.copyfile(teacher_run / "model.safetensors", cfg)
    code, _, err = cli(capsys, "train", "-q", cfg)
    assert_user_error(code, err, str(cfg))


@pytest.mark.parametrize("text", ["- name: a\n- model: b\n", "just a string\n", "42\n"], ids=["list", "string", "number"])
def test_config_not_a_mapping(capsys, tmp_path, text):
    cfg = tmp_path / "list.yaml"
    cfg.write_text(text)
    expect_error(capsys, ["train", "-q", cfg], str(cfg), "must be a YAML mapping")


def test_distill_config_given_to_train(capsys, distill_yaml, distill_config):
    expect_error(capsys, ["train", "-q", distill_yaml], "distill config", "kdistill distill",
                 out=Path(distill_config["out"]))


def test_train_config_given_to_distill(capsys, train_yaml, train_config):
    expect_error(capsys, ["distill", "-q", train_yaml], "train config", "kdistill train",
                 out=Path(train_config["out"]))


# --------------------------------------------------------------------------- keys and values


@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_unknown_top_level_key(capsys, tmp_path, cmd, train_config, distill_config):
    raw = dict(train_config if cmd == "train" else distill_config, epochs=3)
    cfg = write_yaml(tmp_path / "cfg.yaml", raw)
    expect_error(capsys, [cmd, "-q", cfg], "unknown key 'epochs'", out=Path(raw["out"]))


@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_unknown_nested_key(capsys, tmp_path, cmd, train_config, distill_config):
    raw = train_config if cmd == "train" else distill_config
    raw["train"] = {"epoch": 3}  # typo of `epochs`
    cfg = write_yaml(tmp_path / "cfg.yaml", raw)
    expect_error(capsys, [cmd, "-q", cfg], "unknown key 'train.epoch'", out=Path(raw["out"]))


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),
    ("data.batchsize=8", "data.batchsize"),
    ("seeed=1", "seeed"),
])
@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_unknown_key_as_override(capsys, config_for, cmd, override, key):
    cfg, out = config_for[cmd]
    expect_error(capsys, [cmd, "-q", cfg, override], f"unknown key '{key}'", out=out)


@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_wrong_type_override(capsys, config_for, cmd):
    cfg, out = config_for[cmd]
    expect_error(capsys, [cmd, "-q", cfg, "train.epochs=abc"], "train.epochs", "integer", "'abc'", out=out)


@pytest.mark.parametrize("override, needles", [
    ("train.epochs=0", ["train.epochs", "greater than or equal to 1"]),
    ("train.optimizer=adagrad", ["train.optimizer", "'adagrad'"]),
    ("data.batch_size=-4", ["data.batch_size", "greater than 0"]),
    ("data.train_samples=0", ["data.train_samples", "greater than 0"]),
    ("data.train_samples=100000", ["data.train_samples", "not fewer than"]),
])
def test_invalid_value_override(capsys, config_for, override, needles):
    cfg, out = config_for["train"]
    expect_error(capsys, ["train", "-q", cfg, override], *needles, out=out)


def test_unknown_model_argument(capsys, config_for):
    cfg, out = config_for["train"]
    expect_error(capsys, ["train", "-q", cfg, "model.hiden=[8]"], "model.hiden", "not an argument", out=out)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_temperature_not_positive(capsys, config_for, teacher_digest, value):
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"distill.temperature={value}"],
                 "temperature: ", "greater than 0", f"(got {value})", out=out)


@pytest.mark.parametrize("value, bound", [("1.5", "less than or equal to 1"), ("-0.1", "greater than or equal to 0")])
def test_alpha_outside_unit_interval(capsys, config_for, teacher_digest, value, bound):
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"distill.alpha={value}"], "alpha: ", bound, f"(got {value})", out=out)


def test_unknown_method(capsys, config_for, teacher_digest):
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, "distill.method=nst"],
                 "distill.method", "unknown method 'nst'", "known: at, ce, crd, dist, dkd, dml, fitnet", out=out)


def test_unknown_method_parameter(capsys, config_for, teacher_digest):
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, "distill.temprature=2"],
                 "unknown parameter 'distill.temprature'", out=out)


def test_parameter_of_another_method(capsys, config_for, teacher_digest):
    # the fixture's config sets temperature and alpha, which method `ce` does not take
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, "distill.method=ce"],
                 "unknown parameter 'distill.temperature'", out=out)


@pytest.mark.parametrize("override", ["epochs", "train.epochs", "=3", "train..epochs=3", ".epochs=3"])
@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_malformed_override(capsys, config_for, cmd, override):
    cfg, out = config_for[cmd]
    expect_error(capsys, [cmd, "-q", cfg, override], repr(override), "key.path=value", out=out)


def test_override_into_a_value(capsys, config_for):
    cfg, out = config_for["train"]
    expect_error(capsys, ["train", "-q", cfg, "train.epochs.max=3"], "train.epochs is a value, not a section", out=out)


# --------------------------------------------------------------------------- the teacher


def test_teacher_with_other_number_of_classes(capsys, tmp_path, config_for):
    fake = tmp_path / "teacher5"
    fake.mkdir()
    (fake / "model.json").write_text(json.dumps(
        {"name": "mlp", "kwargs": {"hidden": [8]}, "input_shape": [1, 8, 8], "num_classes": 5,
         "classes": ["0", "1", "2", "3", "4"]}))
    save_weights(MLP((1, 8, 8), 5, hidden=[8]), fake / "model.safetensors")
    before = tree_digest(fake)
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={fake}"], str(fake), "5 classes", "has 10", out=out)
    assert tree_digest(fake) == before


def test_teacher_path_missing(capsys, tmp_path, config_for):
    missing = tmp_path / "nowhere"
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={missing}"], str(missing), "not found", out=out)
    assert not missing.exists()


def test_teacher_path_missing_names_the_teacher(capsys, tmp_path, config_for):
    missing = tmp_path / "nowhere"
    cfg, out = config_for["distill"]
    line = expect_error(capsys, ["distill", "-q", cfg, f"teacher={missing}"], str(missing), out=out)
    assert "teacher" in line.replace(str(missing), ""), line  # the path itself may contain 'teacher'


def test_teacher_dir_not_a_run(capsys, tmp_path, config_for):
    empty = tmp_path / "empty_teacher"
    empty.mkdir()
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={empty}"], "teacher: ", str(empty), "model.json", out=out)
    assert list(empty.iterdir()) == []


def test_teacher_missing_weights(capsys, config_for, teacher_copy):
    (teacher_copy / "model.safetensors").unlink()
    before = tree_digest(teacher_copy)
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={teacher_copy}"],
                 str(teacher_copy / "model.safetensors"), "not found", out=out)
    assert tree_digest(teacher_copy) == before


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda b: b"this is not a safetensors file\x00\xff" * 40, id="garbage"),
    pytest.param(lambda b: b"", id="empty"),
    pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
])
def test_teacher_corrupt_weights(capsys, config_for, teacher_copy, corrupt):
    weights = teacher_copy / "model.safetensors"
    weights.write_bytes(corrupt(weights.read_bytes()))
    before = tree_digest(teacher_copy)
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={teacher_copy}"], str(weights), "corrupt checkpoint", out=out)
    assert tree_digest(teacher_copy) == before


@pytest.mark.parametrize("kwargs", [{"channels": [4, 8]}, {"channels": [8, 16, 32]}], ids=["narrower", "deeper"])
def test_teacher_weights_do_not_fit_model_json(capsys, config_for, teacher_copy, kwargs):
    edit_model_json(teacher_copy, kwargs=kwargs)
    before = tree_digest(teacher_copy)
    cfg, out = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"teacher={teacher_copy}"],
                 str(teacher_copy / "model.safetensors"), "do not fit", "model.json", out=out)
    assert tree_digest(teacher_copy) == before


@pytest.mark.parametrize("write", [
    pytest.param(lambda p: p.write_text("{not json"), id="not-json"),
    pytest.param(lambda p: p.write_text("[1, 2]"), id="not-a-mapping"),
    pytest.param(lambda p: p.write_text(json.dumps({"name": "cnn"})), id="missing-keys"),
    pytest.param(lambda p: edit_model_json(p.parent, classes=10), id="classes-not-a-list"),
])
def test_teacher_corrupt_model_json(capsys, config_for, teacher_copy, write):
    write(teacher_copy / "model.json")
    cfg, out = config_for["distill"]
    code, _, err = cli(capsys, "distill", "-q", cfg, f"teacher={teacher_copy}")
    assert_user_error(code, err, str(teacher_copy / "model.json"))
    assert not out.exists()


# --------------------------------------------------------------------------- the out directory


def test_finished_run_is_not_overwritten(capsys, tmp_path, train_config):
    train_config["train"]["epochs"] = 1
    out = Path(train_config["out"])
    cfg = write_yaml(tmp_path / "train.yaml", train_config)
    code, _, err = cli(capsys, "train", "-q", cfg)
    assert code == 0, err
    assert (out / "report.json").is_file()
    before = tree_digest(out)

    # the same config again, and a different one: both refused, nothing touched
    for extra in ([], ["train.lr=0.01"]):
        code, _, err = cli(capsys, "train", "-q", cfg, *extra)
        assert_user_error(code, err, str(out), "finished run", "--overwrite")
        assert tree_digest(out) == before

    code, _, err = cli(capsys, "train", "-q", "--overwrite", cfg)
    assert code == 0, err
    assert (out / "report.json").is_file()


def test_distill_into_a_finished_teacher_run_is_refused(capsys, config_for, teacher_copy):
    before = tree_digest(teacher_copy)
    cfg, _ = config_for["distill"]
    expect_error(capsys, ["distill", "-q", cfg, f"out={teacher_copy}"], str(teacher_copy), "finished run")
    assert tree_digest(teacher_copy) == before


def test_unfinished_run_of_another_config_is_refused(capsys, config_for):
    cfg, out = config_for["train"]
    out.mkdir()
    (out / "config.yaml").write_text("name: something-else\n")
    (out / "model.json").write_text("{}\n")
    (out / "state").mkdir()
    before = tree_digest(out)
    expect_error(capsys, ["train", "-q", cfg], str(out), "unfinished run", "--overwrite")
    assert tree_digest(out) == before


@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_out_not_a_run_is_refused(capsys, config_for, cmd, flags):
    cfg, out = config_for[cmd]
    out.mkdir()
    (out / "notes.txt").write_text("my precious notes\n")
    before = tree_digest(out)
    expect_error(capsys, [cmd, "-q", *flags, cfg], str(out), "not a kdistill run directory")
    assert tree_digest(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_out_is_a_file(capsys, config_for):
    cfg, out = config_for["train"]
    out.write_text("not a directory\n")
    expect_error(capsys, ["train", "-q", cfg], str(out), "not a directory")
    assert out.read_text() == "not a directory\n"


# --------------------------------------------------------------------------- evaluate


def test_evaluate_missing_dir(capsys, tmp_path):
    missing = tmp_path / "no_such_run"
    expect_error(capsys, ["evaluate", missing], str(missing))
    assert not missing.exists()


def test_evaluate_missing_dir_says_not_found(capsys, tmp_path):
    missing = tmp_path / "no_such_run"
    line = expect_error(capsys, ["evaluate", missing], str(missing))
    assert any(s in line for s in ("not found", "does not exist", "no such")), line


def test_evaluate_dir_that_is_not_a_run(capsys, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello\n")
    before = tree_digest(plain)
    expect_error(capsys, ["evaluate", plain], str(plain), "not a kdistill run directory")
    assert tree_digest(plain) == before


@pytest.mark.parametrize("pair", ["root", "=x"])
def test_evaluate_malformed_data_override(capsys, teacher_copy, pair):
    before = tree_digest(teacher_copy)
    expect_error(capsys, ["evaluate", teacher_copy, "--data", pair], repr(pair), "key=value")
    assert tree_digest(teacher_copy) == before


def test_evaluate_unknown_data_override(capsys, teacher_copy):
    # (`--data batch_size=abc` is accepted the same way; one case is enough to show it and keeps the file fast)
    before = tree_digest(teacher_copy)
    code, _, err = cli(capsys, "evaluate", teacher_copy, "--data", "batchsize=8")
    assert tree_digest(teacher_copy) == before, "files were written into the run directory"
    assert_user_error(code, err, "batchsize")


# --------------------------------------------------------------------------- argparse


@pytest.mark.parametrize("args, needles", [
    (["frobnicate"], ["invalid choice", "'frobnicate'"]),
    (["train"], ["required", "config"]),
    (["distill"], ["required", "config"]),
    (["evaluate"], ["required", "run_dir"]),
    (["evaluate", "somewhere", "--split", "dev"], ["--split", "'dev'"]),
    (["train", "cfg.yaml", "--epochs", "3"], ["unrecognized arguments", "--epochs"]),
    (["--frobnicate"], ["unrecognized arguments", "--frobnicate"]),
], ids=["unknown-command", "train-no-config", "distill-no-config", "evaluate-no-dir", "bad-choice",
        "unknown-option", "unknown-global-option"])
def test_argparse_errors(capsys, tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    expect_error(capsys, args, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", ["train", "distill"])
def test_missing_config_does_not_claim_overrides_are_required(capsys, cmd):
    line = expect_error(capsys, [cmd], "config")
    assert "key=value" not in line


@pytest.mark.parametrize("flag", ["--overwrite", "-q"])
def test_overrides_after_an_option_are_parsed(capsys, config_for, flag):
    cfg, out = config_for["train"]
    expect_error(capsys, ["train", cfg, flag, "train.epoch=3"], "unknown key 'train.epoch'", out=out)


# --------------------------------------------------------------------------- the real entry point


def assert_subprocess_error(proc, *needles: str) -> str:
    return assert_user_error(proc.returncode, proc.stderr, *needles)


def test_subprocess_missing_config(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = run_cli("train", str(missing), cwd=tmp_path)
    assert_subprocess_error(proc, "config file not found", str(missing))
    assert list(tmp_path.iterdir()) == []


def test_subprocess_unknown_command(tmp_path):
    proc = run_cli("frobnicate", cwd=tmp_path)
    assert_subprocess_error(proc, "invalid choice", "'frobnicate'")


def test_subprocess_corrupt_teacher(distill_yaml, distill_config, teacher_copy, tmp_path):
    (teacher_copy / "model.safetensors").write_bytes(b"\x00garbage\xff" * 64)
    proc = run_cli("distill", str(distill_yaml), f"teacher={teacher_copy}", cwd=tmp_path)
    assert_subprocess_error(proc, "corrupt checkpoint", str(teacher_copy / "model.safetensors"))
    assert not Path(distill_config["out"]).exists()


def test_subprocess_finished_run_refused(distill_yaml, teacher_copy, tmp_path):
    before = tree_digest(teacher_copy)
    proc = run_cli("distill", str(distill_yaml), f"out={teacher_copy}", cwd=tmp_path)
    assert_subprocess_error(proc, "finished run", "--overwrite")
    assert tree_digest(teacher_copy) == before
