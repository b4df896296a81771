"""Error types shared by the library and the CLI.

Every error a user can cause (bad path, bad checkpoint, bad option) is raised as a
:class:`FastViTError` subclass with a one-line message that says what is wrong and what to do.
The CLI prints that line and exits with code 2, without a traceback.
"""

from __future__ import annotations


class FastViTError(Exception):
    """Base class for user-facing errors (one-line message, CLI exit code 2)."""


class CheckpointError(FastViTError):
    """A checkpoint cannot be read, recognised or loaded."""


class DataError(FastViTError):
    """A dataset, image or data option is invalid."""


class ConfigError(FastViTError, ValueError):
    """An option, model name or shape is invalid."""


class ReparamError(FastViTError):
    """Reparameterization failed verification."""
