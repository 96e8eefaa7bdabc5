"""What kdistill's runs add to the Hugging Face Trainer: the NaN guard, a frozen teacher and logged loss terms
(`MethodTrainer`, the base of the text and causal-LM trainers), the thread share of kdistill.training.threads, and the
record (kdistill.ownership) of each checkpoint folder the Trainer is about to save in `state/`, and each epoch's
evaluation handed to a listener (`EpochEnd`, for `kdistill sweep`).

The guard: a Trainer whose training step stops the run when its loss went non-finite.

A non-finite loss ends the run with one `kdistill: error:` line naming the epoch and step, before the
optimiser applies that step; the Trainer's checkpoints in `state/` are those of the completed epochs,
untouched. (The Trainer clips gradients by default, `max_grad_norm=1`, so a finite loss gives a finite step.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from kdistill.training import threads
from kdistill.ownership import TREE, Owned

from kdistill.errors import NonFiniteError


class GuardedTrainer(Trainer):
    """`transformers.Trainer` that raises a NonFiniteError (a KdistillError) on the first non-finite training loss."""

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        value = float(loss.detach())
        if not math.isfinite(value):
            epoch = int(self.state.epoch or 0) + 1
            raise NonFiniteError(f"epoch {epoch}, step {self.state.global_step + 1}: the loss went non-finite ({value}); "
                                "the run stopped and state/ keeps the checkpoints of the completed epochs: run it again "
                                "with a smaller train.lr and --overwrite")
        return loss


class ThreadShare(TrainerCallback):
    """`train.threads` for the Trainer: take this run's share of the CPU threads before each epoch."""

    def __init__(self, setting: int | str):
        self.setting = setting

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        threads.adjust(self.setting)


class RecordCheckpoints(TrainerCallback):
    """Record `checkpoint-<step>` in `state/`'s manifest before the Trainer saves it at the end of an epoch,
    so `--overwrite` removes the Trainer's checkpoints and refuses anything else found in `state/`."""

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save and state.is_world_process_zero:
            Owned(Path(args.output_dir)).claim(f"checkpoint-{state.global_step}", kind=TREE)


class EpochEnd(TrainerCallback):
    """Hand each end-of-epoch evaluation to `listener` as the record metrics.jsonl writes (`to_record` of the
    Trainer's metrics, with its epoch): what `kdistill sweep` reports to its pruner, as the vision engine's
    `on_epoch_end` does. Rank 0 only; an exception from the listener (a pruned trial) stops the run."""

    def __init__(self, listener: Any, to_record: Any):
        self.listener, self.to_record = listener, to_record

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and metrics:
            self.listener({"epoch": int(round(state.epoch or 0)), **self.to_record(metrics)})


class MethodTrainer(GuardedTrainer):
    """A GuardedTrainer whose loss is a kdistill Method: it keeps `teacher` (if any) on the student's device, in
    eval mode with frozen parameters, and logs each loss term's mean beside the loss (`loss_<term>`)."""

    def __init__(self, *args: Any, teacher: torch.nn.Module | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self._term_sums: dict[str, float] = {}
        self._term_weights: dict[str, float] = {}
        if teacher is not None:
            self._freeze_teacher()

    def _freeze_teacher(self) -> None:
        device = next(self.model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        if any(m.training for m in self.teacher.modules()):
            self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def record_terms(self, terms: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        """Add one training micro-batch's terms, each a mean over `weight` items (samples, scored tokens), to the
        weighted means logged with the next training log."""
        for name, value in terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach()) * weight
            self._term_weights[name] = self._term_weights.get(name, 0.0) + weight

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, plus each loss term's mean since the last training log, weighted by the items each
        micro-batch averaged over, on every process together."""
        if "loss" in logs and self._term_sums:
            keys = sorted(self._term_sums)
            totals = torch.tensor([[self._term_sums[k], self._term_weights[k]] for k in keys], dtype=torch.float64,
                                  device=self.args.device)
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            logs = {**logs, **{f"loss_{k}": float(s / max(w, 1e-12)) for k, (s, w) in zip(keys, totals.tolist())}}
            self._term_sums, self._term_weights = {}, {}
        super().log(logs, *args, **kwargs)
