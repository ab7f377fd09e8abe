"""Errors that refit reports to an operator as one line, without a traceback."""


class RefitError(Exception):
    """Base of every error refit reports as one line.

    ``permanent`` errors (a missing bucket, bad credentials, a bad setting) will not go away by
    themselves, so retrying them only delays the alert.
    """

    permanent = False

    def __init__(self, message: str = "", *, permanent: bool | None = None):
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent


class ConfigError(RefitError):
    """A setting is missing or invalid."""

    permanent = True


class InputError(RefitError):
    """An input file cannot be read at all (nothing was written)."""

    permanent = True


class StoreError(RefitError):
    """The object store is unreachable, refuses a write, or holds a corrupt object."""


class CheckpointError(RefitError):
    """A checkpoint folder is incomplete, corrupt, or does not match its manifest."""

    permanent = True


class NoChampionError(RefitError):
    """An operation needs a champion model and there is none yet."""


def one_line(exc: BaseException) -> str:
    """The error as the one line an operator reads: a refit error as it is, a database error by
    its driver's first line, anything else by its type and first line.

    Args:
        exc: The error.

    Returns:
        One line, without a traceback.
    """
    if isinstance(exc, RefitError):
        return str(exc)
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"database error: {str(exc.orig).strip().splitlines()[0]}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first} (run with --debug for the traceback)"
