"""Credentials kept in Prefect Secret blocks instead of environment variables.

A credential setting (``REFIT_DATABASE_URL``, ``REFIT_SOURCE_URL``, ``REFIT_SLACK_WEBHOOK_URL``,
``REFIT_SERVE_TOKEN``, ``REFIT_WEBHOOK_URL``, ``REFIT_WEBHOOK_TOKEN``) may hold
``prefect-secret://BLOCK-NAME`` instead of the value; the settings load the value from that
Secret block on the Prefect API (``PREFECT_API_URL``) when they are read, so the credential never sits in a deployment's
environment or YAML. Create one with ``prefect block create secret`` or in Python::

    from prefect.blocks.system import Secret
    Secret(value="postgresql+psycopg2://refit:...@db/feedback").save("refit-database-url")
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

PREFIX = "prefect-secret://"


def is_reference(value: object) -> bool:
    """Whether ``value`` names a Prefect Secret block rather than holding the credential."""
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve(value: object) -> object:
    """The credential a ``prefect-secret://NAME`` value names; any other value as it is.

    Raises:
        ValueError: the block cannot be loaded or holds no text. The message names the block,
            never a value.
    """
    if not is_reference(value):
        return value
    name = value[len(PREFIX) :].strip()
    if not name:
        raise ValueError(f"{PREFIX} needs a block name, e.g. {PREFIX}refit-database-url")
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(name, _sync=True)
    except Exception as exc:  # not found, or the Prefect API is unreachable: both end the load
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"the Prefect Secret block {name!r} cannot be loaded: {reason}") from None
    resolved = secret.get()
    if not isinstance(resolved, str) or not resolved:
        raise ValueError(f"the Prefect Secret block {name!r} does not hold a non-empty string")
    return resolved


# --- keeping credentials out of logs ------------------------------------------------------------

# Loggers of the HTTP clients that log every request's full URL (a Slack webhook's secret is its
# path) at INFO or DEBUG: httpx (Slack, webhooks, Prefect's client), httpcore, and urllib3.
HTTP_LOGGERS = ("httpx", "httpcore", "urllib3.connectionpool")
_masked: set[str] = set()


class _MaskSecrets(logging.Filter):
    """Replaces every registered credential in a record's message by ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _masked:
            message = record.getMessage()
            if any(secret in message for secret in _masked):
                for secret in sorted(_masked, key=len, reverse=True):
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


_filter = _MaskSecrets()


def mask_in_logs(*values: str | None) -> None:
    """Register credentials that must never appear in the HTTP clients' log lines. A URL's path
    and query are registered too (the part of a webhook URL that is the secret)."""
    for value in values:
        if not value or len(value) < 6:
            continue
        _masked.add(value)
        parts = urlsplit(value)
        if parts.scheme and len(parts.path) > 1:
            _masked.add(parts.path + (f"?{parts.query}" if parts.query else ""))
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


def mask_settings(settings) -> None:
    """Register the credentials in ``settings`` with :func:`mask_in_logs`."""

    def secret(name: str) -> str | None:
        value = getattr(settings, name, None)
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    from sqlalchemy.engine import make_url

    urls = (settings.database_url, getattr(settings, "source_url", None))
    passwords = [make_url(url).password for url in urls if url]
    names = ("slack_webhook_url", "webhook_url", "serve_token", "webhook_token")
    mask_in_logs(*passwords, *(secret(n) for n in names))
