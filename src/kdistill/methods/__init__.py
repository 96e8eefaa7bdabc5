"""Distillation methods, registered by name (`distill.method`)."""

from kdistill.methods import ce, kd  # noqa: F401  (registration)
from kdistill.methods.base import METHODS, Method, MethodParams, build_method, register

__all__ = ["METHODS", "Method", "MethodParams", "build_method", "register"]
