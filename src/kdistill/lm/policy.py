"""On-policy and sequence-level distillation: training on continuations a model generated, scored by the teacher.

GKD (Agarwal et al., ICLR 2024): with probability λ (`distill.on_policy`) a batch's continuations are
sampled from the *student* given the batch's prompts, and the divergence to the teacher is taken on those
tokens, so the student learns on the sequences it will itself produce (no train/inference mismatch). Those
batches have no label term (the trainer marks their tokens unlabelled): they are the student's own samples.
Sequence-level KD (Kim & Rush 2016; `distill.sequence_kd: true`): the other batches' continuations are the
*teacher's* generations instead of the data's, and their CE term is the Kim & Rush objective. Both need the live teacher (a cache holds the teacher's
outputs on the data's tokens only).

On packed blocks, a block's prompt is its first `prompt_tokens` tokens and its continuation the remaining
`block_size − prompt_tokens`, generated to exactly that length; only the continuation is scored. Whether a
batch is on-policy is drawn from a generator seeded with (seed, step), and generation samples under a torch
RNG seeded the same way, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdistill.lm.data import IGNORE

GENERATED = "generated_by"  # batch key: who wrote the continuations
DATA_WROTE, STUDENT_WROTE, TEACHER_WROTE = 0, 1, 2  # the data, the student (on-policy), the teacher (sequence KD)


@dataclass
class Generation:
    """`distill.on_policy` (λ), `distill.sequence_kd`, the prompt length and the sampling temperature (0: greedy)."""

    on_policy: float
    sequence_kd: bool
    prompt_tokens: int
    temperature: float
    seed: int

    @property
    def active(self) -> bool:
        return self.on_policy > 0 or self.sequence_kd

    def source(self, step: int) -> int:
        """Who writes the continuations of the batch at `step`: 0 the data, 1 the student, 2 the teacher."""
        draw = torch.rand((), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + step)).item()
        if draw < self.on_policy:
            return STUDENT_WROTE
        return TEACHER_WROTE if self.sequence_kd else DATA_WROTE

    def continue_blocks(self, model: Any, input_ids: torch.Tensor, step: int, eos_id: int) -> torch.Tensor:
        """`input_ids` (B, L) with everything after the prompt replaced by `model`'s continuation of it."""
        prompt = input_ids[:, : self.prompt_tokens]
        length = input_ids.shape[1] - self.prompt_tokens
        was_training = model.training
        model.eval()
        sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0} \
            if self.temperature > 0 else {"do_sample": False}
        with torch.random.fork_rng(devices=[input_ids.device] if input_ids.is_cuda else []), torch.no_grad():
            torch.manual_seed(self.seed * 1_000_003 + step)
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=length,
                                 min_new_tokens=length, pad_token_id=eos_id, **sampling)
        model.train(was_training)
        return out[:, : input_ids.shape[1]]

    def apply(self, batch: dict[str, Any], student: Any, teacher: Any, step: int, eos_id: int) -> dict[str, Any]:
        """The batch at `step`, its continuations rewritten by the student or the teacher when the draw says so."""
        source = self.source(step)
        if source == DATA_WROTE:
            return batch | {GENERATED: DATA_WROTE}
        ids = self.continue_blocks(student if source == STUDENT_WROTE else teacher, batch["input_ids"], step, eos_id)
        labels = torch.full_like(ids, IGNORE)
        start = self.prompt_tokens - 1  # the position whose next token is the first generated one
        labels[:, start:-1] = ids[:, start + 1 :]
        kept = {k: v for k, v in batch.items() if not k.startswith("teacher_topk") and k != "teacher_tail_logmass"}
        return kept | {"input_ids": ids, "labels": labels, "shift_labels": labels, GENERATED: source}
