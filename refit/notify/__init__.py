"""Notifications: what refit tells people, and where it is delivered.

Every event is a :class:`Notice`, built by a pure function from what the loop already returns
(the drift summary, the gate decision, the run summary, a rollback, a failed run). A notice
renders two ways: a Slack message (blocks plus a ``text`` fallback, and the machine-readable
``"refit": {"kind": ...}`` key) and a plain JSON event for other chat or incident tools
(``{"event", "title", "text", "fields", "run_url", "links"}``).

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
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import httpx

from refit.core.resources import deployments_dir

log = logging.getLogger("refit.notify")

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
MAX_TABLE_ROWS = 25
# Presigned report and image links stay valid this long (the SigV4 maximum).
LINK_TTL_S = 7 * 24 * 3600
OUTCOME_TITLES = {
    "promoted": "refit: challenger promoted",
    "rejected": "refit: challenger rejected",
    "superseded": "refit: challenger superseded (another run promoted first)",
    "no_retrain": "refit: no retrain needed",
    "no_new_data": "refit: no new feedback",
}


# --- what is said --------------------------------------------------------------------------------


@dataclass
class Notice:
    """One event, rendered for Slack or as a plain JSON event.

    Attributes:
        kind: machine-readable event kind (``drift``, ``retrain_started``, ``gate``, ``promoted``,
            ``rejected``, ``superseded``, ``no_retrain``, ``no_new_data``, ``rolled_back``, ``failure``).
        title: one line.
        lines: the body, Slack mrkdwn, one line each.
        fields: the event's values, machine-readable.
        table: a fixed-width table shown in a code block, if any.
        links: link text to URL (the report, the run).
        run_url: the Prefect UI page of the run that sent it, if known.
    """

    kind: str
    title: str
    lines: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)
    table: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    run_url: str | None = None

    def all_links(self) -> dict[str, str]:
        links = dict(self.links)
        if self.run_url:
            links.setdefault("Open the run", self.run_url)
        return links

    def slack(self) -> dict:
        """The Slack incoming-webhook body: blocks, a text fallback and ``refit.kind``."""
        body = "\n".join(self.lines)
        blocks = [{"type": "header", "text": {"type": "plain_text", "text": self.title[:150]}}]
        if body:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(body, 2900)}})
        if self.table:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{_clip(self.table, 2890)}```"}})
        links = self.all_links()
        if links:
            text = " · ".join(f"<{url}|{_escape(name)}>" for name, url in links.items())
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text, 2900)}]})
        fallback = "\n".join([self.title, body, *(f"{name}: {url}" for name, url in links.items())]).strip()
        return {"text": fallback, "blocks": blocks, "refit": {"kind": self.kind}}

    def event(self) -> dict:
        """The generic JSON webhook body."""
        return {
            "event": self.kind,
            "title": self.title,
            "text": "\n".join(self.lines),
            "fields": self.fields,
            "run_url": self.run_url,
            "links": self.all_links(),
            "source": "refit",
        }


def _escape(text: str) -> str:
    """Slack mrkdwn's three control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fixed_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to a common width, for a code block (Slack renders no markdown tables)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def drift_notice(
    summary: dict, champion_version: str | None, report_url: str | None = None, run_url: str | None = None
) -> Notice:
    """The drift check: decision, reasons, the signals table (drifted first) and the report link.

    Args:
        summary: the drift summary (``DriftResult.summary()`` plus ``html_uri``).
        champion_version: the champion the window was compared against.
        report_url: a link a browser can open (default: the report's store URI).
        run_url: the run's page in the Prefect UI.
    """
    decision = summary.get("decision")
    signals = sorted(summary.get("signals") or [], key=lambda s: (not s.get("drifted"), s.get("group") or ""))
    drifted = [s["column"] for s in signals if s.get("drifted")]
    lines = [
        f"*Champion*: `{champion_version}` · {summary.get('current_rows')} current vs "
        f"{summary.get('reference_rows')} reference rows · {len(drifted)} of {len(signals)} signals drifted",
        *[f"• {_escape(reason)}" for reason in summary.get("reasons") or []],
    ]
    table = None
    if signals:
        rows = [
            [s["column"], s.get("group") or "", s.get("method") or "", _num(s.get("score")), _num(s.get("threshold"))]
            + ["YES" if s.get("drifted") else "no"]
            for s in signals[:MAX_TABLE_ROWS]
        ]
        table = fixed_table(["signal", "group", "method", "score", "threshold", "drifted"], rows)
        if len(signals) > MAX_TABLE_ROWS:
            table += f"\n… {len(signals) - MAX_TABLE_ROWS} more (not drifted)"
    report = report_url or summary.get("html_uri")
    title = "refit: drift detected, retraining" if decision == "retrain" else f"refit: drift check: {decision}"
    return Notice(
        kind="drift",
        title=title,
        lines=lines,
        fields={
            "decision": decision,
            "champion": champion_version,
            "drifted": drifted,
            "drift_share": summary.get("drift_share"),
            "current_rows": summary.get("current_rows"),
            "reference_rows": summary.get("reference_rows"),
            "report_id": summary.get("report_id"),
            "report_uri": summary.get("html_uri"),
            "signals": [
                {k: s.get(k) for k in ("column", "group", "method", "score", "threshold", "drifted")} for s in signals
            ],
        },
        table=table,
        links={"Drift report": report} if report else {},
        run_url=run_url,
    )


