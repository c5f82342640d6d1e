"""One exception hierarchy: every user-facing failure is a KktembedError.

The CLI turns each into a single ``Error: <message>`` line (plus the hint) on stderr with
``exit_code`` as the process status; tracebacks only with KKTEMBED_DEBUG=1.
"""

from __future__ import annotations


class KktembedError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(KktembedError):
    """A file, tensor or data set that cannot be used as given."""


class CheckpointError(InputError):
    """Missing, corrupt, truncated, non-safetensors or non-finite checkpoint."""


class DataError(InputError):
    """Missing or malformed data, or data that does not fit the network."""


class ArchitectureError(InputError):
    """No adapter fits, an unknown adapter, or a network that is not homogeneous."""


class NotHomogeneousError(ArchitectureError):
    """The network fails the numerical homogeneity / Euler check."""


class SolverError(KktembedError):
    """The multiplier problem did not reach an optimal status."""


class UsageError(KktembedError):
    """Options that contradict each other or are out of range."""

    exit_code = 2


class OutputExistsError(KktembedError):
    """Refusing to overwrite an existing output without --force."""


class KktembedWarning(UserWarning):
    """Something the user should know about a result (low storage precision, a guessed layer
    order, …). The CLI prints it as one ``Warning:`` line on stderr."""
