"""What `kdistill train`, `distill` and `evaluate` do: config -> data, models -> engine -> run dir -> report.

Everything that can be wrong with the user's input is checked before the run directory
is touched (data loads, models build, a dry forward pass of student, teacher and method).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from kdistill.training import distributed, threads
from kdistill.config import (DistillRunConfig, TrainRunConfig, dump_config, read_yaml, run_role, validate_config,
                             with_data_overrides)
from kdistill.data import DataSplits, load_dataset
from kdistill.data.transfer import drop_unlabeled, transfer_note
from kdistill.data.augment import Augmenter, build_augmentation
from kdistill.data.splits import Batch
from kdistill.training.checkpoint import BEST
from kdistill.training.engine import check_global_batch, fit, resolve_device, seed_everything
from kdistill.errors import KdistillError, first_line
from kdistill.models.inference import predict_logits
from kdistill.methods import Method, build_distill_method, build_method
from kdistill.methods.base import check_labels, check_task, learns_from_unlabeled
from kdistill.models import build_model, load_run_model, load_weights, model_spec
from kdistill.evaluate.report import evaluate_model, report_row, write_report
from kdistill.training.rundir import check_finished, check_out_dir, overlaps, prepare_run_dir
from kdistill.training.teacher_cache import TeacherCache, cache_fingerprint, default_cache_dir, open_or_build_cache
from kdistill.training.tracking import check_installed, open_trackers
from kdistill.training.teachers import (FrozenTeacher, check_same_teacher, check_teacher_on_data, check_trained_on, load_teacher,
                               print_notes, record_teacher, recorded_teacher)


def _dry_run(student: nn.Module, method: Method, teacher: FrozenTeacher | None, data: DataSplits) -> None:
    """Run two training samples through everything, so shape errors surface before any file is written."""
    batch = Batch(data.train.inputs[:2], data.train.labels[:2], torch.arange(2))
    state = {k: v.clone() for k, v in student.state_dict().items()}  # BatchNorm stats must not move
    method_state = {k: v.clone() for k, v in method.state_dict().items()}  # nor those of a connector
    student.train()
    try:
        logits = student(batch.inputs)
        if logits.shape != (2, data.num_classes):
            raise KdistillError(f"student outputs shape {tuple(logits.shape[1:])}, expected ({data.num_classes},) logits")
        teacher_logits = teacher(batch.inputs) if method.needs_teacher and teacher is not None else None
        method(batch, logits, teacher_logits)
    except (RuntimeError, ValueError) as exc:
        raise KdistillError(f"a dry run of the first batch failed: {first_line(exc)}") from None
    finally:
        student.load_state_dict(state)
        method.load_state_dict(method_state)
        student.zero_grad(set_to_none=True)
        method.zero_grad(set_to_none=True)


def _report_row(model: nn.Module, data: DataSplits, split: str, cfg: TrainRunConfig | DistillRunConfig, role: str,
                weights_path: Path, teacher: FrozenTeacher | None) -> dict[str, Any]:
    """Evaluate `model` on one split (on the CPU); distilled rows add agreement with, and the hash of, the teacher."""
    part = data.split(split)
    teacher_logits = predict_logits(teacher.model, part.inputs) if teacher is not None else None
    row = evaluate_model(model, part.inputs, part.labels, name=cfg.name, role=role, dataset=data.name, split=split,
                         weights_path=weights_path, teacher_logits=teacher_logits, seeds=[cfg.seed],
                         config_sha256=cfg.sha256())
    if teacher is not None:
        row["teacher_sha256"] = teacher.weights_sha256
    return row


def _train_and_report(
    cfg: TrainRunConfig | DistillRunConfig,
    student: nn.Module,
    spec: dict[str, Any],
    method: Method,
    teacher: FrozenTeacher | None,
    data: DataSplits,
    role: str,
    overwrite: bool,
    progress: bool,
    get_cache: Callable[[Augmenter | None], TeacherCache | None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    augment = build_augmentation(cfg.data.augment, data.input_shape)
    if augment is not None and augment.mix is not None:
        check_labels(method, data.train.labels, augment.mix.kind)
    resolve_device(cfg.train.device)  # a cuda request without a GPU fails here, before any file is written
    check_installed(cfg.train.log_to)
    ctx = distributed.current()
    check_global_batch(cfg.data.batch_size, ctx)  # before anything is written
    if ctx.active and method.single_process_reason:
        raise KdistillError(f"distill.method {method.name!r} runs in one process only: {method.single_process_reason}; "
                            "start it without torchrun")
    trackers = None
    try:
        # Feature methods hook their layers and size their connectors now, before the optimiser exists.
        method.bind(student, teacher.model if teacher is not None else None, data.train.inputs[:2], len(data.train))
        _dry_run(student, method, teacher, data)
        out = cfg.out_dir()
        check_out_dir(out, protected=[Path(source) for source in teacher.sources] if teacher is not None else [])
        if teacher is not None and not overwrite and not (out / "report.json").exists():
            check_same_teacher(out, teacher)  # resuming with a retrained teacher would mix two teachers
        cache = None
        if get_cache is not None:  # built (if needed) before the run dir is touched; by rank 0 when several
            cache = ctx.on_main(lambda: get_cache(augment))
            cache = cache or get_cache(augment)
        if ctx.is_main:
            for note in data.notes:
                print(note, file=sys.stderr)
            print_notes(teacher)

        def prepare() -> None:
            prepare_run_dir(out, dump_config(cfg), spec, overwrite=overwrite)
            if teacher is not None:
                record_teacher(out, teacher)

        ctx.on_main(prepare)
        trackers = ctx.on_main(lambda: open_trackers(cfg.train.log_to, out, cfg.name, cfg.model_dump(mode="json")))

        def epoch_end(record: dict) -> None:
            if trackers is not None:
                trackers.log(record)
            if on_epoch_end is not None:
                on_epoch_end(record)

        fit(student, method, data, cfg.train, run_dir=out, seed=cfg.seed, batch_size=cfg.data.batch_size,
            eval_batch_size=cfg.data.eval_batch_size, teacher=teacher if cache is None else None,  # cached: no teacher on the GPU
            augment=augment, cache=cache, progress=progress, on_epoch_end=epoch_end)
    finally:
        method.unbind()  # no hooks stay on the models
        if trackers is not None:
            trackers.close()
    if not ctx.is_main:
        return {}  # rank 0 evaluates and writes the report
    # Evaluation (and its latency numbers) is on the CPU, whatever device trained the model.
    student.cpu()
    if teacher is not None:
        teacher.to("cpu")
    load_weights(student, out / BEST)
    row = _report_row(student, data, "test", cfg, role, out / BEST, teacher)
    write_report([row], out / "report.json")
    return row


@threads.counted
def run_train(cfg: TrainRunConfig, *, overwrite: bool = False, progress: bool = True,
              on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train `cfg.model` on labels only; returns the test report row ({} on ranks other than 0 under torchrun)."""
    check_installed(cfg.train.log_to)
    distributed.init_from_env(resolve_device(cfg.train.device))
    data = load_dataset(cfg.data, unlabeled=False)
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, cfg.model.kwargs(), data.input_shape, data.num_classes, where="model")
    spec = model_spec(cfg.model.name, cfg.model.kwargs(), data.input_shape, data.classes)
    return train_model(cfg, model, spec, data, overwrite=overwrite, progress=progress, on_epoch_end=on_epoch_end)