def retrain_started_notice(
    snapshot: dict,
    champion_version: str | None,
    drift: dict | None = None,
    forced: bool = False,
    run_url: str | None = None,
) -> Notice:
    """A challenger starts training: on which snapshot, against which champion, and why."""
    if champion_version is None:
        why = "no champion yet: the first model"
    elif forced:
        why = "forced by the operator"
    else:
        drift = drift or {}
        detail = ", ".join(drift.get("drifted_columns") or []) or "; ".join(drift.get("reasons") or [])
        why = "drift: " + (detail or "see the drift check")
    lines = [
        f"*Snapshot*: {snapshot.get('id')} (feedback ids {snapshot.get('watermark_from')}.."
        f"{snapshot.get('watermark_to')}, {snapshot.get('total_rows')} rows)",
        f"*Champion*: `{champion_version or 'none'}`",
        f"*Why*: {_escape(why)}",
    ]
    return Notice(
        kind="retrain_started",
        title="refit: retraining a challenger",
        lines=lines,
        fields={
            "snapshot_id": snapshot.get("id"),
            "watermark_from": snapshot.get("watermark_from"),
            "watermark_to": snapshot.get("watermark_to"),
            "rows": snapshot.get("total_rows"),
            "champion": champion_version,
            "forced": forced,
            "reason": why,
        },
        run_url=run_url,
    )


def gate_notice(decision: dict, challenger_version: str | None, run_url: str | None = None) -> Notice:
    """The gate decision: the metric per reference with its bootstrap interval, and failed slices."""
    metric = decision["metric"]
    verdict = "PASSED" if decision["promote"] else "FAILED"
    level = f"{decision.get('confidence', 0.95):.0%}"
    lines = [
        f"*Challenger* `{challenger_version}` vs {decision['against']}: {_escape(decision['reason'])}",
    ]
    if decision.get("dev_set") is not None:
        lines.append(f"*Dev set*: v{decision['dev_set']} ({decision.get('dev_rows')} rows)")
    checks = decision.get("slice_checks") or {}
    failed = decision.get("failed_slices") or []
    for name in failed:
        c = checks.get(name)
        detail = f" ({c['rows']} rows: {metric} {_num(c.get('challenger'))} vs {_num(c.get('champion'))})" if c else ""
        lines.append(f"• worse on slice *{_escape(name)}*{detail}")
    for reason in decision.get("reasons") or []:
        lines.append(f"• {_escape(reason)}")
    comparisons = decision.get("comparisons") or {}
    rows = [
        [
            name,
            _num(c.get("challenger")),
            _num(c.get("reference")),
            f"{c['point']:+.4f}",
            f"{c['low']:+.4f} to {c['high']:+.4f}",
            "yes" if c.get("passed") else "NO",
        ]
        for name, c in comparisons.items()
    ]
    if not rows and decision.get("interval"):
        low, high = decision["interval"]
        rows = [
            [
                decision["against"],
                _num(decision.get("challenger_score")),
                _num(decision.get("champion_score")),
                f"{decision['improvement']:+.4f}",
                f"{low:+.4f} to {high:+.4f}",
                "yes" if decision["promote"] else "NO",
            ]
        ]
    header = ["vs", f"challenger {metric}", f"reference {metric}", "improvement", f"{level} interval", "passed"]
    return Notice(
        kind="gate",
        title=f"refit: gate {verdict} for {challenger_version}",
        lines=lines,
        fields={
            "challenger": challenger_version,
            "promote": decision["promote"],
            "against": decision["against"],
            "metric": metric,
            "challenger_score": decision.get("challenger_score"),
            "reference_score": decision.get("champion_score"),
            "improvement": decision.get("improvement"),
            "interval": list(decision["interval"]) if decision.get("interval") else None,
            "confidence": decision.get("confidence"),
            "failed_slices": failed,
            "dev_set": decision.get("dev_set"),
            "reason": decision["reason"],
        },
        table=fixed_table(header, rows) if rows else None,
        run_url=run_url,
    )


