"""Commands on the data: the schema, ingest, sync, quarantine, the dev set, forgetting a user."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from refit.cli._shared import JsonOpt, current_settings, emit, group, migrated_engine

db_app = group("Database schema commands.", no_args_is_help=True)
devset_app = group("The gate's frozen, versioned dev set.", no_args_is_help=True)
schema_app = group(
    "The feature schema: each behaviour feature's type and domain, in recorded versions.\n\n"
    "refit schema shows the current version. The first ingest or sync with features infers version 1;"
    " types and the vector's length are enforced, numeric ranges and categorical values only recorded.",
    invoke_without_command=True,
)


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Apply the SQL migrations in sql/ that are not applied yet.

    A second run is a no-op.
    """
    from refit.data.db import check_connection, engine_for, upgrade

    engine = engine_for(current_settings())
    check_connection(engine)
    applied = upgrade(engine)
    emit(
        {"applied": applied},
        as_json,
        f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date",
    )


def ingest(
    file: Annotated[str, typer.Argument(help="CSV, JSONL or Parquet feedback file, or - for standard input.")],
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="refit column=file column, e.g. --map text=review_body (repeatable)."),
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet (default: from the name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load feedback into Postgres.

    Needs text and created_at, and one of satisfaction (0..1), rating or label; feedback_id,
    user_id and item_id are optional; other columns are behaviour features. A row with text and
    no target is stored unlabelled (in no split); a later file with its feedback_id, its text and a
    target labels it. Bad rows go to quarantine with a reason; re-ingesting a file adds nothing.
    """
    from refit.data.ingest import ingest as run_ingest
    from refit.data.validate import IngestRules

    settings = current_settings()
    engine = migrated_engine(settings)
    rules = IngestRules.from_settings(settings, column_map=pairs(mapping or [], "--map"))
    show_progress = sys.stderr.isatty() and not as_json

    def progress(summary) -> None:
        if show_progress:
            sys.stderr.write(
                f"\r{summary.rows_read:,} rows: {summary.accepted:,} accepted, {summary.duplicates:,} duplicate,"
                f" {summary.quarantined:,} quarantined ({summary.rows_per_second:,.0f} rows/s)"
            )

    summary = run_ingest(engine, file, rules, fmt=fmt, batch_rows=settings.ingest_batch_rows, on_progress=progress)
    if show_progress:
        sys.stderr.write("\n")
    data = summary.as_dict()
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.reasons.items())) or "none"
    emit(
        data,
        as_json,
        f"{summary.source}: {summary.rows_read} rows read, {summary.accepted} accepted, {summary.duplicates} "
        f"duplicate, {summary.quarantined} quarantined ({reasons}) at {data['rows_per_second']:.0f} rows/s"
        + unlabelled_notes(summary.unlabelled, summary.labelled_later)
        + schema_notes(summary),
    )


def sync(
    reconcile: Annotated[
        bool | None,
        typer.Option(
            "--reconcile/--no-reconcile",
            help="Also compare every source key to forget rows deleted there (default: every"
            " REFIT_SOURCE_RECONCILE_HOURS).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pull the feedback new or edited in your Postgres table, once.

    The source is REFIT_SOURCE_URL with REFIT_SOURCE_TABLE or REFIT_SOURCE_QUERY, its columns
    mapped by REFIT_COLUMN_MAP as for files. Rows go through the same validation, PII redaction
    and quarantine as a file; the cursor moves with each committed batch. A row without a target
    is stored unlabelled; an edit at the source that gives it one labels it.
    """
    from refit.data.source import SourceSpec, sync_source
    from refit.data.validate import IngestRules

    settings = current_settings()
    settings.require_source()
    engine = migrated_engine(settings)
    rules = IngestRules.from_settings(settings)
    summary = sync_source(
        engine, SourceSpec.from_settings(settings, rules), rules, batch_rows=settings.ingest_batch_rows,
        reconcile=reconcile,
    )  # fmt: skip
    data = summary.as_dict()
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary.reasons.items())) or "none"
    deleted = f", {summary.deleted} deleted at the source" if summary.reconciled else ""
    emit(
        data,
        as_json,
        f"{summary.source}: {summary.rows_read} rows read, {summary.accepted} new or edited ({summary.edited} edits),"
        f" {summary.duplicates} unchanged, {summary.quarantined} quarantined ({reasons}){deleted};"
        f" cursor {summary.cursor} ({data['rows_per_second']:.0f} rows/s)"
        + unlabelled_notes(summary.unlabelled)
        + schema_notes(summary),
    )


