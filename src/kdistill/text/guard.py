"""What text runs add to the Hugging Face Trainer: the NaN guard, and the thread share of kdistill.threads.

The guard: a Trainer whose training step stops the run when its loss went non-finite.

A non-finite loss ends the run with one `kdistill: error:` line naming the epoch and step, before the
optimiser applies that step; the Trainer's checkpoints in `state/` are those of the completed epochs,
untouched. (The Trainer clips gradients by default, `max_grad_norm=1`, so a finite loss gives a finite step.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from kdistill import threads

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