def outcome_notice(summary: dict, run_url: str | None = None) -> Notice:
    """What one retrain run ended with: promoted, rejected, superseded, no retrain, no new data."""
    drift = summary.get("drift") or {}
    gate = summary.get("gate") or {}
    lines = []
    if drift:
        drifted = ", ".join(drift.get("drifted_columns") or []) or "none"
        lines.append(f"*Drift*: {drift.get('decision')} (drifted: {drifted})")
        lines.extend(f"  • {_escape(reason)}" for reason in drift.get("reasons", []))
    if gate:
        lines.append(
            f"*Gate*: {'PASSED' if gate['promote'] else 'FAILED'} vs {gate['against']}: "
            f"challenger {gate['metric']}={gate['challenger_score']:.4f}, "
            f"{gate['against']} {gate['metric']}={gate['champion_score']:.4f}"
        )
        if gate.get("interval"):
            low, high = gate["interval"]
            level = f"{gate.get('confidence', 0.95):.0%}"
            lines.append(f"  • improvement {gate['improvement']:+.4f}, {level} interval {low:+.4f} to {high:+.4f}")
        if gate.get("failed_slices"):
            lines.append(f"  • worse on slices: {', '.join(gate['failed_slices'])}")
        lines.append(f"  • {_escape(gate['reason'])}")
    if summary.get("version"):
        lines.append(f"*Version*: `{summary['version']}`")
    if summary.get("champion"):
        lines.append(f"*Champion*: `{summary['champion']}`")
    outcome = summary.get("outcome", "done")
    return Notice(
        kind=outcome,
        title=OUTCOME_TITLES.get(outcome, f"refit: {outcome}"),
        lines=lines,
        fields={
            "outcome": outcome,
            "version": summary.get("version"),
            "champion": summary.get("champion"),
            "uri": summary.get("uri"),
            "drift_decision": drift.get("decision"),
            "promote": gate.get("promote"),
            "metric": gate.get("metric"),
            "challenger_score": gate.get("challenger_score"),
            "reference_score": gate.get("champion_score"),
            "interval": list(gate["interval"]) if gate.get("interval") else None,
        },
        run_url=run_url,
    )


def rollback_notice(result: dict, reason: str, actor: str, run_url: str | None = None) -> Notice:
    """A rollback: which champion left, which came back, who and why.

    Args:
        result: what :func:`refit.registry.rollback` returned (``{"from": ..., "to": ...}``).
    """
    return Notice(
        kind="rolled_back",
        title=f"refit: rolled back to {result['to']}",
        lines=[
            f"*Champion*: `{result['from']}` → `{result['to']}`",
            f"*By*: {_escape(actor)}",
            f"*Reason*: {_escape(reason)}",
        ],
        fields={"from": result["from"], "to": result["to"], "actor": actor, "reason": reason},
        run_url=run_url,
    )


def failure_notice(
    flow_name: str,
    run_name: str,
    error: str,
    task_name: str | None = None,
    run_url: str | None = None,
    state: str = "Failed",
) -> Notice:
    """A run that ended Failed or Crashed: the flow, the task that failed, the error."""
    lines = [f"*Flow*: {flow_name} / {run_name} ({state})"]
    if task_name:
        lines.append(f"*Task*: {task_name}")
    lines.append(f"*Error*: {_escape(error[:500])}")
    return Notice(
        kind="failure",
        title=f"refit: run {state.upper()}: {flow_name}",
        lines=lines,
        fields={"flow": flow_name, "flow_run": run_name, "task": task_name, "error": error[:2000], "state": state},
        run_url=run_url,
    )


# The Slack dicts directly, for callers that post to one URL themselves (refit/simulate.py).
def run_summary_message(summary: dict) -> dict:
    return outcome_notice(summary).slack()


def failure_message(flow_name: str, run_name: str, error: str, run_url: str | None = None) -> dict:
    return failure_notice(flow_name, run_name, error, run_url=run_url).slack()


