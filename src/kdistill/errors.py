"""The one exception type that the CLI turns into `kdistill: error: ...` and exit code 2."""


class KdistillError(Exception):
    """A user-facing error: bad input, a missing file, an impossible configuration.

    The message is one line that says what is wrong and, where possible, how to fix it.
    """


class NonFiniteError(KdistillError):
    """A run's loss or gradient went inf/nan (the NaN guard); a hyperparameter search treats the trial as diverged."""
