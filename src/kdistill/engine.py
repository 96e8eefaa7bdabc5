"""The training loop, shared by `train` (labels only) and `distill` (teacher + student).

Read top to bottom: build optimiser and schedule, resume if a checkpoint exists, then per
epoch: shuffle (seeded by epoch), augment (or, with a teacher cache, re-create a stored
view), forward the student in train mode, ask the frozen teacher (or the cache) for its
logits, let the Method turn them into weighted loss terms, sum, step;
validate in eval mode; write metrics, weights, and the resume checkpoint last (the
commit point), so a run killed anywhere restarts from its last completed epoch and ends
with the same weights as an uninterrupted run.

Under torchrun (kdistill.distributed) every process walks the same global batches, trains
on its own slice of each, averages gradients before each optimiser step, sums the metrics,
and only rank 0 writes.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kdistill import distributed, threads
from kdistill.checkpoint import (CHECKPOINT, METRICS, NONFINITE, claim_run_files, commit_epoch, completed_metrics,
                                 nonfinite_terms, read_checkpoint, restore, rng_state, set_rng_state, stop_nonfinite)
from kdistill.config import TrainConfig
from kdistill.data.splits import Batch, DataSplits, iterate_batches
from kdistill.errors import KdistillError
from kdistill.inference import accuracy, predict_logits
from kdistill.methods.base import Method
from kdistill.teachers import FrozenTeacher

if TYPE_CHECKING:
    from kdistill.teacher_cache import TeacherCache



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
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    cache: TeacherCache | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train `student` with `method` (and `teacher`, if the method needs one); write the run directory.

    With `cache`, the teacher's logits and each sample's augmentation come from the cache
    (one stored view drawn per sample per epoch) and `teacher` and `augment` are not used
    in training. `on_epoch_end(record)` is called after each committed epoch with its metrics
    line (a hyperparameter search prunes from there by raising).
    """
    started = time.perf_counter()
    ctx = distributed.current()
    device = resolve_device(cfg.device)
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)  # one GPU per process, whatever index the config named
    student.to(device)
    method.to(device)
    if teacher is not None:
        teacher.to(device)
    run_dir = Path(run_dir)
    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    if method.needs_teacher and teacher is None and cache is None:
        raise ValueError(f"method {method.name!r} needs a teacher")
    trainable = list(student.parameters()) + list(method.parameters())
    if teacher is not None:
        teacher_ids = {id(p) for p in teacher.model.parameters()}
        if any(id(p) in teacher_ids for p in trainable):
            raise ValueError("the student shares parameters with the frozen teacher")

    n_train = len(data.train)
    check_global_batch(batch_size, ctx)
    # A last batch with fewer than 2 samples per process would give BatchNorm a lone sample in train mode.
    drop_last = 0 < n_train % batch_size < 2 * ctx.world
    batches_per_epoch = n_train // batch_size if drop_last else math.ceil(n_train / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    optimizer = build_optimizer(cfg, trainable)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    marker = run_dir / NONFINITE

    start_epoch, best_acc, best_epoch = 0, -1.0, 0
    ckpt_path = run_dir / CHECKPOINT
    factor = lr_factor(cfg, steps_per_epoch)
    # Rank 0 reads the checkpoint and hands it to every process: they resume (or start) together,
    # even on nodes that do not share rank 0's disk.
    ckpt = ctx.broadcast_object(ctx.on_main(lambda: read_checkpoint(ckpt_path, cfg.epochs))) if ctx.active \
        else read_checkpoint(ckpt_path, cfg.epochs)
    if ckpt is not None:
        restore(ckpt, ckpt_path, student, method, optimizer, scheduler, cfg.lr, cfg.weight_decay, factor)
        start_epoch, best_acc, best_epoch = ckpt["epoch"], ckpt["best_val_accuracy"], ckpt["best_epoch"]
        ranks = ckpt.get("rng_ranks") or []
        if ctx.rank > 0 and len(ranks) == ctx.world:
            set_rng_state(ranks[ctx.rank])  # each process resumes its own dropout stream
    elif ctx.active:
        ctx.broadcast_module(student)  # one starting point for every process
        ctx.broadcast_module(method)
        torch.manual_seed(seed * 1_000_003 + 7919 * ctx.rank)  # then different dropout masks per process
    if ctx.is_main:
        claim_run_files(run_dir)
        completed_metrics(run_dir / METRICS, start_epoch)

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.precision == "bf16" else nullcontext
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        method.train()
        method.start_epoch(epoch, cfg.epochs)
        epoch_threads = threads.adjust(cfg.threads)  # this run's share of the cores (kdistill.threads)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        sums: dict[str, float] = {}
        last_lr = optimizer.param_groups[0]["lr"]
        seen = correct = 0
        bar = tqdm(total=batches_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if progress and ctx.is_main else True, unit="batch")
        shard_sum = shard_count = 0
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(iterate_batches(data.train, batch_size, shuffle=True, generator=generator, drop_last=drop_last)):
            teacher_logits = None
            if cache is not None:
                batch, teacher_logits = cache.targets(batch, generator)
            elif augment is not None:
                batch = Batch(augment(batch.inputs, generator), batch.labels, batch.index)
            global_n = batch.labels.shape[0]
            if ctx.active:  # every process drew the same global batch (and its augmentation): keep this rank's slice
                part = ctx.shard(global_n)
                batch = Batch(batch.inputs[part], batch.labels[part], batch.index[part])
                teacher_logits = teacher_logits[part] if teacher_logits is not None else None
                shard_sum += int(batch.index.sum())
                shard_count += batch.labels.shape[0]
            if device.type != "cpu":
                batch = Batch(batch.inputs.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True), batch.index)
                teacher_logits = teacher_logits.to(device, non_blocking=True) if teacher_logits is not None else None
            with autocast():
                student_logits = student(batch.inputs)
                if cache is None and method.needs_teacher:
                    teacher_logits = teacher(batch.inputs)
                terms = method(batch, student_logits, teacher_logits)
            loss = sum(terms.values())
            values = {k: float(v.detach()) for k, v in {"loss": loss, **terms}.items()}
            if not ctx.active and not math.isfinite(values["loss"]):  # several processes: the gradient check below
                raise stop_nonfinite(run_dir, epoch + 1, i + 1, "the loss went non-finite ("
                                     + ", ".join(nonfinite_terms(values)) + ")", cfg.lr)
            group_start = i - i % cfg.grad_accum  # the last group of an epoch may be short: weight by its real size
            # Each process's mean is scaled by its share of the global batch, so the average over processes
            # (average_gradients) is the gradient of the global batch's mean loss.
            share = batch.labels.shape[0] * ctx.world / global_n
            (loss * share / min(cfg.grad_accum, batches_per_epoch - group_start)).backward()
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == batches_per_epoch:
                ctx.average_gradients(trainable)
                grads = [p.grad for p in trainable if p.grad is not None]
                norm = float(nn.utils.clip_grad_norm_(trainable, cfg.grad_clip) if cfg.grad_clip
                             else nn.utils.get_total_norm(grads))
                if not math.isfinite(norm):  # the same averaged gradient on every process: all stop together
                    raise stop_nonfinite(run_dir if ctx.is_main else None, epoch + 1, i + 1,
                                         f"the gradient norm went non-finite ({norm})", cfg.lr)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                last_lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
            n = batch.labels.shape[0]
            seen += n
            correct += int((student_logits.detach().argmax(-1) == batch.labels).sum())
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * n
            bar.update(1)
            bar.set_postfix({k: f"{v / seen:.4f}" for k, v in sums.items()} | {"samples/s": f"{seen / (time.perf_counter() - t0):.0f}"})
        bar.close()
        train_seconds = time.perf_counter() - t0

        student.eval()
        if ctx.active:
            ctx.broadcast_buffers(student)  # BatchNorm statistics of rank 0, as DDP keeps them
            ctx.broadcast_buffers(method)
            keys = sorted(sums)
            totals = ctx.sum([sums[k] for k in keys] + [seen, correct], device)
            sums, seen, correct = dict(zip(keys, totals[:-2])), int(totals[-2]), int(totals[-1])
            part = ctx.shard(len(data.val))  # each process scores its slice of the validation split
            val_correct = int((predict_logits(student, data.val.inputs[part], eval_batch_size).argmax(-1)
                               == data.val.labels[part]).sum())
            val_acc = ctx.sum([val_correct], device)[0] / len(data.val)
            shards = ctx.gather({"samples": shard_count, "index_sum": shard_sum})
        else:
            val_acc = accuracy(predict_logits(student, data.val.inputs, eval_batch_size), data.val.labels)
        record = {"epoch": epoch + 1, "lr": last_lr, **{k: v / seen for k, v in sums.items()},
                  "train_accuracy": correct / seen, "val_accuracy": val_acc, "seconds": train_seconds,
                  "samples_per_s": seen / train_seconds, "threads": epoch_threads}
        if ctx.active:
            record["processes"] = shards  # what each process trained on this epoch
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
            marker.unlink(missing_ok=True)
        ctx.barrier()
        if on_epoch_end is not None:
            on_epoch_end(record)
        if progress and ctx.is_main:
            terms_text = " ".join(f"{k}={v / seen:.4f}" for k, v in sums.items())
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} {terms_text} train_acc={correct / seen:.4f} "
                       f"val_acc={val_acc:.4f} {seen / train_seconds:.0f} samples/s")
    student.eval()
    return FitResult(best_acc, best_epoch, cfg.epochs, start_epoch, time.perf_counter() - started)
