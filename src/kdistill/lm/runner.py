"""`kdistill train` / `distill` / `cache-teacher` / `evaluate` for `task: causal-lm` (Hugging Face causal LMs).

A causal-LM run directory is laid out as a text run's: kdistill's `config.yaml`, `model.json` (task
causal-lm), `metrics.jsonl` and `report.json`, beside the model's `save_pretrained` output and tokenizer, so
the run directory loads with `AutoModelForCausalLM.from_pretrained` and can teach another run. The
Trainer's checkpoints (for resume) are in `state/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from kdistill.training import threads
from kdistill.config import load_config, run_role
from kdistill.digests import weights_sha256
from kdistill.errors import KdistillError
from kdistill.lm.config import TASK, LMDistillRunConfig, LMTrainRunConfig
from kdistill.lm.data import LMSplits, load_lm_splits
from kdistill.lm.models import (check_block_size, check_same_head, check_same_vocabulary, hf_folder, load_causal_lm,
                                require_lm_extra, student_from_spec)
from kdistill.evaluate.report import report_row, write_report
from kdistill.training.rundir import finished_hf_run_config, write_owned_text
from kdistill.training.teachers import TEACHER_RECORD, recorded_teacher


def load_lm_config(path: str | Path, overrides: list[str], distill: bool) -> LMTrainRunConfig | LMDistillRunConfig:
    return load_config(path, overrides, LMDistillRunConfig if distill else LMTrainRunConfig)


def _lm_arguments(cfg: Any, out: Path, blocks: int, progress: bool) -> Any:
    from kdistill.text.runner import training_arguments

    # Best epoch by validation CE; items are our own blocks (no column pruning); the scored-token count is global.
    # Every parameter gets a gradient (the head too, through the chunked loss): DDP need not search for unused ones.
    return training_arguments(cfg, out, blocks, progress, distill=False, metric_for_best_model="loss",
                              greater_is_better=False, remove_unused_columns=False, average_tokens_across_devices=True,
                              ddp_find_unused_parameters=False, log_level_replica="error")


def _train_tokens_per_s(trainer: Any, block_size: int) -> float | None:
    entry = next((e for e in reversed(trainer.state.log_history) if "train_samples_per_second" in e), None)
    return float(entry["train_samples_per_second"]) * block_size if entry else None


def _fit(cfg: Any, model: Any, tokenizer: Any, data: LMSplits, method: Any, out: Path, resuming: bool, progress: bool,
         teacher: Any = None, cache: Any = None, chunk: int = 1024, generation: Any = None,
         on_epoch_end: Callable[[dict], None] | None = None) -> Any:
    from transformers import default_data_collator

    from kdistill.lm.trainer import BlockDataset, TokenTrainer
    from kdistill.text.runner import train_and_save

    trainer = TokenTrainer(model=model, args=_lm_arguments(cfg, out, len(data.train), progress),
                           train_dataset=BlockDataset(data.train, cache), eval_dataset=BlockDataset(data.val),
                           data_collator=default_data_collator, method=method, teacher=teacher, chunk_tokens=chunk,
                           cache_temperature=cache.temperature if cache else 1.0,
                           generation=generation)
    train_and_save(trainer, model, tokenizer, out, resuming, progress, cfg, on_epoch_end)
    return trainer


def _report(cfg: Any, model: Any, tokenizer: Any, data: LMSplits, split: str, out: Path, role: str, teacher: Any,
            chunk: int, train_tokens_per_s: float | None) -> dict[str, Any]:
    from kdistill.lm.evaluate import lm_report_row

    return lm_report_row(model, tokenizer, data.split(split), name=cfg.name, role=role, dataset=data.name, split=split,
                         out=out, seed=cfg.seed, config_sha256=cfg.sha256(), teacher=teacher, chunk=chunk,
                         batch_size=cfg.data.eval_batch_size, train_tokens_per_s=train_tokens_per_s)


def _prepare(cfg: Any, out: Path, overwrite: bool, protected: list[Path]) -> bool:
    from kdistill.text.runner import prepare_hf_run

    return prepare_hf_run(cfg, out, overwrite, None, protected, task=TASK)


@threads.counted
def run_lm_train(cfg: LMTrainRunConfig, *, overwrite: bool = False, progress: bool = True,
                 on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train a causal LM on next-token CE alone (a student trained alone, or fine-tuning); the test report row."""
    require_lm_extra()
    from transformers import set_seed

    from kdistill.methods import build_method
    from kdistill.text.runner import join_processes

    ctx = join_processes(cfg)
    source = hf_folder(cfg.model if isinstance(cfg.model, str) else cfg.model.base, "model")
    set_seed(cfg.seed)
    model, tokenizer = load_causal_lm(source, "model")
    if not isinstance(cfg.model, str):  # built from `base` exactly as distill builds a student from its teacher
        base = model
        set_seed(cfg.seed)
        model = student_from_spec(cfg.model, base)
        check_same_head(base, model)
        del base
    check_block_size(model, cfg.data.block_size, "the model")
    data = _load_data(cfg, tokenizer)
    out = cfg.out_dir()
    resuming = ctx.broadcast_object(ctx.on_main(lambda: _prepare(cfg, out, overwrite, [source])))
    trainer = _fit(cfg, model, tokenizer, data, build_method("ce", {}), out, resuming, progress, chunk=cfg.chunk_tokens,
                   on_epoch_end=on_epoch_end)
    if not ctx.is_main:
        return {}
    row = _report(cfg, model, tokenizer, data, "test", out, cfg.role, None, cfg.chunk_tokens,
                  _train_tokens_per_s(trainer, cfg.data.block_size))
    write_report([row], out / "report.json")
    return row


