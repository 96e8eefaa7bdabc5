"""Run configuration: YAML files validated by pydantic, with dotted `key=value` overrides.

Unknown keys are errors. A config only holds data (strings, numbers, lists, mappings):
it is read with `yaml.safe_load`, so it can never import or run code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdistill.errors import KdistillError, first_line


# Bounds on what a YAML text may hold (config files, overrides, --data): a hostile file gets one line, not a
# RecursionError, Python's int-string limit or an alias bomb ("billion laughs") expanded while the config is written.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000  # after aliases are expanded
MAX_BATCH = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class UnlabeledImages(_Strict):
    """`data.unlabeled`: a folder of images without labels (any depth, no class folders), used as transfer data."""

    root: str
    limit: int | None = Field(None, gt=0, description="use only the first N images (in sorted path order)")


class DataConfig(_Strict):
    """Which data set to load and how to batch it.

    `name`: digits | fashion-mnist | mnist | cifar10 | cifar100 | imagefolder (docs/design.md,
    "Data sets"). `root`: the folder holding the files (the only place looked at when set;
    required for CIFAR and imagefolder). `download`: fetch missing Fashion-MNIST files into
    `root`, or the user cache when `root` is unset, and verify their SHA-256 (never implicit).
    `image_size`: imagefolder only, resize every image to image_size x image_size.
    `train_samples`: train on a stratified subset of N training samples, the same N for every
    run and seed (a data budget, e.g. few labels); validation, test and normalisation unchanged.
    `labeled_samples`: keep the labels of that same stratified N; in a distill run the other training
    samples stay, unlabelled, as transfer data the student learns from the teacher only (dropped by train).
    `unlabeled: {root: DIR}`: add DIR's images, unlabelled, to a distill run's training split.
    `in_memory` (imagefolder, manifest): `auto` holds the images in memory when the decoded training
    split fits in `memory_limit_mb`, else streams them from disk, decoded by `workers` DataLoader
    processes (default: the CPU count); `true`/`false` force it. `train`/`val`/`test`: a manifest's
    CSV or JSONL files of `path,label` rows (paths relative to the manifest file). `image_column`,
    `label_column`: an hf-disk data set's columns.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    image_size: int | None = Field(None, gt=0, le=4096)
    train_samples: int | None = Field(None, gt=0)
    labeled_samples: int | None = Field(None, gt=0)
    unlabeled: UnlabeledImages | None = None
    batch_size: int = Field(128, gt=0, le=MAX_BATCH)
    eval_batch_size: int = Field(512, gt=0, le=MAX_BATCH)
    augment: list[str | dict[str, Any]] = Field(default_factory=list)
    in_memory: bool | Literal["auto"] = "auto"
    memory_limit_mb: int = Field(2048, gt=0)
    workers: int | None = Field(None, ge=0, le=256)
    train: str | None = None
    val: str | None = None
    test: str | None = None
    image_column: str = "image"
    label_column: str = "label"