# --- links ---------------------------------------------------------------------------------------


def ui_base(settings) -> str | None:
    """The Prefect UI's base URL: ``REFIT_UI_URL``, else Prefect's own ``PREFECT_UI_URL`` (which
    Prefect derives from ``PREFECT_API_URL``), else None (an ephemeral API has no UI)."""
    base = settings.ui_url
    if not base:
        try:
            from prefect.settings import get_current_settings

            base = get_current_settings().ui_url
        except Exception:  # a link is optional
            base = None
    return base.rstrip("/") if base else None


def flow_run_url(base: str | None, flow_run_id) -> str | None:
    """``<base>/runs/flow-run/<id>``, or None without a base or an id."""
    if not base or not flow_run_id:
        return None
    return f"{base}/runs/flow-run/{flow_run_id}"


def current_run_url(settings) -> str | None:
    """The UI page of the flow run this code runs in, if any."""
    try:
        from prefect.runtime import flow_run

        return flow_run_url(ui_base(settings), flow_run.id)
    except Exception:  # a link is optional
        return None


def browser_url(settings, uri: str | None, expires_s: int = LINK_TTL_S) -> str | None:
    """A link a browser can open for a stored object: an http(s) URI as it is, an ``s3://`` URI
    presigned for ``expires_s`` seconds, else None (a ``file://`` path is not served to browsers)."""
    if not uri:
        return None
    if uri.startswith(("http://", "https://")):
        return uri
    if not uri.startswith("s3://"):
        return None
    try:
        from refit.registry.store import S3Store, store_for

        store = store_for(settings)
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not isinstance(store, S3Store) or not key:
            return None
        import boto3
        from botocore.config import Config

        # SigV4 (X-Amz-Signature), which every region and S3-compatible accepts; boto3 still
        # presigns us-east-1 with the deprecated SigV2 unless told.
        meta = store.client.meta
        signer = boto3.client(
            "s3",
            endpoint_url=meta.endpoint_url,
            region_name=meta.region_name,
            config=meta.config.merge(Config(signature_version="s3v4")),
        )
        return signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s)
    except Exception as exc:  # a link is optional
        log.warning("no browser link for a stored object: %s", type(exc).__name__)
        return None


def report_link(settings, uri: str | None) -> str | None:
    """The link to show for a stored report: a browser URL when there is one, else the URI itself."""
    return browser_url(settings, uri) or uri


# --- where it goes -------------------------------------------------------------------------------


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
    from prefect.blocks.core import Block

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
        from prefect.utilities.templating import apply_values

        url, headers = apply_values([url, headers], secrets.get_secret_value())
    from refit.core.secrets import mask_in_logs

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
    """POST ``message`` as JSON; True when the receiver answered 2xx. Never raises.

    A connection error, a timeout, 429 or a 5xx is tried again after each of ``retry_delays``.
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
    """Send ``notice`` to each target in its style; which were delivered, by target name."""
    results = {}
    for target in found:
        if target.style == "slack":
            body = notice.slack()
        else:
            body = {**notice.event(), "sent_at": datetime.now(timezone.utc).isoformat()}
        results[target.name] = post(target.url, body, timeout=timeout, headers=target.headers or None)
    return results


def send(settings, notice: Notice, timeout: float = 10.0) -> dict[str, bool]:
    """Deliver ``notice`` to every configured target. Never raises; failures are logged."""
    try:
        results = deliver(targets(settings), notice, timeout=timeout)
    except Exception as exc:  # a notification never fails the flow
        log.warning("notification %s not sent: %s", notice.kind, type(exc).__name__)
        return {}
    for name, delivered in results.items():
        if not delivered:
            log.warning("notification %s not delivered to %s", notice.kind, name)
    return results


# --- the server-side alert (deployments/automations.yaml) ----------------------------------------

AUTOMATIONS_FILE = deployments_dir() / "automations.yaml"
PLACEHOLDER_BLOCK_ID = "00000000-0000-0000-0000-000000000000"


def load_automations(path: Path = AUTOMATIONS_FILE, block_document_id=None) -> list:
    """The automations of a file in ``prefect automation create --from-file``'s format, as
    Prefect's ``AutomationCore`` models, with the placeholder block id replaced when one is given."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

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
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client

    from refit.core.errors import ConfigError

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
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from refit.core.errors import ConfigError

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
    from prefect.blocks.core import Block

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