def _build_student(cfg: LMDistillRunConfig, teacher: Any, teacher_tok: Any, teacher_dir: Path) -> tuple[Any, Any]:
    from transformers import set_seed

    set_seed(cfg.seed)
    if isinstance(cfg.student, str):
        path = hf_folder(cfg.student, "student")
        student, student_tok = load_causal_lm(path, "student")
        check_same_vocabulary(teacher_tok, student_tok, str(teacher_dir), str(path))
        return student, student_tok
    return student_from_spec(cfg.student, teacher), teacher_tok


def _cache_temperature(method: Any) -> float:
    """The one temperature of the method's teacher terms (a cache holds the teacher's top-k at one temperature)."""
    values = {float(getattr(m.params, "temperature", 1.0)) for m in method.members() if m.needs_teacher}
    if len(values) > 1:
        raise KdistillError(f"distill.teacher_outputs: cached stores the teacher at one temperature; the method's terms "
                            f"use {sorted(values)}: give them one temperature, or use teacher_outputs: live")
    return values.pop() if values else 1.0


def _open_cache(cfg: LMDistillRunConfig, method: Any, teacher: Any, teacher_sha256: str, teacher_tok: Any,
                teacher_dir: Path, data: LMSplits, *, rebuild: bool = False, progress: bool = True) -> Any:
    """The matching teacher cache, built if absent (or, with `rebuild`, mismatched)."""
    from kdistill.lm.cache import default_lm_cache_dir, lm_cache_fingerprint, open_or_build_lm_cache
    from kdistill.text.runner import run_device

    settings = cfg.distill.cache
    fingerprint = lm_cache_fingerprint(teacher_sha256, teacher_tok, data.name, data.train, settings.top_k,
                                       _cache_temperature(method), settings.dtype)
    path = Path(settings.dir) if settings.dir else default_lm_cache_dir(teacher_dir, fingerprint)
    if path is None:
        raise KdistillError(f"distill.cache.dir: the teacher {teacher_dir} is not a folder kdistill wrote (an import-gguf "
                            "folder or a run), so the cache cannot go inside it; set distill.cache.dir=<a new folder>")
    cache, _ = open_or_build_lm_cache(path, teacher, data.train, int(teacher.config.vocab_size), fingerprint,
                                      settings.batch_size, torch.device(run_device(cfg)), rebuild=rebuild,
                                      progress=progress, chunk=cfg.distill.chunk_tokens)
    return cache


def _load_data(cfg: Any, tokenizer: Any) -> LMSplits:
    """The splits, with the training blocks cut to a multiple of the global batch: every optimiser step sees a whole
    batch, so one process and several (whose samplers would pad a short last batch with repeats) train alike."""
    data = load_lm_splits(cfg.data, tokenizer)
    keep = len(data.train) // cfg.data.batch_size * cfg.data.batch_size
    if keep == 0:
        raise KdistillError(f"data: {len(data.train)} training blocks make no batch of data.batch_size={cfg.data.batch_size}")
    data.train = data.train.first(keep)
    return data


def _distill_setup(cfg: LMDistillRunConfig) -> tuple[Any, Any, Any, Path, Any, Any, LMSplits]:
    """(method, teacher, teacher tokenizer, teacher folder, student, student tokenizer, data), checked."""
    require_lm_extra()
    method = cfg.distill.build_method()  # a bad method or parameter fails before any model loads
    if cfg.generation().active and not method.needs_teacher:
        raise KdistillError(f"distill.on_policy / sequence_kd need a method that reads the teacher, not {method.name!r}")
    teacher_dir = hf_folder(cfg.teacher, "teacher")
    teacher, teacher_tok = load_causal_lm(teacher_dir, "teacher")
    student, student_tok = _build_student(cfg, teacher, teacher_tok, teacher_dir)
    check_same_head(teacher, student)
    for model, what in ((teacher, "the teacher"), (student, "the student")):
        check_block_size(model, cfg.data.block_size, what)
    return method, teacher, teacher_tok, teacher_dir, student, student_tok, _load_data(cfg, teacher_tok)


def run_lm_cache_teacher(cfg: LMDistillRunConfig, *, rebuild: bool = False, progress: bool = True) -> Any:
    """`kdistill cache-teacher` of a causal-LM distill config: build (or check) its top-k teacher cache."""
    method, teacher, teacher_tok, teacher_dir, _, _, data = _distill_setup(cfg)
    if not method.needs_teacher:
        raise KdistillError(f"distill.method {method.name!r} does not read the teacher; there is nothing to cache")
    return _open_cache(cfg, method, teacher, weights_sha256(teacher), teacher_tok, teacher_dir, data, rebuild=rebuild,
                       progress=progress)


