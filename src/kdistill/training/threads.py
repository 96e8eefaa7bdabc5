"""`train.threads`: how many CPU threads a run gives torch, so that runs sharing a machine do not thrash.

Two torch processes that each run one OpenMP thread per core on the same cores slow each other far more
than proportionally (the threads spin while the other process holds the cores: 3x to 10x per epoch,
benchmarks/results/sharing.md). With `train.threads: auto` (the default) every kdistill process that
trains registers itself in a per-user folder under the system's temporary directory, and before each
epoch takes its share of the cores: torch's default thread count divided by the number of live kdistill
runs on the machine (at least 1). Alone, a run keeps torch's default and loses no speed. A number pins
the thread count; do that for bit-identical results between a run that shared the machine and one that
did not (a different thread count changes the order of float sums). Each epoch's count is in
`metrics.jsonl` (`threads`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")
BASE_THREADS = torch.get_num_threads()  # torch's default in this process (OMP_NUM_THREADS, or one per core)


def _registry() -> Path:
    return Path(tempfile.gettempdir()) / f"kdistill-{os.getuid()}-runs"


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), which tells a live run from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(entry: Path) -> bool:
    if not entry.name.isdigit():
        return False
    try:
        recorded = entry.read_text().strip()
    except OSError:
        return False
    started = _start_time(int(entry.name))
    return started is not None and (recorded in ("", started))


@contextmanager
def running() -> Iterator[None]:
    """Count this process among the machine's kdistill runs while the block runs (a whole train/distill run,
    from before its data loads, so that runs started together see each other at their first epoch)."""
    entry = None
    try:
        folder = _registry()
        folder.mkdir(mode=0o700, exist_ok=True)
        entry = folder / str(os.getpid())
        entry.write_text((_start_time(os.getpid()) or "") + "\n")
    except OSError:
        entry = None  # no shared temporary folder: this run counts itself alone
    try:
        yield
    finally:
        if entry is not None:
            entry.unlink(missing_ok=True)


def counted(run: Callable[..., T]) -> Callable[..., T]:
    """Decorate a train/distill entry point: it counts among the machine's runs while it runs."""
    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with running():
            return run(*args, **kwargs)
    return wrapper


def live_runs() -> int:
    """kdistill runs training on this machine now (at least 1: this one), stale entries removed."""
    folder = _registry()
    count = 0
    try:
        for entry in folder.iterdir():
            if _alive(entry):
                count += 1
            elif entry.name.isdigit():
                entry.unlink(missing_ok=True)  # a run that was killed
    except OSError:
        return 1
    return max(1, count)


def adjust(setting: int | str) -> int:
    """Set torch's thread count for the next epoch from `train.threads`; returns it."""
    if setting == "auto":
        wanted = max(1, BASE_THREADS // live_runs())
    else:
        wanted = int(setting)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted
