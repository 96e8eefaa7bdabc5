"""`TokenTrainer`: a `transformers.Trainer` for causal LMs whose loss is one of kdistill's token methods.

The student's final hidden states at the scored positions and its output head go to the method as
`TokenStates`; the teacher's side is `TeacherHidden` (a live teacher, run under `torch.inference_mode`, in
eval mode, frozen, never wrapped for training) or `TopK` (the offline cache's rows for this batch); the
method returns its weighted terms (kdistill.methods.token) and the loss is their sum. Training the student
alone is the same trainer with `method: ce` and no teacher, so both see the same tokens in the same order.

Scaling: each term is a mean over this micro-batch's scored tokens. The Trainer passes the number of scored
tokens in the whole accumulated batch on all processes (`shift_labels`, counted as they are); the loss is
rescaled to this micro-batch's share of that count, times the number of processes (DDP averages the
gradients over them), so the gradient is that of one mean over every scored token of the global batch.

On-policy and sequence-level KD (`generation=`, kdistill.lm.policy) rewrite a batch's continuations before
the scored tokens are counted, so the scaling above holds for generated batches too.

Validation (every epoch, and the best epoch kept) is the next-token cross-entropy per scored token of the
validation blocks: `eval_loss`, with `eval_perplexity` = exp(eval_loss).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from kdistill.lm.data import IGNORE, Blocks
from kdistill.lm.evaluate import metrics_of, score_blocks
from kdistill.lm.models import final_hidden, head_of
from kdistill.lm.policy import GENERATED, STUDENT_WROTE, Generation
from kdistill.losses.tokens import TeacherHidden, TokenStates, TopK
from kdistill.methods import Method
from kdistill.text.guard import MethodTrainer

CACHE_KEYS = ("teacher_topk_logprobs", "teacher_topk_ids", "teacher_tail_logmass")


class BlockDataset(Dataset):
    """Blocks as the Trainer's items: input_ids, labels (= shift_labels: already the next tokens), and with a
    cache the teacher's top-k rows of the block."""

    def __init__(self, blocks: Blocks, cache: Any = None):
        self.blocks = blocks
        self.cache = cache

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.blocks.input_ids[i], "labels": self.blocks.labels[i],
                "shift_labels": self.blocks.labels[i]}
        if self.cache is not None:
            item.update(zip(CACHE_KEYS, self.cache.rows(i)))
        return item


class TokenTrainer(MethodTrainer):
    """`TokenTrainer(model=student, args=TrainingArguments(...), method=..., teacher=None | causal LM, ...)`."""

    def __init__(self, *args: Any, method: Method, teacher: nn.Module | None = None, chunk_tokens: int = 1024,
                 cache_temperature: float = 1.0, generation: Generation | None = None, **kwargs: Any):
        super().__init__(*args, teacher=teacher, **kwargs)
        self.method = method
        self.chunk_tokens = chunk_tokens
        self.generation = generation if generation is not None and generation.active else None
        self.cache_temperature = cache_temperature  # the temperature of the cached top-k, when there is a cache
        if list(method.parameters()):
            raise ValueError(f"method {method.name!r} has trainable parts, which the Trainer's optimiser would not see")

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """The Trainer's next accumulated batches; with on-policy or sequence-level KD, their continuations are
        rewritten first (kdistill.lm.policy), and the scored tokens counted after that."""
        samples, count = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.generation is None or not samples:
            return samples, count
        student = self.accelerator.unwrap_model(self.model)
        eos = student.generation_config.eos_token_id or student.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        first = self.state.global_step * num_batches
        samples = [self.generation.apply(self._prepare_inputs(batch), student, self.teacher, first + i, eos)
                   for i, batch in enumerate(samples)]
        return samples, self._get_num_items_in_batch(samples, device)

    def _teacher_side(self, inputs: dict[str, Any], mask: torch.Tensor) -> TopK | TeacherHidden | None:
        if not self.method.needs_teacher:
            return None
        if CACHE_KEYS[0] in inputs:
            logprobs, ids, tail = (inputs[k][mask] for k in CACHE_KEYS)
            return TopK(logprobs.float(), ids.long(), tail.float(), self.cache_temperature)
        if self.teacher is None:
            raise ValueError(f"method {self.method.name!r} needs a teacher")
        self._freeze_teacher()
        with torch.inference_mode():
            hidden = final_hidden(self.teacher, inputs["input_ids"])[mask]
        head, bias = head_of(self.teacher)
        return TeacherHidden(hidden.clone(), head, bias)  # clone: an ordinary constant for the loss's graph

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        source = inputs.pop(GENERATED, None)
        labels = inputs["labels"]
        mask = labels != IGNORE
        hidden = final_hidden(model, inputs["input_ids"])
        head, bias = head_of(model)
        student = TokenStates(hidden[mask], head, labels[mask], bias, chunk=self.chunk_tokens,
                              labeled=source != STUDENT_WROTE)  # the student's own samples are no targets
        self.method.train(model.training)
        terms = self.method(None, student, self._teacher_side(inputs, mask))
        loss = sum(terms.values())
        if model.training:  # logged means weighted by scored tokens, as the loss is
            self.record_terms(terms, weight=student.tokens)
            if source is not None:  # logged as the share of batches the student wrote (`on_policy` in metrics.jsonl)
                self.record_terms({"on_policy": torch.tensor(float(source == STUDENT_WROTE))}, weight=1.0)
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None:
            count = num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            loss = loss * student.tokens / max(count, 1)  # an accumulated batch with no scored token: a zero step
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # the count is global; DDP averages over processes
        return (loss, None) if return_outputs else loss

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Next-token CE per scored token on the validation blocks (each process scores its share)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rows = range(rank, len(dataset.blocks), world)
        was_training = self.model.training
        sums = score_blocks(self.model, dataset.blocks, batch_size=self.args.per_device_eval_batch_size,
                            chunk=self.chunk_tokens, rows=rows)
        self.model.train(was_training)
        totals = torch.tensor([sums["tokens"], sums["nll"]], dtype=torch.float64, device=self.args.device)
        if world > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        measured = metrics_of({"tokens": float(totals[0]), "nll": float(totals[1]), "kl": 0.0, "agree": 0.0}, False)
        metrics = {f"{metric_key_prefix}_loss": measured["nll"], f"{metric_key_prefix}_perplexity": measured["perplexity"]}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
