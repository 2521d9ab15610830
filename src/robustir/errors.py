"""Exception types: every user-facing problem is a RobustirError with a message naming the input and what was expected."""

from __future__ import annotations


class RobustirError(ValueError):
    """A problem with user input (data, spec, checkpoint, config); the CLI prints its message without a traceback."""


class UnsafeCheckpointError(RobustirError):
    """A checkpoint that could only be read by unpickling arbitrary objects."""


class CheckpointMismatchError(RobustirError):
    """A checkpoint whose keys, shapes, dtypes or values do not fit the model."""
