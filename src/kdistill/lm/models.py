"""Causal language models for kdistill: loading local Hugging Face folders, building students, importing GGUF.

Everything is local: `from_pretrained` is called with `local_files_only`, so a name that is not a folder on
this machine is one error line, never a download. `import_gguf` turns a llama.cpp GGUF file (SmolLM2-135M-
Instruct ships as one) into an ordinary folder of dequantised safetensors, config and tokenizer, checked
by comparing its logits with the GGUF-loaded model's on a few sentences.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from kdistill.digests import file_sha256
from kdistill.errors import KdistillError, first_line
from kdistill.ownership import FOLDER, Owned
from kdistill.training.rundir import save_into

CHECK_SENTENCES = (
    "The Python Language Reference describes the exact syntax and semantics of the language.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Knowledge distillation trains a small student to imitate a large teacher.",
)


NO_LOGITS = torch.zeros(0, dtype=torch.long)  # `logits_to_keep` of an empty index: the head is not run


def final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final (normed) hidden states (B, L, d) of a causal LM, without computing its logits.

    A plain model runs its base model (which returns the last layer's states only). A model wrapped for
    training on several processes (DDP, FSDP) must be called through the wrapper, which has to see the
    forward: then the model's own forward runs, with `logits_to_keep` of no position (refused for models
    without it, whose full logits would be computed)."""
    inner = getattr(model, "module", model)
    if inner is model:
        base = getattr(inner, inner.base_model_prefix)
        return base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if "logits_to_keep" not in inspect.signature(inner.forward).parameters:
        raise KdistillError(f"{type(inner).__name__} takes no logits_to_keep, so on several processes its forward would "
                            "compute full logits; train it on one process")
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                logits_to_keep=NO_LOGITS.to(input_ids.device), use_cache=False)
    return out.hidden_states[-1]


def check_plain_head(model: Any, tokenizer: Any, what: str) -> None:
    """kdistill's losses apply the output head to the final hidden states chunk by chunk: refuse a model whose
    logits are more than that (logit scaling, soft-capping, a transform in the head), checked on a sentence."""
    ids = tokenizer(CHECK_SENTENCES[1], return_tensors="pt")["input_ids"][:, :16]
    head, bias = head_of(model)
    with torch.inference_mode():
        own = model(input_ids=ids, use_cache=False).logits.float()
        ours = torch.nn.functional.linear(final_hidden(model, ids), head, bias).float()
    if own.shape != ours.shape or not torch.allclose(own, ours, rtol=1e-4, atol=1e-4):
        diff = float((own - ours).abs().max()) if own.shape == ours.shape else float("nan")
        raise KdistillError(f"{what}: a {type(model).__name__}'s logits are not its output head applied to its final "
                            f"hidden states (max difference {diff:.3g}: logit scaling or soft-capping), which kdistill's "
                            "chunked token losses assume; this architecture is not supported")


def check_block_size(model: Any, block_size: int, what: str) -> None:
    """A block must fit the model's positions."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and block_size > limit:
        raise KdistillError(f"data.block_size={block_size} is longer than {what}'s {limit} positions "
                            "(max_position_embeddings); use a smaller block_size")


def check_same_head(teacher: Any, student: Any) -> None:
    """Teacher and student must score the same vocabulary: the same number of output rows."""
    t, s = head_of(teacher)[0].shape[0], head_of(student)[0].shape[0]
    if t != s:
        raise KdistillError(f"the teacher's output head has {t:,} rows but the student's {s:,}; token-level distillation "
                            "compares distributions over one vocabulary (keep the teacher's vocab_size)")


def require_lm_extra() -> None:
    """Causal-LM runs need transformers and accelerate (the `text` extra); say so in one line."""
    import importlib.util

    missing = [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise KdistillError(f"task: causal-lm needs {', '.join(missing)}: pip install 'kdistill[text]'")


def hf_folder(value: str, what: str) -> Path:
    """The folder of `hf:PATH` (or a plain path), which must hold a Hugging Face config.json."""
    path = Path(value[3:] if value.startswith("hf:") else value)
    if not (path / "config.json").is_file():
        raise KdistillError(f"{what}: {path} is not a Hugging Face model folder (no config.json)")
    return path


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(path: Path, what: str) -> Any:
    from transformers import AutoTokenizer

    _quiet()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KdistillError(f"{what}: cannot load the tokenizer of {path} ({first_line(exc, 200)})") from None
    if tokenizer.eos_token_id is None:
        raise KdistillError(f"{what}: the tokenizer of {path} has no end-of-sequence token")
    return tokenizer


def load_causal_lm(path: Path, what: str) -> tuple[Any, Any]:
    """A causal LM (float32, eval mode) and its tokenizer from a local folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise KdistillError(f"{what}: cannot read {path}/config.json ({first_line(exc, 200)})") from None
    archs = config.architectures or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise KdistillError(f"{what}: {path} is a {archs[0]}, not a causal language model")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                           output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise KdistillError(f"{what}: cannot load {path} ({first_line(exc, 200)})") from None
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    if missing:  # e.g. an encoder's folder loaded as a causal LM: its head would be random
        raise KdistillError(f"{what}: {path} does not hold the weights of a {type(model).__name__} (missing "
                            f"{', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''})")
    tokenizer = load_tokenizer(path, what)
    check_plain_head(model, tokenizer, what)
    return model.eval(), tokenizer


