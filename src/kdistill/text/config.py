"""Configs of text-classification runs (`task: text-classification`), validated like the vision ones."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdistill.config import SweepConfig, TrainConfig, _RunConfig, _Strict
from kdistill.text.data import TextDataConfig


class TextTrainConfig(_Strict):
    """The Hugging Face Trainer's budget: AdamW, linear warm-up then `scheduler` decay."""

    epochs: int = Field(3, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | Literal["auto"] = Field("auto", description="CPU threads for torch; auto: shared among the kdistill "
                                           "runs on the machine (kdistill.training.threads)")
    log_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers that also receive every epoch's metrics (kdistill.training.tracking)")

    trainer_args: dict[str, Any] = Field(default_factory=dict, description="further transformers.TrainingArguments, "
                                         "passed as they are (fsdp, fsdp_config, deepspeed, activation_checkpointing, ...)")

    _threads = field_validator("threads")(classmethod(lambda cls, v: TrainConfig._thread_count(v)))


class FromTeacher(_Strict):
    """DistilBERT's recipe: `num_layers` evenly spaced teacher layers, or exactly `layers`."""

    num_layers: int | None = Field(None, ge=1)
    layers: list[int] | None = None

    @model_validator(mode="after")
    def _one(self) -> "FromTeacher":
        if (self.num_layers is None) == (self.layers is None):
            raise ValueError("give num_layers or layers (not both)")
        return self


class StudentSpec(_Strict):
    """`from_teacher: {num_layers: 2}` (copied layers) or `from_config: {num_hidden_layers: 2, ...}` (random init)."""

    from_teacher: FromTeacher | None = None
    from_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> "StudentSpec":
        if (self.from_teacher is None) == (self.from_config is None):
            raise ValueError("give exactly one of from_teacher or from_config (or a string hf:PATH)")
        return self


# Hinton KD on text keeps the recipe kdistill's text runs always used (the Hugging Face course's): T 2, alpha 0.5.
TEXT_KD_DEFAULTS = {"temperature": 2.0, "alpha": 0.5}


class TextDistillSettings(BaseModel):
    """The vision `distill:` section's keys, for text: `method` (any method that runs on text: kd, dkd, dist,
    ls_kd, tf_kd), the method's hyperparameters at the top level or in its own section (`dkd: {beta: 4}`),
    and `terms`. `cache_teacher_logits`: run the teacher once over the training and validation text before
    training (exact: the teacher is frozen, in eval mode, and text is not augmented), not in every step."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    method: str = "kd"
    terms: list[dict[str, Any]] = Field(default_factory=list, description="extra weighted terms: {method, weight, ...}")
    cache_teacher_logits: bool = True

    def method_params(self) -> dict[str, Any]:
        params = dict(self.model_extra or {})
        if self.method == "kd":
            section = params.get("kd") if isinstance(params.get("kd"), dict) else {}
            params |= {k: v for k, v in TEXT_KD_DEFAULTS.items() if k not in params and k not in section}
        return params

    def build_method(self) -> Any:
        """The Method this section describes (validated, and checked to run on text)."""
        from kdistill.methods import build_distill_method

        return build_distill_method(self.method, self.method_params(), self.terms, task="text")


def _check_hf(value: str) -> str:
    if not value.startswith("hf:") or len(value) <= 3:
        raise ValueError("a Hugging Face model folder is written hf:PATH")
    return value


class _TextRun(_RunConfig):
    """A vision run's name, seed and out (and their checks), with text data and the Trainer's budget."""

    task: Literal["text-classification"]
    data: TextDataConfig
    train: TextTrainConfig = Field(default_factory=TextTrainConfig)


class TextTrainRunConfig(_TextRun):
    """`kdistill train` of a text classifier: `model: hf:PATH` (a local Hugging Face folder)."""

    model: str
    role: Literal["teacher", "student"] = "teacher"

    _hf = field_validator("model")(classmethod(lambda cls, v: _check_hf(v)))


class TextDistillRunConfig(_TextRun):
    """`kdistill distill` of a text classifier: `teacher` is a text run directory (or hf:PATH),
    `student` is hf:PATH or a StudentSpec."""

    teacher: str
    student: str | StudentSpec
    distill: TextDistillSettings = Field(default_factory=TextDistillSettings)
    sweep: SweepConfig | None = Field(None, description="read by `kdistill sweep` (kdistill.sweep); `distill` ignores it")

    @field_validator("student")
    @classmethod
    def _student(cls, value: Any) -> Any:
        return _check_hf(value) if isinstance(value, str) else value
