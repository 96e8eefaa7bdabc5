"""The training loop, shared by `train` (labels only) and `distill` (teacher + student).

Read top to bottom: build optimiser and schedule, resume if a checkpoint exists, then per
epoch: shuffle (seeded by epoch), augment (or, with a teacher cache, re-create a stored
view), forward the student in train mode, ask the frozen teacher (or the cache) for its
logits, let the Method turn them into weighted loss terms, sum, step;
validate in eval mode; write metrics, weights, and the resume checkpoint last (the
commit point), so a run killed anywhere restarts from its last completed epoch and ends
with the same weights as an uninterrupted run.

Under torchrun (kdistill.training.distributed) every process walks the same global batches, trains
on its own slice of each (decoding from disk, for streamed images, only the images that slice is made
from), averages gradients before each optimiser step, sums the metrics, and only rank 0 writes.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kdistill.training import distributed, threads
from kdistill.training.checkpoint import (CHECKPOINT, METRICS, NONFINITE, claim_run_files, commit_epoch, completed_metrics,
                                 nonfinite_terms, read_checkpoint, restore, rng_state, set_rng_state, stop_nonfinite)
from kdistill.config import TrainConfig
from kdistill.data.augment import Augmenter
from kdistill.data.splits import Batch, DataSplits, iterate_batches
from kdistill.errors import KdistillError
from kdistill.models.inference import accuracy, predict_logits
from kdistill.methods.base import Method
from kdistill.training.teacher_source import TeacherSource
from kdistill.data.streaming import take
from kdistill.training.teachers import FrozenTeacher

if TYPE_CHECKING:
    from kdistill.training.teacher_cache import TeacherCache



@dataclass
class EpochPlan:
    """How an epoch of `n_train` samples splits into batches and optimiser steps."""

    batches: int
    steps: int
    drop_last: bool

    @classmethod
    def of(cls, n_train: int, batch_size: int, world: int, grad_accum: int) -> "EpochPlan":
        # A last batch with fewer than 2 samples per process would give BatchNorm a lone sample in train mode.
        drop_last = 0 < n_train % batch_size < 2 * world
        batches = n_train // batch_size if drop_last else math.ceil(n_train / batch_size)
        return cls(batches, math.ceil(batches / grad_accum), drop_last)

    def group_size(self, i: int, grad_accum: int) -> int:
        """Micro-batches in the accumulation group of batch i (the last group of an epoch may be short)."""
        return min(grad_accum, self.batches - (i - i % grad_accum))

    def steps_after(self, i: int, grad_accum: int) -> bool:
        return (i + 1) % grad_accum == 0 or i + 1 == self.batches


@dataclass
class EpochMeter:
    """Sample-weighted sums of the loss terms and the training accuracy of one epoch (on this process)."""

    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    labeled: int = 0  # samples with a label (transfer data has none): the training accuracy's denominator
    correct: int = 0
    shard: dict[str, int] = field(default_factory=lambda: {"samples": 0, "index_sum": 0})

    def add(self, batch: Batch, student_logits: torch.Tensor, values: dict[str, float]) -> None:
        n = batch.labels.shape[0]
        self.seen += n
        self.labeled += int((batch.labels >= 0).sum())
        self.correct += int((student_logits.detach().argmax(-1) == batch.labels).sum())
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * n
        self.shard["samples"] += n
        self.shard["index_sum"] += int(batch.index.sum())

    def means(self) -> dict[str, float]:
        return {k: v / self.seen for k, v in self.sums.items()}

    def counts(self) -> dict[str, float]:
        """The training accuracy (on the labelled samples), the samples trained on and, when some had no label,
        both counts."""
        accuracy = {"train_accuracy": self.correct / self.labeled if self.labeled else 0.0, "samples": self.seen}
        if self.labeled == self.seen:
            return accuracy
        return accuracy | {"labeled_samples": self.labeled, "unlabeled_samples": self.seen - self.labeled}

    def reduce(self, ctx: distributed.Context, device: torch.device) -> list[dict[str, int]] | None:
        """Sum over the processes (every process then holds the global meter); what each process trained on."""
        if not ctx.active:
            return None
        keys = sorted(self.sums)
        totals = ctx.sum([self.sums[k] for k in keys] + [self.seen, self.labeled, self.correct], device)
        self.sums = dict(zip(keys, totals[:-3]))
        self.seen, self.labeled, self.correct = (int(t) for t in totals[-3:])
        return ctx.gather(dict(self.shard))


@dataclass
class FitResult:
    best_val_accuracy: float
    best_epoch: int
    epochs: int
    resumed_from_epoch: int
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimiser step `step`: linear warm-up, then cosine/step/constant."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return factor


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; an explicit cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdistillError(f"train.device: {name} requested but no CUDA GPU is available; use train.device=cpu or auto")
    return torch.device(name)


def check_global_batch(batch_size: int, ctx: distributed.Context) -> None:
    """`data.batch_size` is the global batch: at least 2 samples per process (BatchNorm in train mode)."""
    if ctx.active and batch_size < 2 * ctx.world:
        raise KdistillError(f"data.batch_size={batch_size} is the global batch; with {ctx.world} processes it must be at "
                            f"least {2 * ctx.world} (2 samples per process for BatchNorm)")


def fit(
    student: nn.Module,
    method: Method,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    run_dir: Path,
    seed: int,
    batch_size: int,
    eval_batch_size: int = 512,
    teacher: FrozenTeacher | None = None,
    augment: Augmenter | None = None,
    cache: TeacherCache | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train `student` with `method` (and `teacher`, if the method needs one); write the run directory.

    With `cache`, the teacher's logits and each sample's augmentation come from the cache
    (one stored view drawn per sample per epoch, or `cache.views_per_image` of them: an epoch
    is then that many times the training split) and `teacher` and `augment` are not used
    in training. `on_epoch_end(record)` is called after each committed epoch with its metrics
    line (a hyperparameter search prunes from there by raising).
    """
    started = time.perf_counter()
    ctx = distributed.current()
    device = ctx.device(resolve_device(cfg.device))
    for module in (student, method, teacher):
        if module is not None:
            module.to(device)
    run_dir = Path(run_dir)
    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    source = TeacherSource(teacher, cache, augment, method.needs_teacher)
    trainable = _trainable(student, method, teacher)
    check_global_batch(batch_size, ctx)
    per_image = source.views_per_image  # the batches of images drawn hold batch_size / per_image images
    # Several processes: each decodes (streamed images) only the rows its slice of the global batch is made from.
    rows = (lambda n: source.image_rows(n, ctx.shard)) if ctx.active else None
    plan = EpochPlan.of(len(data.train) * per_image, batch_size, ctx.world, cfg.grad_accum)
    optimizer = build_optimizer(cfg, trainable)
    factor = lr_factor(cfg, plan.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start_epoch, best_acc, best_epoch = _resume(ctx, run_dir, cfg, seed, student, method, optimizer, scheduler, factor)

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.precision == "bf16" else nullcontext
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        method.train()
        method.start_epoch(epoch, cfg.epochs)
        epoch_threads = threads.adjust(cfg.threads)  # this run's share of the cores (kdistill.training.threads)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        meter, last_lr = EpochMeter(), optimizer.param_groups[0]["lr"]
        bar = tqdm(total=plan.batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if progress and ctx.is_main else True, unit="batch")
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(iterate_batches(data.train, batch_size // per_image, shuffle=True, generator=generator,
                                                  drop_last=plan.drop_last, rows=rows)):
            batch, drawn = source.draw(batch, generator)  # every process draws the same global batch
            global_n = batch.labels.shape[0]
            batch = batch._replace(labeled_share=float(batch.label_weights().sum()) / global_n)
            batch, drawn = _to_device(*ctx.keep_slice(batch, drawn), device)
            with autocast():
                student_logits = student(batch.inputs)
                terms = method(batch, student_logits, source.logits(batch.inputs, drawn))
            loss = sum(terms.values())
            values = {k: float(v.detach()) for k, v in {"loss": loss, **terms}.items()}
            if not ctx.active and not math.isfinite(values["loss"]):  # several processes: the gradient check
                raise stop_nonfinite(run_dir, epoch + 1, i + 1, "the loss went non-finite ("
                                     + ", ".join(nonfinite_terms(values)) + ")", cfg.lr)
            # Each process's mean is scaled by its share of the global batch, so the average over processes
            # (average_gradients) is the gradient of the global batch's mean loss.
            share = batch.labels.shape[0] * ctx.world / global_n
            (loss * share / plan.group_size(i, cfg.grad_accum)).backward()
            if plan.steps_after(i, cfg.grad_accum):
                last_lr = _step(ctx, optimizer, scheduler, trainable, cfg, run_dir, epoch, i)
            meter.add(batch, student_logits, values)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in meter.means().items()}
                            | {"samples/s": f"{meter.seen / (time.perf_counter() - t0):.0f}"})
        bar.close()
        train_seconds = time.perf_counter() - t0

        student.eval()
        if ctx.active:
            ctx.broadcast_buffers(student)  # BatchNorm statistics of rank 0, as DDP keeps them
            ctx.broadcast_buffers(method)
        shards = meter.reduce(ctx, device)
        val_acc = _validation_accuracy(ctx, student, data, eval_batch_size, device)
        record = {"epoch": epoch + 1, "lr": last_lr, **meter.means(), **meter.counts(),
                  "val_accuracy": val_acc, "seconds": train_seconds, "samples_per_s": meter.seen / train_seconds,
                  "threads": epoch_threads, **({"views_per_image": per_image} if per_image > 1 else {}),
                  **({"processes": shards} if shards else {})}
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch + 1
        rng_ranks = ctx.gather(rng_state()) if ctx.active else None
        if ctx.is_main:
            commit_epoch(run_dir, record, student, improved,
                         {"epoch": epoch + 1, "best_val_accuracy": best_acc, "best_epoch": best_epoch,
                          "student": student.state_dict(), "method": method.state_dict(),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": rng_state(), **({"rng_ranks": rng_ranks} if rng_ranks else {})})
            (run_dir / NONFINITE).unlink(missing_ok=True)
        ctx.barrier()
        if on_epoch_end is not None:
            on_epoch_end(record)
        if progress and ctx.is_main:
            terms_text = " ".join(f"{k}={v:.4f}" for k, v in meter.means().items())
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} {terms_text} train_acc={record['train_accuracy']:.4f} "
                       f"val_acc={val_acc:.4f} {record['samples_per_s']:.0f} samples/s")
    student.eval()
    return FitResult(best_acc, best_epoch, cfg.epochs, start_epoch, time.perf_counter() - started)


