"""Errors that refit reports to an operator as one line, without a traceback."""


class RefitError(Exception):
    """Base of every error refit reports as one line."""


class ConfigError(RefitError):
    """A setting is missing or invalid."""


class InputError(RefitError):
    """An input file cannot be read at all (nothing was written)."""


class StoreError(RefitError):
    """The object store is unreachable, refuses a write, or holds a corrupt object."""


class CheckpointError(RefitError):
    """A checkpoint folder is incomplete, corrupt, or does not match its manifest."""


class NoChampionError(RefitError):
    """An operation needs a champion model and there is none yet."""
