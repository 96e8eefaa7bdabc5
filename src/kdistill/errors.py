"""The one exception type that the CLI turns into `kdistill: error: ...` and exit code 2."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message for a one-line error (its type's name when the message is
    empty, as EOFError's from an empty file is), cut to `limit` characters."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line[:limit] if limit else line


class KdistillError(Exception):
    """A user-facing error: bad input, a missing file, an impossible configuration.

    The message is one line that says what is wrong and, where possible, how to fix it.
    """


class NonFiniteError(KdistillError):
    """A run's loss or gradient went inf/nan (the NaN guard); a hyperparameter search treats the trial as diverged."""
