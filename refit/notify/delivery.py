"""Where notices go, and how: the configured targets, and the POST that delivers one.

Targets come from the settings: a Slack URL (``REFIT_SLACK_WEBHOOK_URL``, or the URL held by a
saved Prefect block named by ``REFIT_SLACK_WEBHOOK_BLOCK``) and a generic JSON webhook
(``REFIT_WEBHOOK_URL`` or ``REFIT_WEBHOOK_BLOCK``, with an optional bearer token). refit posts
the JSON itself: none of Prefect's notification blocks sends Slack blocks through ``notify()``
(the core ``SlackWebhook`` sends apprise text and drops URLs that are not Slack's), so a block is
where the secret URL is kept, and the same small ``post`` delivers for a plain URL and a block.

A notification that fails is logged (without its URL or token) and never fails the caller.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import httpx

from refit.core.secrets import mask_in_logs
from refit.notify.message import Notice

log = logging.getLogger("refit.notify")

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Target:
    """One place notices go. ``repr`` never shows the URL or headers (they hold secrets)."""

    name: str
    style: Literal["slack", "json"]
    url: str = field(repr=False)
    headers: dict = field(default_factory=dict, repr=False)


def load_block_target(ref: str, default_slug: str) -> tuple[str, dict]:
    """The URL (and headers, if the block has them) of a saved Prefect block.

    Args:
        ref: ``NAME`` (a block of ``default_slug``) or ``TYPE-SLUG/NAME``, e.g.
            ``slack-webhook/alerts``, ``slack-incoming-webhook/alerts`` (prefect-slack),
            ``webhook/incidents`` or ``custom-webhook/ops``.
        default_slug: the block type of a bare name.
    """
    # Prefect costs seconds to import; of the delivery, only a target kept in a block needs it.
    from prefect.blocks.core import Block
    from prefect.utilities.templating import apply_values

    block = Block.load(ref if "/" in ref else f"{default_slug}/{ref}")
    url = getattr(block, "url", None)
    if url is None:
        raise ValueError(f"block {ref!r} has no url field")
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    headers = getattr(block, "headers", None) or {}
    if hasattr(headers, "get_secret_value"):
        headers = headers.get_secret_value()
    headers = {str(k): str(v) for k, v in dict(headers).items()}
    secrets = getattr(block, "secrets", None)
    if secrets is not None and hasattr(secrets, "get_secret_value"):
        # a custom-webhook block keeps its URL and token as {{placeholders}} filled from its secrets
        url, headers = apply_values([url, headers], secrets.get_secret_value())
    mask_in_logs(url, *headers.values())  # a block's URL is as secret as REFIT_SLACK_WEBHOOK_URL
    return url, headers


def targets(settings) -> list[Target]:
    """The configured targets; one whose block cannot be loaded is logged and left out."""
    found = []
    plans = [
        ("slack", "slack", settings.slack_webhook_url, settings.slack_webhook_block, "slack-webhook"),
        ("webhook", "json", settings.webhook_url, settings.webhook_block, "webhook"),
    ]
    for name, style, url, block, slug in plans:
        headers: dict = {}
        if url is not None:
            url = url.get_secret_value()
        elif block:
            try:
                url, headers = load_block_target(block, slug)
            except Exception as exc:  # never fail the caller
                log.warning("notification block %r for %s could not be loaded: %s", block, name, type(exc).__name__)
                continue
        if not url:
            continue
        if name == "webhook" and settings.webhook_token is not None:
            headers = {**headers, "Authorization": f"Bearer {settings.webhook_token.get_secret_value()}"}
        found.append(Target(name, style, url, headers))
    return found


def post(
    webhook_url: str | None,
    message: dict,
    timeout: float = 10.0,
    headers: dict | None = None,
    retry_delays: tuple[float, ...] = (1.0,),
) -> bool:
    """POST a message as JSON. Never raises: a failure is logged.

    Args:
        webhook_url: where to post (None or empty: nothing is sent).
        message: the JSON body.
        timeout: seconds per attempt.
        headers: extra request headers.
        retry_delays: a connection error, a timeout, 429 or a 5xx is tried again after each of
            these delays (seconds).

    Returns:
        Whether the receiver answered 2xx.
    """
    if not webhook_url:
        return False
    for attempt in range(len(retry_delays) + 1):
        if attempt:
            time.sleep(retry_delays[attempt - 1])
        try:
            response = httpx.post(webhook_url, json=message, timeout=timeout, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("notification failed (attempt %d): %s", attempt + 1, type(exc).__name__)
            continue
        except Exception as exc:  # a bad URL or body must not fail the flow either
            log.warning("notification failed: %s", type(exc).__name__)
            return False
        if response.status_code < 300:
            return True
        log.warning("notification refused (attempt %d): HTTP %s", attempt + 1, response.status_code)
        if response.status_code not in RETRYABLE:
            return False
    return False


def deliver(found: list[Target], notice: Notice, timeout: float = 10.0) -> dict[str, bool]:
    """Send a notice to each target in its style (a Slack body, or the generic JSON event).

    Args:
        found: the targets.
        notice: what to send.
        timeout: seconds per attempt.

    Returns:
        Whether each target got it, by target name.
    """
    results = {}
    for target in found:
        if target.style == "slack":
            body = notice.slack()
        else:
            body = {**notice.event(), "sent_at": datetime.now(timezone.utc).isoformat()}
        results[target.name] = post(target.url, body, timeout=timeout, headers=target.headers or None)
    return results


def send(settings, notice: Notice, timeout: float = 10.0) -> dict[str, bool]:
    """Deliver a notice to every configured target. Never raises; failures are logged.

    Args:
        settings: refit's settings (where the targets are configured).
        notice: what to send.
        timeout: seconds per attempt.

    Returns:
        Whether each target got it, by target name (empty when the targets could not be read).
    """
    try:
        results = deliver(targets(settings), notice, timeout=timeout)
    except Exception as exc:  # a notification never fails the flow
        log.warning("notification %s not sent: %s", notice.kind, type(exc).__name__)
        return {}
    for name, delivered in results.items():
        if not delivered:
            log.warning("notification %s not delivered to %s", notice.kind, name)
    return results
