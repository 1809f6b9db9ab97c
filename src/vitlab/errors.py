"""vitlab's error types: problems a user can fix (a bad option, a bad or missing file), as opposed to bugs.

Every error vitlab raises for a user's input derives from ``VitlabError``; the ``vitlab`` command prints such an
error as one line naming the fix and exits non-zero (``--debug`` or ``VITLAB_DEBUG=1`` shows the traceback). Each
subclass also derives from the builtin exception Python code would expect (``ValueError``, ``FileNotFoundError``),
so ``except ValueError`` keeps working.

This module is the lowest layer: it imports nothing from vitlab.

Example:
    >>> try:
    ...     raise ConfigError("optim.lr must be > 0, got -1: set optim.lr to a positive number")
    ... except ValueError as err:
    ...     print(type(err).__name__, isinstance(err, VitlabError))
    ConfigError True
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "MissingFileError", "VitlabError", "WeightsError"]


class VitlabError(Exception):
    """Base of every error a user can fix; its message says what to do."""


class ConfigError(VitlabError, ValueError):
    """An option or configuration value is invalid (out of range, contradictory, misspelt)."""


class DataError(VitlabError, ValueError):
    """A dataset or image file is corrupt, truncated, empty or inconsistent (e.g. a label outside the class range)."""


class WeightsError(VitlabError, ValueError):
    """A weights or checkpoint file is missing, corrupt, untrusted, or does not fit the model."""


class MissingFileError(VitlabError, FileNotFoundError):
    """A file or folder the user named does not exist."""
