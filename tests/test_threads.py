"""kdistill.training.threads: `train.threads: auto` shares the cores among the kdistill runs on the machine; a number pins it.
(The speed it buys is measured by benchmarks/sharing.py, not here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_yaml
from kdistill.training import threads
from kdistill.cli import main


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(threads.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(threads, "BASE_THREADS", 4)
    before = torch.get_num_threads()
    yield tmp_path / f"kdistill-{os.getuid()}-runs"
    torch.set_num_threads(before)


def test_a_run_alone_keeps_the_default_and_a_pinned_count_is_kept(registry):
    with threads.running():
        assert threads.live_runs() == 1
        assert threads.adjust("auto") == 4 and torch.get_num_threads() == 4
        assert threads.adjust(1) == 1 and torch.get_num_threads() == 1
    assert not any(registry.iterdir())  # unregistered when the run ends


def test_another_live_run_halves_the_share_and_dead_ones_are_forgotten(registry):
    registry.mkdir(parents=True)
    (registry / "999999999").write_text("1\n")  # a run that was killed: its pid is gone
    (registry / "notes").write_text("not a pid\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (registry / str(other.pid)).write_text(threads._start_time(other.pid) + "\n")
        with threads.running():
            assert threads.live_runs() == 2
            assert threads.adjust("auto") == 2
        (registry / str(os.getpid())).write_text("12345\n")  # our pid, but another process's start time: reused
        assert threads.live_runs() == 1
    finally:
        other.kill()
        other.wait()
    assert not (registry / "999999999").exists()
    assert threads.live_runs() == 1


def test_each_epoch_records_its_thread_count(tmp_path, train_config):
    train_config["train"]["threads"] = 1
    assert main(["train", str(write_yaml(tmp_path / "c.yaml", train_config)), "-q"]) == 0
    lines = [json.loads(line) for line in (Path(train_config["out"]) / "metrics.jsonl").read_text().splitlines()]
    assert [line["threads"] for line in lines] == [1, 1]


def test_a_thread_count_out_of_range_is_one_line(tmp_path, train_config, capsys):
    for value in ("0", "many", "100000"):
        assert main(["train", str(write_yaml(tmp_path / "c.yaml", train_config)), f"train.threads={value}", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "train.threads" in err, err
