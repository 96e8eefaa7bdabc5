"""Configs of causal-LM runs (`task: causal-lm`), validated like the other tasks' (unknown keys are errors).

    task: causal-lm
    name: smol-pruned-fkl
    teacher: hf:runs/smollm2            # a local Hugging Face causal LM (or a kdistill causal-LM run)
    student: {from_teacher: {layers: [0, 10, 20, 29]}}   # or {from_config: {...}} or hf:PATH
    data: {root: /usr/share/doc/python3.11/html/_sources, block_size: 256, batch_size: 8}
    distill: {method: forward_kl, alpha: 0.5, temperature: 1.0, teacher_outputs: cached, cache: {top_k: 64}}

`kdistill train` takes `model:` instead: `hf:PATH` (fine-tuned as it is), or `{base: hf:PATH, from_teacher |
from_config: ...}`, a student built from `base` exactly as `distill` builds it from the teacher (the same
seed gives the same initial weights), so the student alone and the distilled student start equal.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kdistill.config import SweepConfig, _RunConfig, _Strict
from kdistill.lm.data import LMDataConfig
from kdistill.text.config import FromTeacher, TextTrainConfig, _check_hf

TASK = "causal-lm"


class LMTrainConfig(TextTrainConfig):
    """The Hugging Face Trainer's budget (AdamW, warm-up, decay), as for text classification."""

    lr: float = Field(5e-4, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    epochs: int = Field(1, ge=1)


class LMStudentSpec(_Strict):
    """`from_teacher: {layers: [...]}` (teacher layers copied, DistilBERT's recipe) or `from_config: {...}` (the
    teacher's config with these settings, random init)."""

    from_teacher: FromTeacher | None = None
    from_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> "LMStudentSpec":
        if (self.from_teacher is None) == (self.from_config is None):
            raise ValueError("give exactly one of from_teacher or from_config (or a string hf:PATH)")
        return self


class LMModelSpec(LMStudentSpec):
    """A train run's model built from `base` (hf:PATH) as a distill run builds its student from the teacher."""

    base: str

    _hf = field_validator("base")(classmethod(lambda cls, v: _check_hf(v)))


class LMCacheConfig(_Strict):
    """`teacher_outputs: cached`: the teacher's top-k next-token log-probabilities for every training token
    (kdistill.lm.cache). `dir` defaults to `<teacher>/teacher-cache/...` when the teacher folder is kdistill's
    (an import-gguf folder or a run), and must be given otherwise."""

    top_k: int = Field(64, ge=1, le=1_000_000)
    dir: str | None = None
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = Field(8, gt=0, le=4096, description="teacher blocks per forward pass while building")


class LMDistillSettings(BaseModel):
    """`method`: a causal-LM method (forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, tv, ce) with its
    hyperparameters at the top level or in its own section; `terms` as for the other tasks.
    `teacher_outputs`: live (the teacher runs on every batch) or cached (top-k, built once).
    `chunk_tokens`: tokens per piece of the loss (memory holds one piece's tokens × vocabulary logits).
    `on_policy`, `sequence_kd`, `prompt_tokens`, `generation_temperature`: kdistill.lm.policy."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    method: str = "forward_kl"
    terms: list[dict[str, Any]] = Field(default_factory=list)
    teacher_outputs: Literal["live", "cached"] = "live"
    cache: LMCacheConfig = Field(default_factory=LMCacheConfig)
    chunk_tokens: int = Field(1024, ge=1, le=1 << 20)
    on_policy: float = Field(0.0, ge=0.0, le=1.0, description="share of batches whose continuations the student "
                             "samples from the blocks' prompts, scored by the teacher (GKD's lambda)")
    sequence_kd: bool = Field(False, description="the other batches' continuations are the teacher's generations")
    prompt_tokens: int = Field(32, ge=1, description="with on_policy / sequence_kd: a block's first N tokens are its prompt")
    generation_temperature: float = Field(1.0, ge=0.0, description="sampling temperature of the generations (0: greedy)")

    def build_method(self) -> Any:
        from kdistill.methods import build_distill_method

        return build_distill_method(self.method, dict(self.model_extra or {}), self.terms, task=TASK)


class _LMRun(_RunConfig):
    task: Literal["causal-lm"]
    data: LMDataConfig
    train: LMTrainConfig = Field(default_factory=LMTrainConfig)


class LMTrainRunConfig(_LMRun):
    """`kdistill train` of a causal LM on next-token CE: `model: hf:PATH` or `{base: hf:PATH, from_...}`."""

    model: str | LMModelSpec
    role: Literal["teacher", "student"] = "student"
    chunk_tokens: int = Field(1024, ge=1, le=1 << 20, description="tokens per piece of the loss")

    @field_validator("model")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return _check_hf(value) if isinstance(value, str) else value


class LMDistillRunConfig(_LMRun):
    """`kdistill distill` of a causal LM: `teacher` hf:PATH (or a causal-LM run directory), `student` hf:PATH or
    an LMStudentSpec."""

    teacher: str
    student: str | LMStudentSpec
    distill: LMDistillSettings = Field(default_factory=LMDistillSettings)
    sweep: SweepConfig | None = Field(None, description="read by `kdistill sweep` (kdistill.sweep); `distill` ignores it")

    @field_validator("student")
    @classmethod
    def _student(cls, value: Any) -> Any:
        return _check_hf(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _generation(self) -> "LMDistillRunConfig":
        d = self.distill
        if (d.on_policy > 0 or d.sequence_kd) and d.teacher_outputs == "cached":
            raise ValueError("distill.on_policy / sequence_kd score generated tokens with the teacher, which a cache "
                             "of the data's tokens cannot do: use distill.teacher_outputs: live")
        if (d.on_policy > 0 or d.sequence_kd) and d.prompt_tokens >= self.data.block_size:
            raise ValueError(f"distill.prompt_tokens={d.prompt_tokens} must be smaller than data.block_size="
                             f"{self.data.block_size} (the rest of each block is generated)")
        return self

    def generation(self) -> Any:
        """The on-policy / sequence-KD settings (kdistill.lm.policy.Generation)."""
        from kdistill.lm.policy import Generation

        d = self.distill
        return Generation(d.on_policy, d.sequence_kd, d.prompt_tokens, d.generation_temperature, self.seed)