class ModelSpec(BaseModel):
    """A zoo model: `name` plus the keyword arguments of its constructor (checked at build time)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    """Optimisation budget and schedule."""

    epochs: int = Field(20, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = Field(10, ge=1, description="epochs between lr decays (scheduler: step)")
    gamma: float = Field(0.1, gt=0, le=1, description="lr decay factor (scheduler: step)")
    warmup_epochs: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    device: str = Field("auto", description="auto (cuda if available, else cpu) | cpu | cuda | cuda:N")
    threads: int | Literal["auto"] = Field("auto", description="CPU threads for torch; auto: torch's default divided "
                                           "by the kdistill runs on the machine, each epoch (kdistill.training.threads)")
    log_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers that also receive every epoch's metrics (kdistill.training.tracking)")

    @field_validator("threads")
    @classmethod
    def _thread_count(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= value <= 1024:
            raise ValueError("must be auto or a number of threads from 1 to 1024")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class CacheConfig(_Strict):
    """Where and how `teacher_outputs: cached` stores the teacher's logits (docs/design.md, "Teacher output cache").

    `views`: augmented versions of every training sample (their augmentation choices are
    stored too); `top_k`: keep only the k largest log-probabilities per view plus the
    leftover mass (for many classes); `dir`: default `<teacher run>/teacher-cache/<name>`.
    `views_per_image`: how many of an image's stored views the student trains on each epoch, in the
    same batch, from one decoded copy (FKD's multi-crop sampling): an epoch is then N x views_per_image
    samples, and a streamed image is read from disk once for all of them.
    """

    views: int = Field(1, ge=1, le=1000)
    views_per_image: int = Field(1, ge=1, le=1000, description="stored views trained on per decoded image and epoch")
    dir: str | None = None
    top_k: int | None = Field(None, ge=1)
    dtype: Literal["float16", "float32"] = "float16"
    seed: int = Field(0, ge=0, lt=2**31, description="seed of the views' augmentation choices")
    batch_size: int = Field(1024, gt=0, le=MAX_BATCH, description="teacher batch while building")


class DistillConfig(BaseModel):
    """`method` picks the Method; every other key is a hyperparameter of that method.

    The method validates its own hyperparameters (unknown ones are named in the error).
    `terms` adds weighted terms of other methods, e.g. `{method: at, weight: 1000, student:
    stage2, teacher: stage2}` (see kdistill.methods.combined).
    `teacher_outputs`: `live` runs the teacher on every batch; `cached` reads its logits from
    a cache built once (`kdistill cache-teacher`, or on first use). `teacher_precision: bf16`
    runs a live teacher (and the cache build) under bf16 autocast.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    method: str = "kd"
    terms: list[dict[str, Any]] = Field(default_factory=list, description="extra weighted terms: {method, weight, ...}")
    teacher_outputs: Literal["live", "cached"] = "live"
    teacher_precision: Literal["fp32", "bf16"] = "fp32"
    cache: CacheConfig = Field(default_factory=CacheConfig)

    def method_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


DEFAULT_SPACE: dict[str, Any] = {"distill.temperature": {"low": 1.0, "high": 20.0, "log": True},
                                 "distill.alpha": {"low": 0.0, "high": 1.0}}


class Range(_Strict):
    """A numeric range of a sweep: `{low, high}` plus `log: true` (log-uniform), `step`, `type: int`."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    type: Literal["float", "int"] = "float"


class SweepConfig(_Strict):
    """The `sweep` section (kdistill.sweep): trials, sampler seed, output folder, pruning, and the search space."""

    trials: int = Field(20, ge=1, le=100_000)
    seed: int = Field(0, ge=0, lt=2**31)
    out: str | None = None
    prune: bool = True
    startup_trials: int = Field(3, ge=0, description="trials that always run to the end before pruning starts")
    space: dict[str, Any] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE))

    @field_validator("space")
    @classmethod
    def _check_space(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("an empty search space (every trial would be the same run); name at least one key, "
                             "e.g. distill.temperature: {low: 1, high: 20, log: true}")
        for key, spec in space.items():
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                raise ValueError(f"{key!r} is not a dotted config key such as distill.temperature")
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{key}: an empty list of choices")
            elif isinstance(spec, dict):
                rng = Range.model_validate(spec)
                if not rng.low < rng.high:
                    raise ValueError(f"{key}: low must be below high")
                if rng.log and rng.low <= 0:
                    raise ValueError(f"{key}: a log range needs low > 0")
                if rng.log and rng.step is not None:
                    raise ValueError(f"{key}: a log range cannot have a step")
            else:
                raise ValueError(f"{key}: give a list of choices or {{low, high[, log, step, type: int]}}")
        return space


class _RunConfig(_Strict):
    name: str
    seed: int = Field(0, ge=0, lt=2**31)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, value: str) -> str:
        if not value or "/" in value or value in {".", ".."}:
            raise ValueError("must be a non-empty name without '/'")
        return value

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    def sha256(self) -> str:
        return config_sha256(self)


class TrainRunConfig(_RunConfig):
    """`kdistill train`: one model on labels only (a teacher, or a student trained alone)."""

    model: ModelSpec
    role: Literal["teacher", "student"] = "teacher"


class TeacherWeights(_Strict):
    """A teacher trained outside kdistill, given as an architecture (a zoo, `timm:` or `torchvision:` model
    spec) plus a weights file: safetensors, or a PyTorch state dict read with `torch.load(weights_only=True)`."""

    model: ModelSpec
    weights: str = Field(min_length=1)


class TeacherInput(_Strict):
    """What the teacher's input looks like when it differs from the student's (e.g. an ImageNet model).

    The student's input has the data set's normalisation undone (pixels in [0, 1]), is resized to `size`
    (bilinear), repeated to `channels`, and normalised with `mean`/`std` (per channel); without `mean`/`std`
    the data set's own normalisation is kept. Applied to the teacher's input only (kdistill.training.teacher_input)."""

    mean: list[float] | None = Field(None, min_length=1, max_length=4)
    std: list[float] | None = Field(None, min_length=1, max_length=4)
    size: int | list[int] | None = None
    channels: int | None = Field(None, ge=1, le=4)

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(v <= 0 for v in value):
            raise ValueError("every std must be positive")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | list[int] | None) -> int | list[int] | None:
        sizes = [value] if isinstance(value, int) else value or []
        if isinstance(value, list) and len(value) != 2:
            raise ValueError("give one size or [height, width]")
        if any(not 1 <= s <= 4096 for s in sizes):
            raise ValueError("sizes must be between 1 and 4096")
        return value

    @model_validator(mode="after")
    def _mean_with_std(self) -> "TeacherInput":
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std or [])):
            raise ValueError("give mean and std together, one value per channel each")
        return self


TeacherRef = str | TeacherWeights


class DistillRunConfig(_RunConfig):
    """`kdistill distill`: a student taught by a teacher.

    `teacher`: a kdistill run directory, an ONNX file (`.onnx`), a `torch.export` program (`.pt2`, read only
    with `teacher_trust: true`: loading one can run code from the file), `{model: {...}, weights: FILE}`, a
    list of these (an ensemble: the mean of their logits), or nothing for teacher-free methods (`tf_kd`,
    `dml`). `teacher_input`: how the teacher's input differs from the student's (every member's).
    """

    teacher: TeacherRef | list[TeacherRef] | None = None
    teacher_input: TeacherInput | None = None
    teacher_trust: bool = False
    student: ModelSpec
    distill: DistillConfig = Field(default_factory=DistillConfig)
    sweep: SweepConfig | None = Field(None, description="read by `kdistill sweep` (kdistill.sweep); `distill` ignores it")


def run_role(config: BaseModel | dict[str, Any], default: str = "teacher") -> str:
    """teacher | student for train configs (their `role`, else `default`); for distill configs (they name a
    `student`) "distilled", or "student" when the method is plain `ce` with no terms: the student trained on
    labels alone through the distill path (`kdistill distill --baseline`), whatever the task."""
    raw = config if isinstance(config, dict) else config.model_dump(mode="json")
    if "student" not in raw:
        return str(raw.get("role") or default)
    distill = raw.get("distill") if isinstance(raw.get("distill"), dict) else {}
    return "student" if distill.get("method") == "ce" and not distill.get("terms") else "distilled"


def config_sha256(config: BaseModel) -> str:
    """Hash of the resolved config (canonical JSON), recorded in reports."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with a bound on nesting depth (no RecursionError on 20,000 nested lists)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise KdistillError(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


MAX_INT_BITS = 14_000  # about 4,300 decimal digits: hex and base-60 integers skip Python's decimal digit limit


def _expanded_nodes(value: Any, memo: dict[int, int], depth: int = 0) -> int:
    """How many values `value` holds once every alias is expanded (computed on the shared graph, not by expanding)."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise KdistillError("an integer too large to be a setting")
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in memo:
        return memo[id(value)]
    if depth > MAX_YAML_DEPTH:
        raise KdistillError(f"nested more than {MAX_YAML_DEPTH} levels deep")
    children = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
    total = 1
    for child in children:
        total += _expanded_nodes(child, memo, depth + 1)
        if total > MAX_YAML_NODES:
            break
    memo[id(value)] = total
    return total


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML data with the safe loader, bounded in size, depth, number size and alias expansion.

    A config only holds data (strings, numbers, lists, mappings): it can never import or run code."""
    if len(text.encode("utf-8", errors="replace")) > MAX_YAML_BYTES:
        raise KdistillError(f"{source}: larger than {MAX_YAML_BYTES // 1024} KiB; a config is a small YAML file")
    try:
        loaded = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except KdistillError as exc:
        raise KdistillError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KdistillError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # e.g. an integer past Python's digit limit
        raise KdistillError(f"{source}: a value cannot be read ({first_line(exc, 120)})") from None
    try:
        size = _expanded_nodes(loaded, {})
    except KdistillError as exc:
        raise KdistillError(f"{source}: {exc}") from None
    if size > MAX_YAML_NODES:
        raise KdistillError(f"{source}: expands to more than {MAX_YAML_NODES} values (aliases repeated inside "
                            "aliases?); a config is a small YAML file")
    return loaded


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the bounded safe loader; errors are one-line KdistillErrors."""
    path = Path(path)
    if not path.is_file():
        raise KdistillError(f"config file not found: {path}")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise KdistillError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; a config is a small YAML file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KdistillError(f"{path}: not a text file (a config is UTF-8 YAML)") from None
    except OSError as exc:
        raise KdistillError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    loaded = parse_yaml(text, str(path))
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise KdistillError(f"{path}: a config must be a YAML mapping of keys to values")
    return loaded


def parse_override_value(text: str, source: str) -> Any:
    """The value of a `key=value` override: YAML (`[64, 32]`, `true`, `1e-3`), or the plain text when it is not YAML."""
    if text == "":
        return None
    try:
        return parse_yaml(text, source)
    except KdistillError:
        try:
            yaml.safe_load(text)
        except yaml.YAMLError:
            return text  # not YAML at all: a plain string
        raise


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists (`[64, 32]`, `true`)."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise KdistillError(f"override {item!r} must look like key.path=value, e.g. train.epochs=3")
        value = parse_override_value(text, f"override {key}")
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise KdistillError(f"override {item!r}: {prefix} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """The dotted key and value of the first non-finite float (inf, nan, 1e400) anywhere in a raw config, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "config", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found = _non_finite(child, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line naming the key(s) at fault."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
            message = err["msg"].lower().removeprefix("value error, ")
            parts.append(f"{loc}: {message}{shown}" if loc else message)
    return f"{source}: " + "; ".join(parts)



def with_data_overrides(data: BaseModel, overrides: dict[str, Any] | None) -> BaseModel:
    """A run's `data` settings with `--data key=value` overrides (e.g. the data set's root on this machine),
    validated again; an invalid one is one line."""
    if not overrides:
        return data
    try:
        return type(data).model_validate({**data.model_dump(), **overrides})
    except ValidationError as exc:
        raise KdistillError(format_validation_error(exc, "--data")) from None


def load_config(
    path: str | Path, overrides: list[str], kind: type[_RunConfig]
) -> _RunConfig:
    """Read, override and validate a run config of the given kind (TrainRunConfig or DistillRunConfig)."""
    raw = apply_overrides(read_yaml(path), overrides)
    raw.setdefault("name", Path(path).stem)
    return validate_config(raw, kind, source=str(path))


def validate_config(raw: dict[str, Any], kind: type[_RunConfig], source: str = "config") -> _RunConfig:
    """Validate a raw mapping; a wrong kind of config (train vs distill) gets a pointed message."""
    trains_model = "model" in kind.model_fields  # train configs (vision or text) have `model`, distill ones `student`
    if trains_model and "model" not in raw and "student" in raw:
        raise KdistillError(f"{source}: this is a distill config (it has 'student'); run `kdistill distill`")
    if not trains_model and "student" not in raw and "model" in raw:
        raise KdistillError(f"{source}: this is a train config (it has 'model'); run `kdistill train`")
    bad = _non_finite(raw, "")
    if bad:
        raise KdistillError(f"{source}: {bad[0]}: must be a finite number (got {bad[1]!r})")
    try:
        return kind.model_validate(raw)
    except ValidationError as exc:
        raise KdistillError(format_validation_error(exc, source)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, exactly what ran."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
