"""What a causal-LM run reports: held-out perplexity, KL(teacher ‖ student) and top-1 agreement with the
teacher on the held-out tokens, parameters, size, and CPU speed (training tokens/s, batch-1 greedy
generation tokens/s), with a few generated samples.

Scoring runs the models' final hidden states through their output heads `chunk` tokens at a time, so it
never holds (tokens × vocabulary) logits for a whole batch.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdistill.lm.data import IGNORE, Blocks
from kdistill.lm.models import final_hidden, head_of
from kdistill.losses.tokens import forward_kl

def score_blocks(model: Any, blocks: Blocks, *, batch_size: int = 8, chunk: int = 1024, teacher: Any = None,
                 rows: range | None = None) -> dict[str, float]:
    """Sums over the scored tokens of `blocks` (or of `rows` of them): tokens, nll (next-token CE), and with a
    teacher kl (KL(teacher ‖ student)) and agree (top-1 matches)."""
    model.eval()
    device = next(model.parameters()).device
    head, bias = head_of(model)
    t_head = t_bias = None
    if teacher is not None:
        teacher.eval()
        t_head, t_bias = head_of(teacher)
    rows = rows if rows is not None else range(len(blocks))
    sums = {"tokens": 0.0, "nll": 0.0, "kl": 0.0, "agree": 0.0}
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            index = torch.tensor(rows[start : start + batch_size])
            ids, labels = blocks.input_ids[index].to(device), blocks.labels[index].to(device)
            mask = labels != IGNORE
            hidden = final_hidden(model, ids)[mask]
            t_hidden = final_hidden(teacher, ids)[mask] if teacher is not None else None
            targets = labels[mask]
            for piece in range(0, targets.shape[0], chunk):
                part = slice(piece, piece + chunk)
                logits = F.linear(hidden[part], head, bias).float()
                sums["nll"] += float(F.cross_entropy(logits, targets[part], reduction="sum"))
                if t_hidden is not None:
                    t_logits = F.linear(t_hidden[part], t_head, t_bias).float()
                    sums["kl"] += float(forward_kl(t_logits.log_softmax(-1), logits.log_softmax(-1)).sum())
                    sums["agree"] += float((t_logits.argmax(-1) == logits.argmax(-1)).sum())
            sums["tokens"] += float(targets.shape[0])
    return sums


def metrics_of(sums: dict[str, float], with_teacher: bool) -> dict[str, float | None]:
    """Per-token means of `score_blocks` sums: nll, perplexity = exp(nll), kl_to_teacher, top1_agreement."""
    n = max(sums["tokens"], 1.0)
    nll = sums["nll"] / n
    return {"nll": nll, "perplexity": math.exp(min(nll, 700.0)), "tokens": int(sums["tokens"]),
            "kl_to_teacher": sums["kl"] / n if with_teacher else None,
            "top1_agreement": sums["agree"] / n if with_teacher else None}


def generation_speed(model: Any, tokenizer: Any, prompts: list[torch.Tensor], new_tokens: int = 32,
                     repeats: int = 3) -> dict[str, Any]:
    """Batch-1 greedy generation on the CPU: median tokens/s over `repeats` prompts (after one warm-up), and the
    texts generated from the first prompts."""
    model = model.cpu().eval()
    rates, samples = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):
            prompt = prompts[r % len(prompts)][None, :]
            t0 = time.perf_counter()
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            seconds = time.perf_counter() - t0
            made = out.shape[1] - prompt.shape[1]
            if r > 0:
                rates.append(made / seconds)
            if len(samples) < 3 and r < len(prompts):
                samples.append({"prompt": tokenizer.decode(prompt[0]), "continuation": tokenizer.decode(out[0, prompt.shape[1]:])})
    return {"batch": 1, "new_tokens": new_tokens, "tokens_per_s": statistics.median(rates),
            "threads": torch.get_num_threads(), "samples": samples}


def lm_report_row(model: Any, tokenizer: Any, blocks: Blocks, *, name: str, role: str, dataset: str, split: str,
                  out: Path, seed: int, config_sha256: str | None, teacher: Any = None, chunk: int = 1024,
                  batch_size: int = 8, train_tokens_per_s: float | None = None, prompt_tokens: int = 32) -> dict[str, Any]:
    """A causal-LM report row, measured on the CPU."""
    model = model.cpu().eval()
    teacher = teacher.cpu().eval() if teacher is not None else None
    measured = metrics_of(score_blocks(model, blocks, batch_size=batch_size, chunk=chunk, teacher=teacher), teacher is not None)
    prompts = [blocks.input_ids[i, :prompt_tokens] for i in range(min(4, len(blocks)))]
    weights = out / "model.safetensors"
    return {"name": name, "role": role, "task": "causal-lm", "dataset": dataset, "split": split,
            "samples": len(blocks), **measured,
            "params": sum(p.numel() for p in model.parameters()),
            "size_bytes": weights.stat().st_size if weights.is_file() else None,
            "train_tokens_per_s": train_tokens_per_s, "generation": generation_speed(model, tokenizer, prompts),
            "seeds": [seed], "config_sha256": config_sha256}