def _trainable(student: nn.Module, method: Method, teacher: FrozenTeacher | None) -> list[nn.Parameter]:
    """The student's and the method's parameters (connectors, a DML peer); never the teacher's."""
    trainable = list(student.parameters()) + list(method.parameters())
    if teacher is not None:
        teacher_ids = {id(p) for p in teacher.model.parameters()}
        if any(id(p) in teacher_ids for p in trainable):
            raise ValueError("the student shares parameters with the frozen teacher")
    return trainable


def _resume(ctx: distributed.Context, run_dir: Path, cfg: TrainConfig, seed: int, student: nn.Module, method: Method,
            optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
            factor: Callable[[int], float]) -> tuple[int, float, int]:
    """Restore the last committed epoch if there is one (rank 0 reads the checkpoint and hands it to every
    process, even on nodes that do not share its disk); (start epoch, best val accuracy, best epoch)."""
    path = run_dir / CHECKPOINT
    ckpt = ctx.broadcast_object(ctx.on_main(lambda: read_checkpoint(path, cfg.epochs))) if ctx.active \
        else read_checkpoint(path, cfg.epochs)
    start = (0, -1.0, 0)
    if ckpt is not None:
        restore(ckpt, path, student, method, optimizer, scheduler, cfg.lr, cfg.weight_decay, factor)
        start = (ckpt["epoch"], ckpt["best_val_accuracy"], ckpt["best_epoch"])
        ranks = ckpt.get("rng_ranks") or []
        if ctx.rank > 0 and len(ranks) == ctx.world:
            set_rng_state(ranks[ctx.rank])  # each process resumes its own dropout stream
    elif ctx.active:
        ctx.broadcast_module(student)  # one starting point for every process
        ctx.broadcast_module(method)
        torch.manual_seed(seed * 1_000_003 + 7919 * ctx.rank)  # then different dropout masks per process
    if ctx.is_main:
        claim_run_files(run_dir)
        completed_metrics(run_dir / METRICS, start[0])
    return start


