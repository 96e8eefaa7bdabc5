"""The resume checkpoint of the vision engine: what an epoch commits, how it is read back and checked.

`state/checkpoint.pt` is the commit point of an epoch: once it is replaced, the epoch is complete.
It holds the student, the method, the optimiser, the scheduler, the RNG states, the completed epoch and
the best validation accuracy, and is read with `torch.load(weights_only=True)`; its structure and every
tensor's shape are checked before anything is loaded, so a damaged or foreign file is one line.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from kdistill.errors import KdistillError, NonFiniteError, first_line
from kdistill.models import save_weights
from kdistill.ownership import FOLDER, Owned, fresh_tmp

CHECKPOINT = "state/checkpoint.pt"
METRICS = "metrics.jsonl"
BEST = "model.safetensors"
LAST = "last.safetensors"
NONFINITE = "state/stopped-nonfinite.json"  # left by a run the NaN guard stopped (kdistill.training.rundir reads it)
START_OVER = "delete the run directory or pass --overwrite to start over"
_FIELDS = {"epoch": int, "best_val_accuracy": (int, float), "best_epoch": int, "student": dict, "method": dict,
           "optimizer": dict, "scheduler": dict, "rng": dict}


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states, in types a weights-only load accepts."""
    np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cuda": cuda,
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def load_torch_file(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with one-line errors. A file the weights-only unpickler refuses is
    reported as such, never with PyTorch's hint to load it with weights_only=False (which runs its code)."""
    try:
        if path.stat().st_size == 0:
            raise KdistillError(f"{path}: the {what} is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise KdistillError(f"{path}: the {what} holds objects that a weights-only load refuses (such a file can run "
                            "code when unpickled); kdistill does not load it") from None
    except OSError as exc:
        raise KdistillError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError... for damaged files
        first = first_line(exc, 200)
        raise KdistillError(f"{path}: corrupt {what} ({first})") from None


def read_checkpoint(path: Path, epochs: int | None = None) -> dict | None:
    """The checkpoint at `path` (None when there is none), its structure checked (and its epoch within the run's
    `epochs`); a bad one is a KdistillError."""
    if not path.exists():
        return None
    ckpt = load_torch_file(path, "resume checkpoint")
    if not isinstance(ckpt, dict):
        raise KdistillError(f"{path}: corrupt resume checkpoint (a {type(ckpt).__name__}, not kdistill's mapping); {START_OVER}")
    for key, kind in _FIELDS.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise KdistillError(f"{path}: corrupt resume checkpoint ('{key}' is missing or not a "
                                f"{getattr(kind, '__name__', 'number')}); {START_OVER}")
    epoch, best = ckpt["epoch"], ckpt["best_epoch"]
    if not (0 <= best <= epoch and (epochs is None or epoch <= epochs)) or not -1.0 <= ckpt["best_val_accuracy"] <= 1.0:
        raise KdistillError(f"{path}: corrupt resume checkpoint (epoch {epoch}, best epoch {best}, best accuracy "
                            f"{ckpt['best_val_accuracy']} do not fit a run of {epochs} epochs); {START_OVER}")
    return ckpt


def _check_shapes(state: dict, module: nn.Module, what: str, path: Path) -> None:
    expected = module.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise KdistillError(f"{path}: the checkpoint's {what} does not match this run's (missing {missing[:3]}, "
                            f"unexpected {extra[:3]}); {START_OVER}")
    for key, value in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise KdistillError(f"{path}: the checkpoint's {what} has {key} of shape {shape}, this run's is "
                                f"{tuple(value.shape)}; {START_OVER}")


def restore(ckpt: dict, path: Path, student: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float, weight_decay: float,
            factor: Callable[[int], float]) -> None:
    """Load a checked checkpoint into the run's objects. The optimiser takes this run's `lr` and
    `weight_decay` (the same as the checkpoint's, unless the run was resumed after a non-finite stop with
    smaller ones), and its lr is set to the schedule's value at the restored step."""
    _check_shapes(ckpt["student"], student, "student", path)
    _check_shapes(ckpt["method"], method, "method", path)
    try:
        student.load_state_dict(ckpt["student"])
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = first_line(exc, 200)
        raise KdistillError(f"{path}: the resume checkpoint does not fit this run ({first}); {START_OVER}") from None
    for group in optimizer.param_groups:  # the optimiser's moments must have the shapes of its parameters
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise KdistillError(f"{path}: the checkpoint's optimiser state {key} has shape {tuple(value.shape)} "
                                        f"for a parameter of shape {tuple(param.shape)}; {START_OVER}")
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"], group["weight_decay"] = lr, weight_decay
        group["lr"] = lr * factor(scheduler.last_epoch)


def claim_run_files(run_dir: Path) -> None:
    """Record the files the engine writes in the run's manifest (kdistill.ownership) before it writes them."""
    owned = Owned(run_dir)
    owned.claim(METRICS, BEST, LAST)
    if "state" not in (owned.entries() or {}):
        owned.claim("state", kind=FOLDER)
    Owned(run_dir / "state").claim(Path(CHECKPOINT).name, Path(NONFINITE).name)


def commit_epoch(run_dir: Path, record: dict, student: nn.Module, improved: bool, state: dict) -> None:
    """Write the epoch's weights and metrics line, then replace the checkpoint (the commit point).

    When the disk refuses (full, read-only), the metrics line is taken back and the old checkpoint stays,
    so the directory still describes the last committed epoch; the error is one line."""
    metrics, ckpt_path = run_dir / METRICS, run_dir / CHECKPOINT
    tmp = fresh_tmp(ckpt_path)
    size = metrics.stat().st_size if metrics.exists() else 0
    try:
        save_weights(student, run_dir / LAST)
        if improved:
            save_weights(student, run_dir / BEST)
        torch.save(state, tmp)
        with open(metrics, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        tmp.replace(ckpt_path)
    except (OSError, SafetensorError, RuntimeError) as exc:
        try:
            with open(metrics, "r+") as fh:
                fh.truncate(size)
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(exc, "strerror", None) or first_line(exc, 200)
        raise KdistillError(f"epoch {record['epoch']} could not be saved in {run_dir} ({reason}); "
                            f"{_kept(record['epoch'] - 1)}: make room and run the same command again to resume") from None


def _kept(epochs_done: int) -> str:
    if epochs_done == 0:
        return "no epoch had been committed yet"
    return f"the run directory keeps epoch {epochs_done}'s checkpoint"


def completed_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs that were not committed (a run killed after logging them)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs_done:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash
    path.write_text("".join(line + "\n" for line in kept))


def nonfinite_terms(values: dict[str, float]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]


def stop_nonfinite(run_dir: Path | None, epoch: int, step: int, what: str, cfg_lr: float) -> NonFiniteError:
    """The NaN guard's error (and its marker in `state/`, which lets a rerun with a smaller lr resume)."""
    if run_dir is not None:
        try:
            (run_dir / NONFINITE).write_text(json.dumps({"epoch": epoch, "step": step, "what": what}) + "\n")
        except OSError:
            pass
    return NonFiniteError(f"epoch {epoch}, step {step}: {what}; the run stopped ({_kept(epoch - 1)}): run it again "
                         f"with a smaller train.lr (now {cfg_lr:g}) or a train.grad_clip to resume from there")
