"""Distillation methods, registered by name (`distill.method`)."""

from kdistill.methods import at, ce, crd, dist, dkd, dml, fitnet, kd, lskd, pkt, rkd, sp, tf_kd  # noqa: F401  (registration)
from kdistill.methods import forward_kl, jsd, reverse_kl, skew_kl, tv  # noqa: F401  (causal-LM methods)
from kdistill.methods.base import METHODS, Method, MethodParams, build_method, check_task, register
from kdistill.methods.combined import build_distill_method

__all__ = ["METHODS", "Method", "MethodParams", "build_distill_method", "build_method", "check_task", "register"]
