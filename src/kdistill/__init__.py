"""kdistill: train a small student network to imitate a large teacher, and prove what it bought.

The Python API (kdistill.api): `kdistill.train(model=..., train=..., val=..., out=...)` and
`kdistill.distill(teacher=..., student=..., train=..., val=..., method="dkd", out=...)` return a `Run`
(`.report`, `.model`, `.out`); `kdistill.methods.build("dist", ...)` gives a method for your own loop.
Errors are `kdistill.KdistillError`. Imported on first use, so `import kdistill` stays light.
"""

__version__ = "0.1.0"

_API = {"train": "kdistill.api", "distill": "kdistill.api", "Run": "kdistill.api", "dataset_splits": "kdistill.api",
        "KdistillError": "kdistill.errors", "Batch": "kdistill.data.splits"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    if name == "methods":
        import importlib

        return importlib.import_module("kdistill.methods")
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


__all__ = ["train", "distill", "Run", "dataset_splits", "KdistillError", "Batch", "methods"]
