"""Shared fixtures: tiny configs on digits and a small trained teacher run (built once per session)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdistill.config import TrainRunConfig, validate_config
from kdistill.runner import run_train

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = {"epochs": 2, "lr": 3e-3}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> Path:
    """A small CNN teacher trained on digits for 3 epochs (about 1 s); treat it as read-only."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = validate_config(
        {"name": "teacher", "data": {"name": "digits", "batch_size": 64},
         "model": {"name": "cnn", "channels": [8, 16]}, "train": {"epochs": 3, "lr": 3e-3}, "out": str(out)},
        TrainRunConfig,
    )
    run_train(cfg, progress=False)
    return out


@pytest.fixture
def distill_config(tmp_path, teacher_run) -> dict:
    """A raw distill config (dict) for a tiny MLP student; write it with write_yaml."""
    return {"name": "student", "seed": 0, "data": {"name": "digits", "batch_size": 64},
            "teacher": str(teacher_run), "student": {"name": "mlp", "hidden": [16]},
            "distill": {"method": "kd", "temperature": 4.0, "alpha": 0.1},
            "train": dict(TINY_TRAIN), "out": str(tmp_path / "student")}


@pytest.fixture
def train_config(tmp_path) -> dict:
    """A raw train config (dict) for a tiny MLP on digits."""
    return {"name": "mlp", "seed": 0, "data": {"name": "digits", "batch_size": 64},
            "model": {"name": "mlp", "hidden": [16]}, "train": dict(TINY_TRAIN), "out": str(tmp_path / "mlp")}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m kdistill ARGS` in a subprocess (the real entry point, real exit code)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "kdistill", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root: compare before/after to prove nothing on disk changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def one_line_error(capsys, *needles: str) -> str:
    """stderr is one `kdistill: error: ...` line, no traceback, naming every needle; returns it."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kdistill: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def interrupt_distill(cfg, monkeypatch, at_call: int) -> None:
    """Run the kd distill config `cfg` until the `at_call`-th call of KD.forward (the dry run is the first), which
    raises KeyboardInterrupt as Ctrl-C would; KD.forward is whole again afterwards, for the test's resume."""
    from kdistill.methods.kd import KD
    from kdistill.runner import run_distill

    original, calls = KD.forward, {"n": 0}

    def dying_forward(self, *args):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(KD, "forward", dying_forward)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg, progress=False)
    monkeypatch.setattr(KD, "forward", original)
