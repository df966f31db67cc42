"""Errors a user can act on.

Every problem caused by input (a file, a symbol, a setting, a registry state) raises a
subclass of `KronosError` whose message names what is wrong and how to fix it. The CLI
prints the message without a traceback and exits with the error's `exit_code`.
"""

from __future__ import annotations


class KronosError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(KronosError):
    """A setting, flag or environment variable has a value we cannot use."""


class DataError(KronosError):
    """Market data (a file, a row, a column, a symbol) is unusable."""


class ModelError(KronosError):
    """A model, tokenizer or adapter cannot be loaded or does not fit its base."""


class RegistryError(KronosError):
    """The MLflow registry is missing something, or is in a state we refuse to act on."""


class RegistryUnavailable(RegistryError):
    """The tracking server cannot be reached."""

    exit_code = 3


class LockBusy(KronosError):
    """Another job holds the training lock and the caller asked not to wait."""

    exit_code = 75  # EX_TEMPFAIL: try again later
