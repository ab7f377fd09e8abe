"""Slack notifications: a task for run summaries, a hook for failures. Never fail the flow."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from refit import notify
from refit.errors import RefitError
from refit.settings import Settings, load_settings


def _url(settings: Settings) -> str | None:
    return settings.slack_webhook_url.get_secret_value() if settings.slack_webhook_url else None


@task(name="notify-slack", cache_policy=NONE, timeout_seconds=60, retries=2, retry_delay_seconds=[2, 5])
def notify_summary(settings: Settings, summary: dict) -> bool:
    delivered = notify.post(_url(settings), notify.run_summary_message(summary))
    get_run_logger().info("Slack notified: %s", delivered)
    return delivered


def notify_failure(flow, flow_run, state) -> None:
    """Flow hook for Failed and Crashed runs: one Slack message naming the flow and the error."""
    try:
        settings = load_settings()
    except RefitError:
        return
    error = state.message or "unknown error"
    notify.post(_url(settings), notify.failure_message(flow.name, flow_run.name, error))
