"""The server-side alert (deployments/automations.yaml): a Prefect automation that posts when a
run fails and its own failure hook could not, installed with a notification block for the
configured target.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from refit.core.errors import ConfigError
from refit.core.resources import deployments_dir
from refit.notify.delivery import targets

log = logging.getLogger("refit.notify")

AUTOMATIONS_FILE = deployments_dir() / "automations.yaml"
PLACEHOLDER_BLOCK_ID = "00000000-0000-0000-0000-000000000000"


def load_automations(path: Path = AUTOMATIONS_FILE, block_document_id=None) -> list:
    """The automations of a file in ``prefect automation create --from-file``'s format, as
    Prefect's ``AutomationCore`` models, with the placeholder block id replaced when one is given."""
    data = yaml.safe_load(Path(path).read_text())
    items = data["automations"] if isinstance(data, dict) and "automations" in data else data
    items = items if isinstance(items, list) else [items]
    if block_document_id is not None:
        for item in items:
            for action in item.get("actions", []):
                if str(action.get("block_document_id")) == PLACEHOLDER_BLOCK_ID:
                    action["block_document_id"] = str(block_document_id)
    return [AutomationCore.model_validate(item) for item in items]


def install_automations(block_ref: str, path: Path = AUTOMATIONS_FILE) -> list:
    """Create the file's automations on the Prefect API, their notifications sent through the saved
    notification block ``block_ref`` (``TYPE-SLUG/NAME``). An automation of the same name is
    replaced, so installing twice leaves one of each.

    Returns:
        The new automations' ids.
    """
    block = Block.load(block_ref)
    if "notify" not in block.get_block_capabilities():
        raise ConfigError(f"block {block_ref!r} is not a notification block")
    ids = []
    with get_client(sync_client=True) as client:
        for automation in load_automations(path, block._block_document_id):
            for existing in client.read_automations_by_name(automation.name):
                client.delete_automation(existing.id)
            ids.append(client.create_automation(automation))
    return ids


def save_alert_block(settings, name: str = "refit-alerts") -> str:
    """Save a ``custom-webhook`` notification block for the automations, posting to the first
    configured target (Slack, else the generic webhook, from a URL or a saved block) in its format.
    The URL and any headers (the bearer token) are kept in the block's secrets. The block also works
    as ``REFIT_SLACK_WEBHOOK_BLOCK`` or ``REFIT_WEBHOOK_BLOCK``.

    Returns:
        The block's reference, ``custom-webhook/<name>``.
    """
    found = targets(settings)
    if not found:
        raise ConfigError("set REFIT_SLACK_WEBHOOK_URL or REFIT_WEBHOOK_URL (or their _BLOCK) to save an alert block")
    target = found[0]
    secrets = {"refit_url": target.url}
    headers = {}
    for i, (header, value) in enumerate(target.headers.items()):
        secrets[f"refit_header_{i}"] = value
        headers[header] = f"{{{{refit_header_{i}}}}}"
    if target.style == "slack":
        json_data = {"text": "{{subject}}\n{{body}}", "refit": {"kind": "failure", "source": "automation"}}
    else:
        json_data = {"event": "failure", "title": "{{subject}}", "text": "{{body}}", "source": "refit-automation"}
    block = CustomWebhookNotificationBlock(
        name="refit", url="{{refit_url}}", json_data=json_data, headers=headers or None, secrets=secrets
    )
    block.save(name, overwrite=True)
    return f"custom-webhook/{name}"


def install_failure_alerts(settings, path: Path = AUTOMATIONS_FILE) -> list:
    """Install the failure automation with the configured target: the saved block named by
    ``REFIT_SLACK_WEBHOOK_BLOCK`` (else ``REFIT_WEBHOOK_BLOCK``) when it is a notification block,
    else a ``custom-webhook`` block saved from the configured target. What ``refit up`` runs.

    Returns:
        The automations' ids; empty when no target is configured (nothing is installed).
    """
    for ref, slug in ((settings.slack_webhook_block, "slack-webhook"), (settings.webhook_block, "webhook")):
        if not ref:
            continue
        full = ref if "/" in ref else f"{slug}/{ref}"
        try:
            notifies = "notify" in Block.load(full).get_block_capabilities()
        except Exception as exc:  # an unloadable block: fall back to the URLs
            log.warning("notification block %r could not be loaded: %s", full, type(exc).__name__)
            continue
        if notifies:
            return install_automations(full, path)
    if not targets(settings):
        log.warning("no notification target configured: the failure automation is not installed")
        return []
    return install_automations(save_alert_block(settings), path)
