"""`DistillationTrainer`: a `transformers.Trainer` whose loss is one of kdistill's methods.

By default, Hinton KD (Hinton et al. 2015; the seeds' and the NLP-with-Transformers book's
`KnowledgeDistillationTrainer`), built from the arguments' alpha and temperature:
loss = alpha · CE(student, labels) + (1 − alpha) · T² · KL(softmax(teacher/T) ‖ softmax(student/T)).
`method=` takes any method of kdistill's library that runs on text (`build_distill_method("dkd", {...})`,
DIST, LS-KD, Tf-KD, `distill.terms` combinations): the same objects the vision engine calls. Each
term's mean over the logged steps is logged beside the loss (`loss_kd`, `loss_ce`, ...), and the method's
`start_epoch` (DKD's warm-up) is called before every epoch.

- The teacher is moved to the student's device, kept in eval mode, its parameters frozen, and
  run under `torch.inference_mode`: it never trains and never builds a graph.
- Gradient accumulation: when the Trainer passes `num_items_in_batch` (the number of labelled
  samples in the whole accumulated batch), the loss is the *sum* over this micro-batch divided
  by it, and marked as already scaled; so uneven micro-batches give exactly the gradient of one
  big batch. Without it, the loss is the micro-batch mean and the Trainer divides by the steps.
- Teacher and student may use different tokenizers: `TeacherStudentCollator` tokenises each
  text twice and passes the teacher's encoding under `teacher_*` keys (a student without
  `token_type_ids`, TextBrewer issue 22).
- Cached teacher logits: a dataset column `cached_teacher_logits` (computed once before training,
  `CachedLogitsCollator` batches it) replaces the teacher's forward pass; the teacher is in eval
  mode and sees the same text, so the loss is the same and an epoch costs the student's alone.
- Feature methods (TinyBERT, MiniLM: `reads_teacher_features`) are bound to both models' layers here, and
  run with the live teacher on the same tokenization; a method's trainable connector sits in the student as
  `kdistill_method` while it trains (so the optimiser, DDP and checkpoints hold it) and is taken off after.
- A teacher whose label count or label names differ from the student's is refused.
- A non-finite training loss stops the run with one line (kdistill.text.guard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainingArguments

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.methods import Method, build_method
from kdistill.methods.base import check_task
from kdistill.text.guard import MethodTrainer

TEACHER_PREFIX = "teacher_"
CACHED_LOGITS = "cached_teacher_logits"
METHOD_MODULE = "kdistill_method"  # where a method with trainable parts sits in the student while it trains


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the distillation loss's `alpha` (weight of the hard-label CE; the
    soft term gets 1 − alpha) and `temperature` (T > 0)."""

    alpha: float = field(default=0.5, metadata={"help": "weight of the hard-label cross-entropy; the KD term gets 1 - alpha"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of the KD term (scaled by T^2)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise KdistillError(f"alpha must be in [0, 1] (got {self.alpha})")
        if not self.temperature > 0:
            raise KdistillError(f"temperature must be > 0 (got {self.temperature})")
        super().__post_init__()


def _labels(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)] if id2label else []


def check_same_labels(teacher_config: Any, student_config: Any) -> None:
    """The teacher must predict the student's classes, in the same order."""
    t, s = int(teacher_config.num_labels), int(student_config.num_labels)
    if t != s:
        raise KdistillError(f"the teacher predicts {t} labels but the student {s}; give both the same label set")
    t_names, s_names = _labels(teacher_config), _labels(student_config)
    default = [f"LABEL_{i}" for i in range(t)]
    if t_names and s_names and t_names != s_names and default not in (t_names, s_names):
        diff = next(i for i, (a, b) in enumerate(zip(t_names, s_names)) if a != b)
        raise KdistillError(f"teacher and student label names differ at id {diff}: {t_names[diff]!r} vs {s_names[diff]!r}; "
                            "map both to the same label2id")


class TeacherStudentCollator:
    """Batch raw examples `{text_column: str, "label": int}` into the student's encoding, the
    teacher's encoding (keys prefixed `teacher_`) and `labels`, for tokenizers that differ."""

    def __init__(self, student_tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase,
                 text_column: str = "text", label_column: str = "label", max_length: int = 128):
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [e[self.text_column] for e in examples]
        student = self.student_tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        teacher = self.teacher_tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        batch = dict(student)
        batch.update({TEACHER_PREFIX + k: v for k, v in teacher.items()})
        batch["labels"] = torch.tensor([int(e[self.label_column]) for e in examples])
        return batch


def check_same_tokenization(method: Method, tokenizers_differ: bool) -> None:
    """One line when a feature method, which compares the models token by token, gets two tokenizations."""
    if tokenizers_differ and method.reads_teacher_features:
        raise KdistillError(f"distill.method {method.name!r} compares the models token by token: teacher and student "
                            "need the same tokenizer (use a logit method, e.g. kd, across tokenizers)")


class CachedLogitsCollator:
    """Wraps a collator: stacks each example's `cached_teacher_logits` into one float tensor and batches
    the rest with `base`."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples or CACHED_LOGITS not in examples[0]:
            return self.base(examples)
        logits = torch.tensor([e[CACHED_LOGITS] for e in examples], dtype=torch.float32)
        batch = dict(self.base([{k: v for k, v in e.items() if k != CACHED_LOGITS} for e in examples]))
        batch[CACHED_LOGITS] = logits
        return batch


class _MethodEpochs(TrainerCallback):
    """Calls the method's `start_epoch(epoch, epochs)` before each epoch, as the vision engine does."""

    def __init__(self, method: Method):
        self.method = method

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.method.start_epoch(int(state.epoch or 0), math.ceil(args.num_train_epochs))


class DistillationTrainer(MethodTrainer):
    """`Trainer(model=student, args=DistillationTrainingArguments(...), teacher_model=teacher, method=None, ...)`."""

    def __init__(self, *args: Any, teacher_model: nn.Module, method: Method | None = None, **kwargs: Any):
        super().__init__(*args, teacher=teacher_model, **kwargs)
        if not isinstance(self.args, DistillationTrainingArguments):
            raise KdistillError("DistillationTrainer needs DistillationTrainingArguments (alpha, temperature)")
        check_same_labels(teacher_model.config, self.model.config)
        self.method = method if method is not None else build_method(
            "kd", {"alpha": self.args.alpha, "temperature": self.args.temperature})
        check_task(self.method, "text")
        if self.method.reads_teacher_features:  # TinyBERT, MiniLM: hook both models' layers
            self.method.bind(self.model, teacher_model, None, len(self.train_dataset or []))
        if list(self.method.parameters()):
            # A connector (TinyBERT's projection) trains with the student: held by the model during training, it is
            # in the Trainer's optimiser, DDP's gradient all-reduce and its checkpoints; `train` takes it off again.
            self.method.to(next(self.model.parameters()).device)
            self.model.add_module(METHOD_MODULE, self.method)
        self.add_callback(_MethodEpochs(self.method))

    def train(self, *args: Any, **kwargs: Any):
        try:
            return super().train(*args, **kwargs)
        finally:  # the student is saved, evaluated and exported without the method's connectors and hooks
            if METHOD_MODULE in self.model._modules:
                delattr(self.model, METHOD_MODULE)
            self.method.unbind()

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns.append(CACHED_LOGITS)
        collator = self.data_collator.base if isinstance(self.data_collator, CachedLogitsCollator) else self.data_collator
        if isinstance(collator, TeacherStudentCollator):  # it tokenises raw text itself: keep the text column
            self._signature_columns += [collator.text_column, collator.label_column]

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        labels = inputs["labels"]
        cached = inputs.get(CACHED_LOGITS)
        teacher_inputs = {k[len(TEACHER_PREFIX):]: v for k, v in inputs.items() if k.startswith(TEACHER_PREFIX)}
        student_inputs = {k: v for k, v in inputs.items()
                          if not k.startswith(TEACHER_PREFIX) and k not in ("labels", CACHED_LOGITS)}
        outputs = model(**student_inputs)
        teacher_logits = None
        if cached is not None:
            teacher_logits = cached.to(outputs.logits.device)
        elif self.method.needs_teacher:
            self._freeze_teacher()
            with torch.inference_mode():
                teacher_logits = self.teacher(**(teacher_inputs or student_inputs)).logits
            teacher_logits = teacher_logits.clone()  # an ordinary tensor (constant) for the loss's graph
        check_same_tokenization(self.method, bool(teacher_inputs))
        batch = Batch(student_inputs.get("input_ids"), labels, torch.arange(labels.shape[0]),
                      attention_mask=student_inputs.get("attention_mask"))
        self.method.train(model.training)
        terms = self.method(batch, outputs.logits, teacher_logits)
        loss = sum(terms.values())
        if model.training:
            self.record_terms(terms, weight=labels.shape[0])
        # Mean over this micro-batch, or (with gradient accumulation) its share of the accumulated batch's mean.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None:
            count = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            loss = loss * labels.shape[0] / count
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # the count is global; DDP averages over processes
        return (loss, outputs) if return_outputs else loss
