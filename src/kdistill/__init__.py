"""kdistill: train a small student network to imitate a large teacher, and prove what it bought."""

__version__ = "0.1.0"
