"""A notice: one event refit tells people about, and its two renderings, a Slack message (blocks
plus a ``text`` fallback, and the machine-readable ``"refit": {"kind": ...}`` key) and a plain
JSON event for other chat or incident tools (``{"event", "title", "text", "fields", "run_url",
"links"}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Notice:
    """One event, rendered for Slack or as a plain JSON event.

    Attributes:
        kind: machine-readable event kind (``drift``, ``retrain_started``, ``gate``, ``promoted``,
            ``rejected``, ``superseded``, ``no_retrain``, ``no_new_data``, ``rolled_back``, ``failure``,
            and the live rollout's ``rollout``, ``rollout_canary``, ``rollout_promoted``,
            ``rollout_stopped``, ``rollout_superseded``).
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
        """The notice's links, with the run's page last when there is one."""
        links = dict(self.links)
        if self.run_url:
            links.setdefault("Open the run", self.run_url)
        return links

    def slack(self) -> dict:
        """The Slack incoming-webhook body: blocks, a text fallback and ``refit.kind``."""
        body = "\n".join(self.lines)
        blocks = [{"type": "header", "text": {"type": "plain_text", "text": self.title[:150]}}]
        if body:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(body, 2900)}})
        if self.table:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{clip(self.table, 2890)}```"}})
        links = self.all_links()
        if links:
            text = " · ".join(f"<{url}|{escape_mrkdwn(name)}>" for name, url in links.items())
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, 2900)}]})
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


def escape_mrkdwn(text: str) -> str:
    """Slack mrkdwn's three control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fixed_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to a common width, for a code block (Slack renders no markdown tables)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
