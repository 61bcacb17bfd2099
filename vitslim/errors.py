"""Errors that carry a one-line message for people and an exit code for the CLI."""

from __future__ import annotations


class VitslimError(Exception):
    """A failure the user can act on; the CLI prints its message alone and exits with ``exit_code``."""

    exit_code = 1


class UsageError(VitslimError):
    """Bad input on the command line or in an API call (exit code 2)."""

    exit_code = 2


class ModelFileError(VitslimError):
    """A model file that is missing, truncated or not a vitslim file."""


class WeightsError(VitslimError):
    """Weights that cannot be downloaded, verified or loaded."""


class NonFiniteError(VitslimError):
    """A NaN or infinity where a number must be finite: a diverged loss or gradient, importance scores,
    weights after pruning. Nothing non-finite is ever written."""


class WriteError(VitslimError):
    """A file that could not be written (disk full, read-only folder, an I/O error midway); the target
    is left as it was."""


class UnreadableImagesWarning(UserWarning):
    """Some files of a data folder could not be decoded and were skipped (the message names a few)."""
