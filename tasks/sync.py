"""The sync task: one pull from the team's Postgres table."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from refit.core.settings import Settings
from refit.data.db import engine_for, require_schema
from refit.data.schema import new_features_notice
from refit.data.source import SourceSpec, sync_source
from refit.data.validate import IngestRules
from refit.tasks.data import IO_RETRIES


@task(name="sync-source", cache_policy=NONE, timeout_seconds=3600, **IO_RETRIES)
def sync(settings: Settings, reconcile: bool | None = None) -> dict:
    """Pull the rows new or edited at ``REFIT_SOURCE_*`` into refit's feedback, once.

    Retried like other I/O (a source that is down or too slow): every batch commits whole with
    its cursor, so a retry resumes where the last committed batch ended.

    Args:
        settings: refit's settings (the source, the database).
        reconcile: compare every source key now (True), never (False), or when
            REFIT_SOURCE_RECONCILE_HOURS have passed since the last time (None).

    Returns:
        The sync's summary: the counts, the cursor and the snapshot's horizon.
    """
    engine = engine_for(settings)
    require_schema(engine)
    rules = IngestRules.from_settings(settings)
    summary = sync_source(
        engine,
        SourceSpec.from_settings(settings, rules),
        rules,
        batch_rows=settings.ingest_batch_rows,
        reconcile=reconcile,
    ).as_dict()
    get_run_logger().info(
        "%s: %s rows read, %s new or edited (%s edits), %s unchanged, %s quarantined, %s deleted%s",
        summary["source"], summary["rows_read"], summary["accepted"], summary["edited"], summary["duplicates"],
        summary["quarantined"], summary["deleted"], f"; new source columns: {summary['new_columns']}"
        if summary["new_columns"] else "",
    )  # fmt: skip
    if summary["new_features"]:
        get_run_logger().warning(new_features_notice(summary["new_features"]))
    return summary
