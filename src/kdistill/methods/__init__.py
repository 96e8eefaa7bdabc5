"""Distillation methods, registered by name (`distill.method`)."""

from kdistill.methods import at, ce, crd, dist, dkd, dml, fitnet, kd, lskd, pkt, rkd, sp, tf_kd  # noqa: F401  (registration)
from kdistill.methods import forward_kl, jsd, reverse_kl, skew_kl, tv  # noqa: F401  (causal-LM methods)
from kdistill.methods import minilm, tinybert  # noqa: F401  (text feature methods)
from kdistill.methods.base import METHODS, Method, MethodParams, build_method, check_task, register
from kdistill.methods.combined import build_distill_method


def build(name: str, **params: object) -> Method:
    """Method `name` with its hyperparameters (validated), for a training loop of your own:
    `terms = method(batch, student_logits, teacher_logits)` gives a dict of weighted loss terms; their sum is
    the loss. `batch` is a `kdistill.Batch(inputs, labels, index)`. Feature methods also need
    `method.bind(student, teacher, example_inputs)` once, before the optimiser is built."""
    return build_method(name, dict(params), where="kdistill.methods.build")


__all__ = ["METHODS", "Method", "MethodParams", "build", "build_distill_method", "build_method", "check_task", "register"]