@threads.counted
def run_lm_distill(cfg: LMDistillRunConfig, *, overwrite: bool = False, progress: bool = True,
                   on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Distil the teacher into the student on next-token distributions; the test report row."""
    from kdistill.text.runner import join_processes

    ctx = join_processes(cfg)
    method, teacher, teacher_tok, teacher_dir, student, student_tok, data = _distill_setup(cfg)
    out = cfg.out_dir()
    teacher_sha256 = weights_sha256(teacher)  # the cache's fingerprint and teacher.json
    cache = None
    if cfg.distill.teacher_outputs == "cached" and method.needs_teacher:  # before the run directory: its errors too
        def opened() -> Any:
            return _open_cache(cfg, method, teacher, teacher_sha256, teacher_tok, teacher_dir, data, progress=progress)

        cache = ctx.on_main(opened)  # built once, by rank 0
        ctx.barrier()
        if not ctx.is_main:
            cache = opened()  # then the other processes open it
        teacher.cpu()  # not needed again until the report, which runs on the CPU
        if ctx.is_main:
            print(f"kdistill: teacher cache {cache.path} ({cache.bytes_per_token:.0f} bytes/token)")
    sources = [teacher_dir] + ([hf_folder(cfg.student, "student")] if isinstance(cfg.student, str) else [])
    resuming = ctx.broadcast_object(ctx.on_main(lambda: _prepare(cfg, out, overwrite, sources)))
    live = teacher if cache is None else None
    trainer = _fit(cfg, student, student_tok, data, method, out, resuming, progress, teacher=live, cache=cache,
                   chunk=cfg.distill.chunk_tokens, generation=cfg.generation(), on_epoch_end=on_epoch_end)
    if not ctx.is_main:
        return {}
    record = {"path": str(teacher_dir.resolve()), "weights_sha256": teacher_sha256} | ({"cache": str(cache.path.resolve()),
                                                     "cache_bytes_per_token": cache.bytes_per_token} if cache else {})
    write_owned_text(out, TEACHER_RECORD, json.dumps(record, indent=2) + "\n")
    row = _report(cfg, student, student_tok, data, "test", out, run_role(cfg), teacher, cfg.distill.chunk_tokens,
                  _train_tokens_per_s(trainer, cfg.data.block_size))
    write_report([row], out / "report.json")
    return row


def load_finished_lm_run(run_dir: Path, then: str = "evaluate it", data_overrides: dict[str, Any] | None = None,
                         ) -> tuple[Any, LMSplits, Any, Any]:
    """A finished causal-LM run's config, data (with `data_overrides`), model (eval, CPU) and tokenizer."""
    require_lm_extra()
    cfg = finished_hf_run_config(run_dir, LMTrainRunConfig, LMDistillRunConfig, then, data_overrides)
    model, tokenizer = load_causal_lm(run_dir, str(run_dir))
    return cfg, load_lm_splits(cfg.data, tokenizer), model, tokenizer


def check_recorded_teacher(run_dir: Path, path: Path, teacher_sha256: str) -> None:
    """Refuse a teacher at `path` whose weights differ from those `run_dir` was distilled from (its teacher.json):
    KL and agreement would measure another teacher."""
    record = recorded_teacher(run_dir) or {}
    if record.get("path") == str(path.resolve()) and record.get("weights_sha256") not in (None, teacher_sha256):
        raise KdistillError(f"{run_dir}: its teacher {path} has other weights than when the run was distilled; "
                            "KL and agreement would measure another teacher")


def run_teacher(run_dir: Path) -> Any:
    """The teacher of a finished distill run (from its teacher.json), checked to be the one it learned from, or
    None when it is gone."""
    record = recorded_teacher(run_dir) or {}
    path = Path(record["path"]) if record.get("path") else None
    if path is None or not (path / "config.json").is_file():
        return None
    teacher = load_causal_lm(path, "teacher")[0]
    check_recorded_teacher(run_dir, path, weights_sha256(teacher))
    return teacher


def evaluate_lm_run(run_dir: str | Path, split: str = "test", data_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`kdistill evaluate` of a causal-LM run directory."""
    run_dir = Path(run_dir)
    cfg, data, model, tokenizer = load_finished_lm_run(run_dir, data_overrides=data_overrides)
    distill = isinstance(cfg, LMDistillRunConfig)
    chunk = cfg.distill.chunk_tokens if distill else cfg.chunk_tokens
    speed = report_row(run_dir).get("train_tokens_per_s")  # measured while training; evaluate does not train
    row = _report(cfg, model, tokenizer, data, split, run_dir, run_role(cfg),
                  run_teacher(run_dir) if distill else None, chunk, speed)
    write_report([row], run_dir / ("report.json" if split == "test" else f"report-{split}.json"))
    return row
