"""Students for Transformer teachers.

`student_from_teacher`: DistilBERT's recipe (Sanh et al. 2019): the teacher's architecture with
fewer layers, its embeddings, chosen layers, pooler and classifier (or a causal LM's final norm and
output head) copied from the teacher.
`student_from_config`: the teacher's config with overrides (fewer/smaller layers), randomly
initialised.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from torch import nn

from kdistill.errors import KdistillError, first_line

# bert/roberta: encoder.layer.N.; distilbert: transformer.layer.N.; llama, qwen, mistral: model.layers.N.;
# gpt-2: transformer.h.N.
_LAYER_KEY = re.compile(r"^(.*?\.(?:layers?|h)\.)(\d+)(\..*)$")


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student of `student_layers` copies: floor(i · L / k), i.e. every other one
    from the bottom for a half-depth student, as DistilBERT did (6 of 12: 0, 2, 4, 6, 8, 10)."""
    if not 1 <= student_layers <= teacher_layers:
        raise KdistillError(f"a student of {student_layers} layers cannot be taken from a teacher of {teacher_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def _num_layers(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise KdistillError(f"cannot tell how many layers a {type(config).__name__} has")


def student_from_config(teacher: nn.Module, **overrides: Any) -> nn.Module:
    """A randomly initialised model of the teacher's class with `overrides` applied to its config
    (e.g. num_hidden_layers=2, hidden_size=128); labels are kept."""
    config = copy.deepcopy(teacher.config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise KdistillError(f"the teacher's config ({type(config).__name__}) has no setting {key!r}")
        setattr(config, key, value)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers < 1:
        raise KdistillError(f"num_hidden_layers={layers}: a student needs at least one layer")
    kinds = getattr(config, "layer_types", None)
    if "layer_types" not in overrides and isinstance(kinds, list) and isinstance(layers, int) and len(kinds) != layers:
        config.layer_types = [kinds[i % len(kinds)] for i in range(layers)]  # the teacher's pattern, cut to length
    if hasattr(config, "validate"):  # transformers' own checks (heads dividing the width, ...), before any training
        try:
            config.validate()
        except Exception as exc:  # a StrictDataclassClassValidationError wrapping a ValueError
            raise KdistillError(f"student config: {first_line(exc.__cause__ or exc, 200)}") from None
    return type(teacher)(config)


def student_from_teacher(teacher: nn.Module, num_layers: int | None = None, layers: list[int] | None = None) -> nn.Module:
    """The teacher with only `layers` (default: `num_layers` evenly spaced ones) kept, every weight copied.

    Student layer j is teacher layer layers[j]; everything outside the layer stack (embeddings,
    pooler, classifier head) is copied as is.
    """
    total = _num_layers(teacher.config)
    if layers is None:
        if num_layers is None:
            raise KdistillError("give num_layers or layers")
        layers = evenly_spaced_layers(total, num_layers)
    layers = [int(i) for i in layers]
    bad = [i for i in layers if not 0 <= i < total]
    if not layers or bad:
        raise KdistillError(f"layers {layers}: each must be a layer index of the teacher (0..{total - 1})")
    overrides: dict[str, Any] = {"num_hidden_layers": len(layers)}
    if isinstance(getattr(teacher.config, "layer_types", None), list):  # per-layer kinds (sliding/full attention)
        overrides["layer_types"] = [teacher.config.layer_types[i] for i in layers]
    student = student_from_config(teacher, **overrides)
    source = teacher.state_dict()
    target = student.state_dict()
    loaded: dict[str, Any] = {}
    for key in target:
        match = _LAYER_KEY.match(key)
        teacher_key = f"{match.group(1)}{layers[int(match.group(2))]}{match.group(3)}" if match else key
        if teacher_key not in source or source[teacher_key].shape != target[key].shape:
            raise KdistillError(f"cannot copy {key} from the teacher (no {teacher_key} of shape {tuple(target[key].shape)})")
        loaded[key] = source[teacher_key].clone()
    student.load_state_dict(loaded, strict=True)
    student.config.kdistill_layers_from_teacher = layers  # saved with save_pretrained: how it was built
    return student