def _to_device(batch: Batch, logits: torch.Tensor | None, device: torch.device) -> tuple[Batch, torch.Tensor | None]:
    if device.type == "cpu":
        return batch, logits
    moved = batch._replace(inputs=batch.inputs.to(device, non_blocking=True), labels=batch.labels.to(device, non_blocking=True),
                           mixed=None if batch.mixed is None else tuple(t.to(device) for t in batch.mixed))
    return moved, None if logits is None else logits.to(device, non_blocking=True)


def _step(ctx: distributed.Context, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
          trainable: list[nn.Parameter], cfg: TrainConfig, run_dir: Path, epoch: int, i: int) -> float:
    """Average the gradients over the processes, clip, check them (the NaN guard), step; the step's lr."""
    ctx.average_gradients(trainable)
    grads = [p.grad for p in trainable if p.grad is not None]
    norm = float(nn.utils.clip_grad_norm_(trainable, cfg.grad_clip) if cfg.grad_clip else nn.utils.get_total_norm(grads))
    if not math.isfinite(norm):  # the same averaged gradient on every process: all stop together
        raise stop_nonfinite(run_dir if ctx.is_main else None, epoch + 1, i + 1,
                             f"the gradient norm went non-finite ({norm})", cfg.lr)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return lr


def _validation_accuracy(ctx: distributed.Context, student: nn.Module, data: DataSplits, eval_batch_size: int,
                         device: torch.device) -> float:
    """Accuracy on the validation split; with several processes each scores its slice and the counts are summed."""
    if not ctx.active:
        return accuracy(predict_logits(student, data.val.inputs, eval_batch_size), data.val.labels)
    part = ctx.shard(len(data.val))
    correct = int((predict_logits(student, take(data.val.inputs, part), eval_batch_size).argmax(-1) == data.val.labels[part]).sum())
    return ctx.accuracy(correct, len(data.val), device)
