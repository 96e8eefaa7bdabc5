"""What text runs add to the Hugging Face Trainer: the NaN guard, the thread share of kdistill.threads, and
the record (kdistill.ownership) of each checkpoint folder the Trainer is about to save in `state/`.

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

from kdistill import threads
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