def train_model(cfg: TrainRunConfig, model: nn.Module, spec: dict[str, Any], data: DataSplits, *,
                overwrite: bool = False, progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train an already built `model` (its model.json `spec`) on `data`'s labels: run_train's second half.
    Unlabelled training samples (transfer data) are left out: there is no teacher to learn them from."""
    labeled = drop_unlabeled(data)
    if len(labeled.train) < len(data.train) or cfg.data.unlabeled is not None:
        left_out = len(data.train) - len(labeled.train)
        note = (f"kdistill: data: train learns from labels only: {len(labeled.train):,} labelled training samples; "
                f"{left_out:,} unlabelled ones left out"
                + (" (data.unlabeled is used by distill runs only)" if cfg.data.unlabeled is not None else ""))
        labeled = replace(labeled, notes=[*labeled.notes, note])
    return _train_and_report(cfg, model, spec, build_method("ce", {}), None, labeled, cfg.role, overwrite, progress,
                             on_epoch_end=on_epoch_end)


def _teacher_cache(cfg: DistillRunConfig, method: Method, teacher: FrozenTeacher, data: DataSplits,
                   augment: Augmenter | None, *, rebuild: bool = False, progress: bool = True) -> TeacherCache:
    """Open the cache `cfg.distill.cache` describes, building it if absent or interrupted (or if `rebuild`)."""
    ccfg = cfg.distill.cache
    if not method.needs_teacher:
        raise KdistillError(f"distill.method {method.name!r} with these weights does not use the teacher; there is nothing to cache")
    if method.reads_teacher_features:
        raise KdistillError(f"distill.method {method.name!r} reads the teacher's intermediate features, which a cache "
                            "does not hold; set distill.teacher_outputs=live")
    if ccfg.views > 1 and augment is None:
        raise KdistillError(f"distill.cache.views={ccfg.views} needs data.augment: without augmentation every view "
                            "is the same image; use distill.cache.views=1")
    if ccfg.top_k is not None and ccfg.top_k >= data.num_classes:
        raise KdistillError(f"distill.cache.top_k={ccfg.top_k} must be smaller than the number of classes ({data.num_classes})")
    if ccfg.views == 1 and augment is not None:
        print("kdistill: warning: distill.cache.views=1 with data.augment stores one augmented view per sample, so every "
              "epoch shows the student the same crop and flip; use distill.cache.views >= 4 to keep augmentation's "
              "variety", file=sys.stderr)
    fingerprint = cache_fingerprint(teacher, data.name, data.train, data.classes, augment, ccfg)
    if ccfg.dir:
        path = Path(ccfg.dir)
    elif teacher.run_dir:
        path = default_cache_dir(teacher.run_dir, fingerprint)
    else:
        raise KdistillError(f"distill.cache.dir is required when the teacher is not a kdistill run directory "
                            f"({teacher.source} is a {teacher.kind} teacher)")
    if overlaps(path, cfg.out_dir()):
        raise KdistillError(f"distill.cache.dir {path} overlaps the run directory {cfg.out_dir()}; set another distill.cache.dir")
    print_notes(teacher)
    device = resolve_device(cfg.train.device)
    cache, built = open_or_build_cache(path, teacher, data.train, data.num_classes, augment, ccfg, fingerprint, device,
                                       rebuild=rebuild, progress=progress)
    teacher.to("cpu")
    took = f", built in {cache.header['seconds']:.1f} s" if built else ""
    print(f"kdistill: teacher cache {path}: {len(data.train)} samples x {ccfg.views} view(s), "
          f"{cache.size_bytes() / 1e6:.1f} MB ({cache.size_bytes() / ccfg.views / 1e6:.2f} MB per view){took}",
          file=sys.stderr)
    if ccfg.views_per_image > 1:
        print(f"kdistill: each epoch trains on {ccfg.views_per_image} stored views of every image from one decoded copy: "
              f"{len(data.train) * ccfg.views_per_image:,} samples per epoch", file=sys.stderr)
    return cache


def check_views_per_image(cfg: DistillRunConfig, method: Method) -> None:
    """`distill.cache.views_per_image` K needs a cache of at least K views and a batch of whole images' views."""
    per_image, ccfg = cfg.distill.cache.views_per_image, cfg.distill.cache
    if per_image == 1:
        return
    if cfg.distill.teacher_outputs != "cached" or not method.needs_teacher:
        raise KdistillError(f"distill.cache.views_per_image={per_image} shows each image in {per_image} stored views of "
                            "the teacher cache; set distill.teacher_outputs=cached (with a method that uses the teacher)")
    if per_image > ccfg.views:
        raise KdistillError(f"distill.cache.views_per_image={per_image} needs at least that many stored views; "
                            f"distill.cache.views is {ccfg.views}")
    if cfg.data.batch_size % per_image:
        raise KdistillError(f"data.batch_size={cfg.data.batch_size} must be a multiple of distill.cache.views_per_image="
                            f"{per_image} (each batch holds batch_size / {per_image} images, {per_image} views each)")


def distill_setup(cfg: DistillRunConfig, data: DataSplits | None = None,
                  teacher: FrozenTeacher | None = None) -> tuple[DataSplits, FrozenTeacher | None, Method]:
    """The method, the data (loaded unless given) and the teacher (the config's, unless one is given), checked
    against each other."""
    method = build_distill_method(cfg.distill.method, cfg.distill.method_params(), cfg.distill.terms)
    check_task(method, "vision")
    check_views_per_image(cfg, method)
    data = data if data is not None else load_dataset(cfg.data, unlabeled=learns_from_unlabeled(method))
    if not learns_from_unlabeled(method):  # plain CE: the unlabelled samples (given in Python) would add nothing
        data = drop_unlabeled(data)
    check_labels(method, data.train.labels)
    note = transfer_note(data)
    if note and note not in data.notes:
        data = replace(data, notes=[*data.notes, note])
    if teacher is None and cfg.teacher is not None:
        teacher = _config_teacher(cfg, cfg.teacher, data, precision=cfg.distill.teacher_precision)
    if teacher is None:
        if method.needs_teacher:
            raise KdistillError(f"teacher: missing; method {method.name!r} learns from a teacher run directory "
                                "(set teacher: runs/<teacher>); teacher-free methods: tf_kd, dml")
        return data, None, method
    if method.reads_teacher_features and not teacher.has_modules:
        raise KdistillError(f"distill.method {method.name!r} reads the teacher's intermediate features, and teacher "
                            f"{teacher.source} is a {teacher.kind} graph with no modules to read them from; use a logit "
                            "method (kd, dkd, dist, ls_kd), or give the teacher as {model: {name: ...}, weights: FILE}")
    return data, teacher, method


def _config_teacher(cfg: DistillRunConfig, ref: Any, data: DataSplits, precision: str = "fp32") -> FrozenTeacher:
    """The teacher `ref` names, with the config's teacher_input and teacher_trust, checked against the data."""
    teacher = load_teacher(ref, precision, data=data, teacher_input=cfg.teacher_input, trust=cfg.teacher_trust)
    teacher.notes = check_teacher_on_data(teacher, data)
    return teacher


@threads.counted
def run_distill(cfg: DistillRunConfig, *, overwrite: bool = False, progress: bool = True,
                on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Distil `cfg.teacher` into `cfg.student`; returns the test report row ({} on ranks other than 0 under torchrun)."""
    check_installed(cfg.train.log_to)
    distributed.init_from_env(resolve_device(cfg.train.device))
    data, teacher, method = distill_setup(cfg)
    seed_everything(cfg.seed)
    student = build_model(cfg.student.name, cfg.student.kwargs(), data.input_shape, data.num_classes, where="student")
    spec = model_spec(cfg.student.name, cfg.student.kwargs(), data.input_shape, data.classes)
    return distill_student(cfg, student, spec, method, teacher, data, overwrite=overwrite, progress=progress,
                           on_epoch_end=on_epoch_end)


def distill_student(cfg: DistillRunConfig, student: nn.Module, spec: dict[str, Any], method: Method,
                    teacher: FrozenTeacher | None, data: DataSplits, *, overwrite: bool = False, progress: bool = True,
                    on_epoch_end: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train an already built `student` from `distill_setup`'s method and teacher: run_distill's second half
    (the teacher cache opened or built when the config asks for it)."""
    get_cache = None
    if cfg.distill.teacher_outputs == "cached" and teacher is not None and method.needs_teacher:
        get_cache = lambda augment: _teacher_cache(cfg, method, teacher, data, augment, progress=progress)  # noqa: E731
    return _train_and_report(cfg, student, spec, method, teacher, data, run_role(cfg), overwrite, progress, get_cache,
                             on_epoch_end)


def run_cache_teacher(cfg: DistillRunConfig, *, rebuild: bool = False, progress: bool = True) -> TeacherCache:
    """`kdistill cache-teacher`: build (or check) the teacher cache a distill config describes."""
    data, teacher, method = distill_setup(cfg)
    if teacher is None:
        raise KdistillError(f"distill.method {method.name!r} has no teacher; there is nothing to cache")
    augment = build_augmentation(cfg.data.augment, data.input_shape)
    return _teacher_cache(cfg, method, teacher, data, augment, rebuild=rebuild, progress=progress)


def finished_row(cfg: Any) -> dict[str, Any] | None:
    """The test report row of `cfg`'s run directory if that run finished with exactly this config, else None.

    Lets a benchmark that is run again reuse its finished runs (vision or text configs alike). The stored
    config is validated again before the comparison, so a config option added later with its default
    does not make an older run look different."""
    out = Path(cfg.out)
    if not (out / "report.json").is_file():
        return None
    try:
        stored = validate_config(read_yaml(out / "config.yaml"), type(cfg))
    except KdistillError:  # missing or damaged: not a run this config can reuse
        return None
    return report_row(out) if dump_config(stored) == dump_config(cfg) else None


def read_run_config(run_dir: Path) -> TrainRunConfig | DistillRunConfig:
    """The resolved config a run directory was trained with."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise KdistillError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise KdistillError(f"{run_dir} is not a kdistill run directory (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise KdistillError(f"{path}: corrupt config (not YAML)") from None
    if not isinstance(raw, dict):
        raise KdistillError(f"{path}: corrupt config (not a mapping)")
    kind = DistillRunConfig if "student" in raw else TrainRunConfig
    return validate_config(raw, kind, source=str(path))


def load_finished_run(run_dir: Path, data_overrides: dict[str, Any] | None = None, then: str = "evaluate",
                      data: DataSplits | None = None) -> tuple[TrainRunConfig | DistillRunConfig, DataSplits, nn.Module]:
    """A finished run's config, its data set (with `data_overrides`, e.g. another root) and its best model (eval mode, CPU).

    With `data` (loaded for another run), the run must have been trained on that data set, which is not loaded again.
    """
    cfg = read_run_config(run_dir)
    check_finished(run_dir, then)
    if data is not None and cfg.data.name != data.name:
        raise KdistillError(f"{run_dir} was trained on {cfg.data.name!r}, not {data.name!r}; compare runs of one data set")
    if data is None:
        data = load_dataset(with_data_overrides(cfg.data, data_overrides), unlabeled=False)
    model, spec = load_run_model(run_dir)
    check_trained_on(spec, data, str(run_dir))
    return cfg, data, model


def evaluate_run(run_dir: str | Path, *, split: str = "test", data_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-evaluate a finished run on a split (accuracy + efficiency); writes report.json or report-<split>.json."""
    run_dir = Path(run_dir)
    cfg, data, model = load_finished_run(run_dir, data_overrides, "evaluate")
    teacher, role = None, run_role(cfg)
    if isinstance(cfg, DistillRunConfig):
        record = recorded_teacher(run_dir)
        recorded = record["path"] if record else None
        paths = recorded if isinstance(recorded, list) else [recorded] if recorded else []
        if paths and all(Path(p).is_dir() for p in paths):
            teacher = _config_teacher(cfg, recorded, data)
        elif cfg.teacher is not None:
            teacher = _config_teacher(cfg, cfg.teacher, data)
        if teacher is not None:
            check_same_teacher(run_dir, teacher)
    else:
        role = cfg.role
    row = _report_row(model, data, split, cfg, role, run_dir / BEST, teacher)
    write_report([row], run_dir / ("report.json" if split == "test" and not data_overrides else f"report-{split}.json"))
    return row
