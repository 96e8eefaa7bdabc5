"""`kdistill train` / `distill` / `evaluate` for `task: text-classification` (Hugging Face models).

A text run directory holds kdistill's `config.yaml`, `model.json`, `metrics.jsonl` and
`report.json`, and the model's `save_pretrained` output with its tokenizer at the top level,
so the run directory itself loads with `AutoModelForSequenceClassification.from_pretrained`
and can be the teacher of another run. The Trainer's checkpoints (for resume) are in `state/`.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.training import distributed, threads
from kdistill.config import dump_config, load_config, run_role
from kdistill.data.transfer import UNLABELED, transfer_line
from kdistill.methods.base import check_labels, learns_from_unlabeled
from kdistill.errors import KdistillError, first_line
from kdistill.evaluate.report import summarize_times, write_report
from kdistill.training.rundir import check_out_dir, finished_hf_run_config, prepare_run_dir, save_into, write_owned_text
from kdistill.text.guard import EpochEnd, GuardedTrainer, RecordCheckpoints, ThreadShare
from kdistill.training.tracking import Trackers, check_installed, trainer_callback
from kdistill.text.config import TextDistillRunConfig, TextTrainRunConfig
from kdistill.text.data import TextSplits, load_text_splits

TASK = "text-classification"


def load_text_config(path: str | Path, overrides: list[str], distill: bool) -> TextTrainRunConfig | TextDistillRunConfig:
    return load_config(path, overrides, TextDistillRunConfig if distill else TextTrainRunConfig)


def _hf_path(value: str, what: str) -> Path:
    path = Path(value[3:] if value.startswith("hf:") else value)
    if not (path / "config.json").is_file():
        raise KdistillError(f"{what}: {path} is not a Hugging Face model folder (no config.json)")
    return path


def run_device(cfg: TextTrainRunConfig | TextDistillRunConfig) -> str:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise KdistillError("train.device: cuda requested but no CUDA GPU is available; use train.device=cpu or auto")
    return "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"


def _labels_of(model: Any) -> list[str]:
    id2label = model.config.id2label or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def require_text_extra() -> None:
    """Text runs need transformers, accelerate and datasets (the `text` extra); say so in one line."""
    import importlib.util

    missing = [m for m in ("transformers", "accelerate", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise KdistillError(f"task: text-classification needs {', '.join(missing)}: pip install 'kdistill[text]'")


def join_processes(cfg: Any) -> distributed.Context:
    """Under torchrun, join the process group (the Trainer's DDP then uses it); `data.batch_size` is the global
    batch, split evenly over the processes, as in vision runs."""
    ctx = distributed.init_from_env(torch.device(run_device(cfg)))
    if ctx.active and cfg.data.batch_size % ctx.world:
        raise KdistillError(f"data.batch_size={cfg.data.batch_size} is the global batch; with {ctx.world} processes "
                            f"it must be a multiple of {ctx.world}")
    return ctx


def quiet_transformers(progress: bool = False) -> None:
    """Transformers' own progress bars and load reports are noise next to kdistill's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not progress:
        import datasets

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()  # "Map: 100%|...|" per tokenised split


def load_classifier(path: Path, what: str, labels: list[str] | None = None):
    """A sequence classifier and its tokenizer from a local folder; `labels` gives a new head its label names."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()

    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if labels is None:
            model = AutoModelForSequenceClassification.from_pretrained(path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError) as exc:
        raise KdistillError(f"{what}: cannot load {path} ({first_line(exc, 200)})") from None
    del config
    return model, tokenizer


def _check_teacher(teacher: Any, path: Path, data: TextSplits) -> None:
    archs = teacher.config.architectures or []
    if archs and not any("SequenceClassification" in a for a in archs):
        raise KdistillError(f"teacher: {path} is a {archs[0]}, not a trained classifier; fine-tune it first "
                            "(kdistill train with task: text-classification)")
    names = _labels_of(teacher)
    if names != data.labels:
        raise KdistillError(f"teacher: {path} predicts {len(names)} labels {names[:4]}... but the data has {len(data.labels)} "
                            f"{data.labels[:4]}...; distil on the data set the teacher was trained on")


def _tokenized(rows: list[dict], tokenizer: Any, max_length: int):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                  remove_columns=["text"]).rename_column("label", "labels")


def training_arguments(cfg: Any, out: Path, n_train: int, progress: bool, distill: bool, **changes: Any):
    """The Trainer's arguments for a run of `cfg` (a text-classification or causal-LM config); `changes`
    replace the classifier's choices (best model by validation accuracy, ...)."""
    from transformers import TrainingArguments

    from kdistill.text.trainer import DistillationTrainingArguments

    steps = math.ceil(n_train / (cfg.data.batch_size * cfg.train.grad_accum)) * cfg.train.epochs
    per_process = cfg.data.batch_size // distributed.current().world  # data.batch_size is the global batch
    common = dict(output_dir=str(out / "state"), per_device_train_batch_size=per_process,
                  per_device_eval_batch_size=cfg.data.eval_batch_size, num_train_epochs=cfg.train.epochs,
                  learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                  warmup_steps=int(cfg.train.warmup_ratio * steps), lr_scheduler_type=cfg.train.scheduler,
                  gradient_accumulation_steps=cfg.train.grad_accum, bf16=cfg.train.precision == "bf16",
                  use_cpu=run_device(cfg) == "cpu", eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
                  load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
                  logging_strategy="epoch", report_to="none", seed=cfg.seed, data_seed=cfg.seed,
                  disable_tqdm=not progress, dataloader_num_workers=0, save_only_model=False,
                  # Each process's loss is the mean over its own slice and DDP averages the gradients: the global
                  # batch's mean. (Averaging token counts across processes makes the Trainer multiply the loss
                  # by the number of processes, which a classifier's mean loss must not get: 2x the gradient.)
                  average_tokens_across_devices=False)
    common.update(changes)
    common.update(_passed_through(cfg.train.trainer_args, common, TrainingArguments))
    if distill:  # the loss is the config's method (DistillationTrainer's method=), not these arguments' alpha and T
        return DistillationTrainingArguments(**common)
    return TrainingArguments(**common)


def _passed_through(extra: dict[str, Any], chosen: dict[str, Any], arguments: type) -> dict[str, Any]:
    """`train.trainer_args`: further `TrainingArguments` (fsdp, fsdp_config, deepspeed, activation_checkpointing,
    optim, ...) given to the Trainer as they are; one line for a name it does not take or one kdistill sets
    from its own keys (set train.lr, data.batch_size, ... instead)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments)}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise KdistillError(f"train.trainer_args: {', '.join(unknown)} is not a TrainingArguments setting")
    taken = sorted(set(extra) & set(chosen))
    if taken:
        raise KdistillError(f"train.trainer_args: {', '.join(taken)} is set by kdistill from its own config keys "
                            "(train.lr, train.epochs, data.batch_size, train.precision, ...); set those instead")
    return extra


def _accuracy_metric(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


EVAL_TIMINGS = ("runtime", "samples_per_second", "steps_per_second")


def metrics_of_log(entry: dict[str, Any]) -> dict[str, Any]:
    """One Trainer log entry in metrics.jsonl's names: loss, lr, each method term, val_* and seconds_total."""
    rec: dict[str, Any] = {}
    if "loss" in entry:  # and each term of the method (DistillationTrainer logs loss_<term>)
        rec.update(loss=entry["loss"], lr=entry.get("learning_rate"),
                   **{k.removeprefix("loss_"): v for k, v in entry.items() if k.startswith("loss_")})
    # eval_accuracy -> val_accuracy, eval_loss -> val_loss, eval_perplexity -> val_perplexity
    rec.update({"val_" + k[5:]: v for k, v in entry.items() if k.startswith("eval_") and k[5:] not in EVAL_TIMINGS})
    if "train_runtime" in entry:
        rec["seconds_total"] = entry["train_runtime"]
    return rec


def write_trainer_metrics(trainer: Any, out: Path) -> None:
    epochs: dict[int, dict[str, Any]] = {}
    for entry in trainer.state.log_history:
        if "epoch" not in entry:
            continue
        epoch = int(round(entry["epoch"]))
        epochs.setdefault(epoch, {"epoch": epoch}).update(metrics_of_log(entry))
    write_owned_text(out, "metrics.jsonl", "".join(json.dumps(r) + "\n" for _, r in sorted(epochs.items())))


def predict_text_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Logits (float32, CPU) of `model` for `texts`, batched with padding, in eval mode without autograd."""
    model.eval()
    device = next(model.parameters()).device
    # Batches of similar length pad little: run in order of length, return in the given order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(0)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
            if out.numel() == 0:
                out = torch.empty(len(texts), logits.shape[-1])
            out[torch.tensor(index)] = logits
    return out


def with_teacher_logits(dataset: Any, rows: list[dict], teacher: Any, tokenizer: Any, max_length: int, device: str) -> Any:
    """`dataset` plus a `cached_teacher_logits` column: the teacher's logits for each row's text, computed once."""
    from kdistill.text.trainer import CACHED_LOGITS

    logits = predict_text_logits(teacher.to(device), tokenizer, [r["text"] for r in rows], max_length).tolist()
    if isinstance(dataset, list):  # raw rows, tokenised by the collator
        return [{**row, CACHED_LOGITS: value} for row, value in zip(dataset, logits)]
    return dataset.add_column(CACHED_LOGITS, logits)


def same_tokenizer(a: Any, b: Any) -> bool:
    """Do two tokenizers encode every text identically (the same object, or the same fast-tokenizer pipeline
    and model inputs)? Then teacher and student share one encoding."""
    if a is b:
        return True
    try:
        return (type(a) is type(b) and a.model_input_names == b.model_input_names
                and a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str())
    except AttributeError:  # slow tokenizers: no serialised pipeline to compare
        return False


def measure_text_latency(model: Any, tokenizer: Any, texts: list[str], max_length: int, repeats: int = 50,
                         warmup: int = 5) -> dict[str, Any]:
    """Batch-1 CPU latency (ms) on real sentences: sentence r % n at its own length, tokenised outside the timer."""
    model.eval()
    encoded = [tokenizer(t, truncation=True, max_length=max_length, return_tensors="pt") for t in texts[: max(repeats, 1)]]
    times = []
    with torch.inference_mode():
        for r in range(warmup + repeats):
            enc = encoded[r % len(encoded)]
            t0 = time.perf_counter()
            model(**enc)
            if r >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    return summarize_times(times, batch=1)


def measure_text_throughput(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch: int = 64) -> dict[str, Any]:
    enc = tokenizer(texts[:batch], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    n = int(enc["input_ids"].shape[0])
    rates = []
    with torch.inference_mode():
        model(**enc)
        for _ in range(3):
            t0 = time.perf_counter()
            model(**enc)
            rates.append(n / (time.perf_counter() - t0))
    return {"batch": n, "value": statistics.median(rates), "threads": torch.get_num_threads()}


def evaluate_text_model(model: Any, tokenizer: Any, data: TextSplits, split: str, *, name: str, role: str, out: Path,
                        max_length: int, seed: int, config_sha256: str | None, teacher: Any = None,
                        teacher_tokenizer: Any = None) -> dict[str, Any]:
    """A report row (the vision schema) for a text classifier, measured on the CPU."""
    model = model.cpu().eval()
    rows = data.split(split)
    texts, labels = [r["text"] for r in rows], torch.tensor([r["label"] for r in rows])
    logits = predict_text_logits(model, tokenizer, texts, max_length)
    row = {"name": name, "role": role, "dataset": data.name, "split": split, "samples": len(rows),
           "accuracy": float((logits.argmax(-1) == labels).float().mean()),
           "params": sum(p.numel() for p in model.parameters()),
           "size_bytes": (out / "model.safetensors").stat().st_size if (out / "model.safetensors").is_file() else None,
           "latency_ms": measure_text_latency(model, tokenizer, texts, max_length),
           "throughput_per_s": measure_text_throughput(model, tokenizer, texts, max_length),
           "agreement_with_teacher": None, "seeds": [seed], "config_sha256": config_sha256}
    if teacher is not None:
        t_logits = predict_text_logits(teacher.cpu().eval(), teacher_tokenizer, texts, max_length)
        row["agreement_with_teacher"] = float((logits.argmax(-1) == t_logits.argmax(-1)).float().mean())
    return row


def prepare_hf_run(cfg: Any, out: Path, overwrite: bool, labels: list[str] | None, protected: list[Path],
                   task: str = TASK) -> bool:
    """Make `out` ready for a run whose model is a Hugging Face folder (model.json: its task, classes)."""
    check_installed(cfg.train.log_to)
    check_out_dir(out, protected=protected)
    spec = {"task": task, "format": "huggingface"} | ({"classes": labels} if labels is not None else {})
    return prepare_run_dir(out, dump_config(cfg), spec, overwrite=overwrite)


def trainer_state_epoch(checkpoint: str) -> float:
    """The epoch a Trainer checkpoint folder was saved at (0 when its trainer_state.json cannot be read)."""
    try:
        return float(json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("epoch") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def train_and_save(trainer: Any, model: Any, tokenizer: Any, out: Path, resuming: bool, progress: bool,
                   cfg: Any, on_epoch_end: Callable[[dict], None] | None = None) -> None:
    """Train (resuming from the last Trainer checkpoint), then rank 0 saves the model and metrics.jsonl;
    `cfg.train.log_to`'s trackers receive the Trainer's logs on the way, `on_epoch_end` each epoch's
    validation record (val_accuracy or val_perplexity, val_loss, epoch)."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    if not progress:  # without progress bars the Trainer prints every log dict instead
        trainer.remove_callback(PrinterCallback)
    last = get_last_checkpoint(str(out / "state")) if resuming and (out / "state").is_dir() else None
    trainer.add_callback(ThreadShare(cfg.train.threads))
    trainer.add_callback(RecordCheckpoints())
    if on_epoch_end is not None:
        trainer.add_callback(EpochEnd(on_epoch_end, metrics_of_log))
    trackers = None
    if cfg.train.log_to and distributed.current().is_main:
        done = int(round(trainer_state_epoch(last))) if last else 0
        trackers = Trackers(cfg.train.log_to, out, cfg.name, cfg.model_dump(mode="json"), first_step=done + 1)
        trainer.add_callback(trainer_callback(trackers, metrics_of_log))
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:  # a run that stops (non-finite loss, Ctrl-C) still closes its trackers: their files are complete
        if trackers is not None:
            trackers.close()
    if distributed.current().is_main:  # one process writes the run directory
        save_into(out, lambda work: (model.save_pretrained(work, safe_serialization=True), tokenizer.save_pretrained(work)))
        write_trainer_metrics(trainer, out)


@threads.counted
def run_text_train(cfg: TextTrainRunConfig, *, overwrite: bool = False, progress: bool = True,
                   on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Fine-tune `cfg.model` (hf:PATH) on the data's labels; returns the test report row."""
    require_text_extra()
    from transformers import DataCollatorWithPadding, set_seed

    ctx = join_processes(cfg)
    data = load_text_splits(cfg.data, unlabeled=False)
    if (cfg.data.labeled_samples or cfg.data.unlabeled) and ctx.is_main:
        print(f"kdistill: data: train learns from labels only: {len(data.train):,} labelled training rows"
              + ("; data.unlabeled is used by distill runs only" if cfg.data.unlabeled else ""), file=sys.stderr)
    source = _hf_path(cfg.model, "model")
    set_seed(cfg.seed)
    model, tokenizer = load_classifier(source, "model", labels=data.labels)
    out = cfg.out_dir()
    resuming = ctx.broadcast_object(ctx.on_main(lambda: prepare_hf_run(cfg, out, overwrite, data.labels, [source])))
    trainer = GuardedTrainer(model=model, args=training_arguments(cfg, out, len(data.train), progress, distill=False),
                      train_dataset=_tokenized(data.train, tokenizer, cfg.data.max_length),
                      eval_dataset=_tokenized(data.val, tokenizer, cfg.data.max_length),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy_metric)
    train_and_save(trainer, model, tokenizer, out, resuming, progress, cfg, on_epoch_end)
    if not ctx.is_main:
        return {}  # rank 0 evaluates and reports
    row = evaluate_text_model(model, tokenizer, data, "test", name=cfg.name, role=cfg.role, out=out,
                              max_length=cfg.data.max_length, seed=cfg.seed, config_sha256=cfg.sha256())
    write_report([row], out / "report.json")
    return row


def build_student(cfg: TextDistillRunConfig, teacher: Any, teacher_tokenizer: Any, labels: list[str]):
    """The student the config describes, and its tokenizer."""
    from kdistill.text.student import student_from_config, student_from_teacher

    spec = cfg.student
    if isinstance(spec, str):
        return load_classifier(_hf_path(spec, "student"), "student", labels=labels)
    if spec.from_teacher is not None:
        return student_from_teacher(teacher, num_layers=spec.from_teacher.num_layers, layers=spec.from_teacher.layers), teacher_tokenizer
    return student_from_config(teacher, **spec.from_config), teacher_tokenizer


@threads.counted
def run_text_distill(cfg: TextDistillRunConfig, *, overwrite: bool = False, progress: bool = True,
                     on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Distil the teacher (a text run directory or hf:PATH) into the student; returns the test report row."""
    require_text_extra()
    from transformers import DataCollatorWithPadding, set_seed

    from kdistill.text.trainer import (CachedLogitsCollator, DistillationTrainer, TeacherStudentCollator,
                                      check_same_tokenization)

    method = cfg.distill.build_method()  # a bad method or parameter fails before any model loads
    ctx = join_processes(cfg)
    data = load_text_splits(cfg.data, unlabeled=learns_from_unlabeled(method))
    labels = torch.tensor([row["label"] for row in data.train])
    check_labels(method, labels)
    note = transfer_line(int((labels != UNLABELED).sum()), len(labels), "rows")
    if note and ctx.is_main:
        print(note, file=sys.stderr)
    teacher_dir = _hf_path(cfg.teacher, "teacher")
    teacher, teacher_tok = load_classifier(teacher_dir, "teacher")
    _check_teacher(teacher, teacher_dir, data)
    set_seed(cfg.seed)
    student, student_tok = build_student(cfg, teacher, teacher_tok, data.labels)
    one_tokenizer = same_tokenizer(student_tok, teacher_tok)
    check_same_tokenization(method, not one_tokenizer)  # before the run directory is written
    out = cfg.out_dir()
    resuming = ctx.broadcast_object(ctx.on_main(lambda: prepare_hf_run(cfg, out, overwrite, data.labels, [teacher_dir])))
    if one_tokenizer:
        train_ds = _tokenized(data.train, student_tok, cfg.data.max_length)
        val_ds = _tokenized(data.val, student_tok, cfg.data.max_length)
        collator = DataCollatorWithPadding(student_tok)
    else:  # different tokenizers: each model gets its own encoding of the same text
        train_ds, val_ds = data.train, data.val
        collator = TeacherStudentCollator(student_tok, teacher_tok, max_length=cfg.data.max_length)
    # One teacher pass per split, not one per epoch; a feature method reads the teacher's layers, so it runs live.
    if cfg.distill.cache_teacher_logits and method.needs_teacher and not method.reads_teacher_features:
        train_ds = with_teacher_logits(train_ds, data.train, teacher, teacher_tok, cfg.data.max_length, run_device(cfg))
        val_ds = with_teacher_logits(val_ds, data.val, teacher, teacher_tok, cfg.data.max_length, run_device(cfg))
        collator = CachedLogitsCollator(collator)
    trainer = DistillationTrainer(model=student, args=training_arguments(cfg, out, len(data.train), progress, distill=True),
                                  train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
                                  compute_metrics=_accuracy_metric, teacher_model=teacher, method=method)
    train_and_save(trainer, student, student_tok, out, resuming, progress, cfg, on_epoch_end)
    if not ctx.is_main:
        return {}  # rank 0 evaluates and reports
    write_owned_text(out, "teacher.json", json.dumps({"path": str(teacher_dir.resolve())}, indent=2) + "\n")
    row = evaluate_text_model(student, student_tok, data, "test", name=cfg.name, role=run_role(cfg), out=out,
                              max_length=cfg.data.max_length, seed=cfg.seed, config_sha256=cfg.sha256(),
                              teacher=teacher, teacher_tokenizer=teacher_tok)
    write_report([row], out / "report.json")
    return row


def load_finished_text_run(run_dir: Path, then: str = "evaluate it",
                           data_overrides: dict[str, Any] | None = None) -> tuple[Any, TextSplits, Any, Any]:
    """A finished text run's config, data splits (with `data_overrides`, e.g. another root), classifier
    (eval mode, CPU) and tokenizer."""
    require_text_extra()
    cfg = finished_hf_run_config(run_dir, TextTrainRunConfig, TextDistillRunConfig, then, data_overrides)
    data = load_text_splits(cfg.data, unlabeled=False)
    model, tokenizer = load_classifier(run_dir, str(run_dir))
    if _labels_of(model) != data.labels:
        raise KdistillError(f"{run_dir}: the model's labels differ from its data set's ({cfg.data.root}); was the data changed?")
    return cfg, data, model.cpu().eval(), tokenizer


def evaluate_text_run(run_dir: str | Path, split: str = "test", data_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`kdistill evaluate` of a text run directory (`data_overrides`: e.g. the data set's root on this machine)."""
    run_dir = Path(run_dir)
    cfg, data, model, tokenizer = load_finished_text_run(run_dir, data_overrides=data_overrides)
    distill = isinstance(cfg, TextDistillRunConfig)
    teacher = teacher_tok = None
    if distill:
        record = json.loads((run_dir / "teacher.json").read_text()) if (run_dir / "teacher.json").is_file() else {}
        if record.get("path") and (Path(record["path"]) / "config.json").is_file():
            teacher, teacher_tok = load_classifier(Path(record["path"]), "teacher")
    row = evaluate_text_model(model, tokenizer, data, split, name=cfg.name, role=run_role(cfg),
                              out=run_dir, max_length=cfg.data.max_length, seed=cfg.seed, config_sha256=cfg.sha256(),
                              teacher=teacher, teacher_tokenizer=teacher_tok)
    write_report([row], run_dir / ("report.json" if split == "test" else f"report-{split}.json"))
    return row