def unlabelled_notes(unlabelled: int, labelled_later: int = 0) -> str:
    """The rows stored without a target, and those a later label turned labelled, as lines to print."""
    notes = ""
    if unlabelled:
        notes += f"\n{unlabelled} row(s) stored unlabelled (no target): in no split until a label arrives"
    if labelled_later:
        notes += f"\n{labelled_later} unlabelled row(s) labelled (the unlabelled version kept in feedback_history)"
    return notes


def schema_notes(summary) -> str:
    """What an ingest or sync met that the feature schema does not have, as lines to print."""
    from refit.data.schema import new_features_notice

    notes = "\n" + new_features_notice(summary.new_features) if summary.new_features else ""
    if summary.new_values:
        counted = ", ".join(f"{name} ({n})" for name, n in sorted(summary.new_values.items()))
        notes += f"\ncategorical values the schema has not seen (stored, only reported): {counted}"
    return notes


def pairs(values: list[str], option: str) -> dict[str, str]:
    """``name=value`` option values as a dict.

    Args:
        values: The values given, e.g. ``["text=review_body"]``.
        option: The option's name, for the error message.

    Returns:
        Each name mapped to its value, both stripped.

    Raises:
        typer.BadParameter: A value without ``=``, a name or a value.
    """
    mapped = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise typer.BadParameter(f"expected {option} name=value, got {value!r}")
        mapped[key.strip()] = val.strip()
    return mapped


