"""Hugging Face Transformers integration (the `text` extra): a distillation Trainer, students
initialised from their teacher, and text-classification data.

    from kdistill.text import DistillationTrainer, DistillationTrainingArguments, student_from_teacher

Names are imported lazily so `import kdistill` never imports transformers.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DistillationTrainer": "kdistill.text.trainer",
    "DistillationTrainingArguments": "kdistill.text.trainer",
    "TeacherStudentCollator": "kdistill.text.trainer",
    "CachedLogitsCollator": "kdistill.text.trainer",
    "check_same_labels": "kdistill.text.trainer",
    "student_from_teacher": "kdistill.text.student",
    "student_from_config": "kdistill.text.student",
    "evenly_spaced_layers": "kdistill.text.student",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdistill.text' has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if "transformers" in str(exc) or "accelerate" in str(exc):
            from kdistill.errors import KdistillError

            raise KdistillError("kdistill.text needs the `text` extra: pip install 'kdistill[text]'") from None
        raise


__all__ = sorted(_EXPORTS)