def tokenizer_sha256(tokenizer: Any) -> str:
    """What the tokenizer does, as a hash: its serialised pipeline (vocabulary, merges, normaliser, special
    tokens), or for a slow tokenizer its vocabulary; equal hashes encode every text the same way."""
    try:
        text = tokenizer.backend_tokenizer.to_str()
    except AttributeError:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_vocabulary(teacher_tok: Any, student_tok: Any, teacher_name: str, student_name: str) -> None:
    """Token-level KD compares distributions over one vocabulary: refuse tokenizers that differ (by content)."""
    if tokenizer_sha256(teacher_tok) != tokenizer_sha256(student_tok):
        raise KdistillError(
            f"teacher tokenizer ({teacher_name}: {type(teacher_tok).__name__}, {len(teacher_tok)} tokens) and student "
            f"tokenizer ({student_name}: {type(student_tok).__name__}, {len(student_tok)} tokens) differ; token-level "
            "distillation needs one vocabulary: build the student from the teacher (student: {from_teacher: ...} or "
            "{from_config: ...}), which uses the teacher's tokenizer")


def head_of(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output head's weight (V, d) and bias of a causal LM (unwrapped from DDP)."""
    model = getattr(model, "module", model)
    head = model.get_output_embeddings()
    if head is None:
        raise KdistillError(f"{type(model).__name__} has no output head (get_output_embeddings)")
    return head.weight, getattr(head, "bias", None)


def student_from_spec(spec: Any, teacher: Any) -> Any:
    """`{from_teacher: {layers | num_layers}}` (teacher layers copied) or `{from_config: {...}}` (the teacher's
    config with these settings, random init; the seed is set by the caller)."""
    from kdistill.text.student import student_from_config, student_from_teacher

    if spec.from_teacher is not None:
        return student_from_teacher(teacher, num_layers=spec.from_teacher.num_layers, layers=spec.from_teacher.layers)
    return student_from_config(teacher, **spec.from_config)


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise KdistillError("import-gguf needs the gguf package: pip install gguf")
    _quiet()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise KdistillError(f"{gguf}: cannot load it as a GGUF causal LM ({first_line(exc, 200)})") from None
    return model.eval(), tokenizer


def _logits(model: Any, tokenizer: Any) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(**tokenizer(s, return_tensors="pt")).logits[0].float() for s in CHECK_SENTENCES]


def import_gguf(gguf: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """`kdistill import-gguf FILE OUT_DIR`: the GGUF model as a plain Hugging Face folder (float32 safetensors,
    config without the quantisation entry, tokenizer), verified against the GGUF-loaded model; returns the
    record written to OUT_DIR/import.json."""
    require_lm_extra()
    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise KdistillError(f"{gguf}: no such file")
    owned = Owned(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise KdistillError(f"{out} is not empty; pass --overwrite to replace an earlier import, or choose another folder")
        if not owned.is_owned():
            raise KdistillError(f"{out} holds files kdistill did not write; choose another folder")
        owned.remove(str(out))
    source, tokenizer = _load_gguf(gguf)
    config = copy.deepcopy(source.config)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    plain = type(source)(config)
    missing, unexpected = plain.load_state_dict(source.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise KdistillError(f"{gguf}: its weights do not fill a {type(plain).__name__} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    plain.tie_weights()
    record: dict[str, Any] = {}

    def save_checked(work: Path) -> None:
        plain.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        reloaded, reloaded_tok = load_causal_lm(work, str(out))
        before, after = _logits(source, tokenizer), _logits(reloaded, reloaded_tok)
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
        agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(before, after)) / sum(len(a) for a in before)
        if not diff < 1e-3 or agree < 1.0:
            raise KdistillError(f"{gguf}: the imported model's logits differ from the GGUF model's by {diff:.3g} "
                                f"(argmax agreement {agree:.3f}); not written")
        record.update(source=str(gguf.resolve()), source_sha256=file_sha256(gguf), architecture=type(plain).__name__,
                      params=sum(p.numel() for p in plain.parameters()), layers=int(config.num_hidden_layers),
                      vocab_size=int(config.vocab_size), check_sentences=len(CHECK_SENTENCES),
                      max_abs_logit_diff=diff, argmax_agreement=agree)
        (work / "import.json").write_text(json.dumps(record, indent=2) + "\n")

    from kdistill.training.teacher_cache import CACHE_ROOT

    save_into(out, save_checked)  # written aside, checked, then moved into place name by name
    owned.claim(CACHE_ROOT, kind=FOLDER)  # a causal-LM teacher cache of this model may live inside the folder
    return record