def quarantine(
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Re-validate quarantined rows with the current settings.")
    ] = False,
    limit: Annotated[int, typer.Option(help="How many recent rows to list.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Count quarantined rows by reason and list the latest.

    With --requeue, re-validate them after a configuration change, moving the rows that now pass
    into feedback; rows that earlier releases quarantined as missing_target (text, no target) are
    stored unlabelled.
    """
    from refit.data.quarantine import quarantine_report, requeue_quarantine

    settings = current_settings()
    engine = migrated_engine(settings)
    if requeue:
        result = requeue_quarantine(engine, settings)
        emit(result, as_json, f"requeued {result['requeued']} row(s); {result['still_quarantined']} still quarantined")
        return
    report = quarantine_report(engine, limit)
    lines = [f"{n:>8}  {reason}" for reason, n in report["counts"].items()] or ["quarantine is empty"]
    lines += [
        f"  #{r['id']} {r['reason']} (line {r['line_no']} of {r['source']}): {r['detail']}" for r in report["latest"]
    ]
    emit(report, as_json, "\n".join(lines))


@devset_app.command("show")
def devset_show(as_json: JsonOpt = False) -> None:
    """Show the current dev set version: its watermark, size and hash."""
    from refit.data.devset import current_devset

    devset = current_devset(migrated_engine(current_settings()))
    data = devset.as_dict() if devset else {}
    emit(data, as_json, f"dev set v{devset.version}: {devset.rows} rows up to id {devset.watermark} ({devset.reason})"
         if devset else "no dev set yet: the first gate creates one")  # fmt: skip


@devset_app.command("refresh")
def devset_refresh(
    reason: Annotated[str, typer.Option(help="Why the dev set grows (recorded).")] = "manual refresh",
    as_json: JsonOpt = False,
) -> None:
    """Grow the dev set to every dev-split row ingested so far, as a new recorded version.

    The gate never does this on its own.
    """
    from refit.data.devset import refresh_devset
    from refit.data.snapshots import SplitConfig

    settings = current_settings()
    devset = refresh_devset(migrated_engine(settings), SplitConfig.from_settings(settings), reason)
    emit(devset.as_dict(), as_json, f"dev set v{devset.version}: {devset.rows} rows up to id {devset.watermark}")


def forget(
    user: Annotated[str, typer.Option("--user", help="The user id whose feedback is deleted.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete a user's feedback, record that it was done, and list the models trained on it."""
    from refit.data.privacy import forget_user

    result = forget_user(migrated_engine(current_settings()), user)
    affected = ", ".join(result["affected_versions"]) or "none"
    emit(result, as_json, f"deleted {result['rows_deleted']} row(s); models trained on them: {affected}")


def _schema_lines(schema) -> list[str]:
    width = max([len(name) for name in schema.features] + [7])
    lines = []
    for name, spec in schema.features.items():
        if spec["type"] == "numeric":
            domain = f"range {spec.get('min')} .. {spec.get('max')} (recorded)"
        elif spec["type"] == "categorical":
            values = spec.get("values") or []
            shown = ", ".join(values[:8]) + (", ..." if len(values) > 8 else "")
            domain = f"{spec.get('distinct', len(values))} value(s) (recorded): {shown}"
        else:
            domain = f"length {spec.get('length')} (enforced)"
        lines.append(f"  {name:<{width}}  {spec['type']:<11}  {domain}")
    return lines or ["  (no features)"]


@schema_app.callback()
def schema_show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the feature schema: each behaviour feature's type and observed domain.

    The first ingest or sync with features infers version 1. Types and the vector's length are
    enforced (a value of the wrong type is quarantined as bad_feature); numeric ranges and
    categorical values are only recorded. Change it with refit schema update --reason.
    """
    if ctx.invoked_subcommand is not None:
        return
    from refit.data.schema import load_schema

    schema = load_schema(migrated_engine(current_settings()))
    if schema is None:
        emit({}, as_json, "no feature schema yet: the first ingest or sync with features infers version 1")
        return
    head = f"feature schema v{schema.version} ({schema.created_at:%Y-%m-%d %H:%M %Z}, {schema.actor}): {schema.reason}"
    emit(schema.as_dict(), as_json, "\n".join([head, *_schema_lines(schema)]))


@schema_app.command("update")
def schema_update(
    reason: Annotated[str, typer.Option(help="Why the schema changes (required, recorded).")],
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="name=numeric or name=categorical: a feature's type, not inferred (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-infer the feature schema from the stored feedback and record it as the next version.

    Prints what changed: features added (columns reported by ingest or sync), removed and
    retyped. Rows quarantined under the old schema can then be re-validated with refit quarantine
    --requeue.
    """
    import getpass

    from refit.data.schema import SCALAR_TYPES, update_schema

    given = pairs(types or [], "--type")
    wrong = {n: k for n, k in given.items() if k not in SCALAR_TYPES}
    if wrong:
        raise typer.BadParameter(f"--type takes numeric or categorical, got {wrong}")
    settings = current_settings()
    schema, changes = update_schema(
        migrated_engine(settings), reason, types=given, vector=settings.vector_feature,
        actor=f"cli:{getpass.getuser()}",
    )  # fmt: skip
    parts = [
        f"added {', '.join(changes['added'])}" if changes["added"] else "",
        f"removed {', '.join(changes['removed'])}" if changes["removed"] else "",
        "retyped " + ", ".join(f"{n} ({t})" for n, t in changes["retyped"].items()) if changes["retyped"] else "",
        f"domains of {', '.join(changes['domains'])}" if changes["domains"] else "",
    ]
    changed = "; ".join(p for p in parts if p) or "no change"
    emit(
        {"schema": schema.as_dict(), "diff": changes},
        as_json,
        "\n".join([f"feature schema v{schema.version} recorded: {changed}", *_schema_lines(schema)]),
    )


@schema_app.command("history")
def schema_history_command(as_json: JsonOpt = False) -> None:
    """List every recorded version of the feature schema, oldest first, with its reason."""
    from refit.data.schema import schema_history

    versions = schema_history(migrated_engine(current_settings()))
    lines = [
        f"v{v.version}  {v.created_at:%Y-%m-%d %H:%M}  {v.actor}  {len(v.features)} feature(s)  {v.reason}"
        for v in versions
    ]
    emit([v.as_dict() for v in versions], as_json, "\n".join(lines) or "no feature schema yet")
