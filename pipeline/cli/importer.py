"""The import stage: `pipeline importer`, `verify`, `reconcile`, `import-status`, `redrive`."""

from __future__ import annotations

import json
import sys

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings


@cli.command()
@click.option("--batch", default=10, show_default=True, help="Messages received per poll.")
@click.option("--drain", is_flag=True, help="Exit when the queue is empty instead of waiting for more.")
@click.option(
    "--lease",
    "lease_s",
    type=float,
    default=None,
    help="Seconds this worker's claim on an inbox row lasts without a heartbeat (default "
    "PIPELINE_IMPORT_LEASE_S, 300); the rows of a worker that died come free after it.",
)
@click.option(
    "--streams",
    type=click.IntRange(1, 16),
    default=None,
    help="Objects loaded at once, each on its own connection (default 2, or PIPELINE_IMPORT_STREAMS).",
)
@click.option(
    "--worker-id",
    envvar="PIPELINE_WORKER_ID",
    help="This worker's id in its capacity backend (local worker id, ECS task ARN, EC2 instance id): "
    "the worker then holds scale-in protection while busy.",
)
def importer(batch: int, drain: bool, lease_s: float | None, streams: int | None, worker_id: str | None) -> None:
    """Import from the SQS queue without Dagster (same core as the Dagster importer runs)."""
    from pipeline.importer.worker import run_worker
    from pipeline.scaling.protection import worker_identity, worker_protection

    settings = load_settings()
    worker_id = worker_id or worker_identity()
    protection = worker_protection(settings, worker_id)
    stats = run_worker(
        settings,
        batch=batch,
        drain=drain,
        lease_s=lease_s,
        protection=protection,
        streams=streams,
        worker_id=worker_id,
    )
    click.echo(
        f"messages {stats.messages}  objects loaded {stats.objects_loaded}  rows {stats.rows_loaded}  "
        f"duplicates {stats.duplicates}  stale {stats.stale}  expired {stats.expired}  failures {stats.failures}  "
        f"dead-lettered {stats.dead_lettered}  {stats.seconds:.1f}s"
    )
    sys.exit(1 if stats.failures else 0)


@cli.command()
@click.option("--customer", "customer_id", help="Only this customer's objects and rows.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(customer_id: str | None, as_json: bool) -> None:
    """Compare S3 with the warehouse: every enriched row loaded exactly once. Exit 0 only if so."""
    from pipeline.importer.verify import verify as run_verify

    report = run_verify(load_settings(), customer_id)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for name in (
            "objects_enriched",
            "objects_loaded",
            "rows_expected",
            "rows_loaded",
            "missing",
            "duplicates",
            "reports_loaded",
            "messages_loaded",
            "dead_letter",
            "failures",
        ):
            click.echo(f"{name:17} {report[name]}")
        for obj in report["missing_objects"][:20]:
            click.secho(f"  missing  {obj['key']} ({obj['rows']} rows)", fg="red")
        for obj in report["duplicated_objects"][:20]:
            click.secho(f"  extra    {obj['key']} ({obj['rows']} rows)", fg="red")
        click.secho(
            "OK: nothing missing, nothing duplicated" if report["ok"] else "NOT OK",
            fg="green" if report["ok"] else "red",
        )
    sys.exit(0 if report["ok"] else 1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list the drift; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def reconcile(dry_run: bool, as_json: bool) -> None:
    """Compare S3 with the warehouse and repair every drift: unloaded or wrong versions, deleted
    objects, partial loads, stray rows. Exit 0 when nothing failed."""
    from pipeline.importer.reconcile import reconcile as run_reconcile

    result = run_reconcile(load_settings(), dry_run=dry_run)
    drift = result.drift
    if as_json:
        click.echo(json.dumps(result.to_dict(dry_run), indent=2))
    else:
        click.echo(
            f"unloaded or wrong version {len(drift.unloaded)}  removed {len(drift.removed)}  "
            f"partial {len(drift.partial)}  loads with stray rows {len(drift.stray_loads)}"
        )
        for label, versions in (("unloaded", drift.unloaded), ("removed", drift.removed), ("partial", drift.partial)):
            for version in versions[:50]:
                click.echo(f"  {label:9} s3://{version.bucket}/{version.key}")
        if not dry_run and drift.total:
            click.echo(f"repaired {result.imported}  failed {result.failed}")
    sys.exit(1 if result.failed else 0)


@cli.command("import-status")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def import_status(limit: int, as_json: bool) -> None:
    """Queue depth, dead letters, recent loads and unresolved failures."""
    from pipeline.importer.status import import_status as status_of

    report = status_of(load_settings(), limit)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    box = report["inbox"]
    click.echo(
        f"queue visible {report['queue_visible']}  in flight {report['queue_in_flight']}  "
        f"dead letters {report['dead_letter']} (queue {report['queue_dead_letter']}, inbox {box['dead']})"
    )
    oldest = f"{box['oldest_pending_s']:.0f}s" if box["oldest_pending_s"] is not None else "-"
    click.echo(
        f"import inbox pending {box['pending']}  claimed {box['claimed']}  retrying {box['retrying']}  oldest {oldest}"
    )
    click.echo(f"loaded objects {report['objects_loaded']}  rows {report['rows_loaded']}")
    click.echo("recent loads:")
    for load in report["recent_loads"]:
        click.echo(f"  {load['recorded_at']}  {load['event']:10} {load['rows'] or 0:>8} rows  {load['object_key']}")
    click.echo("unresolved failures:")
    for failure in report["failures"]:
        click.secho(
            f"  {failure['last_failed']}  x{failure['attempts']}  {failure['object_key']}: {failure['error']}", fg="red"
        )
    if not report["failures"]:
        click.echo("  none")
    if report["dead_letters"]:
        click.echo("dead letters in the inbox (fix the cause, then `pipeline redrive`):")
    for dead in report["dead_letters"]:
        click.secho(f"  x{dead['attempts']}  {dead['object_key']}: {dead['last_error']}", fg="red")
    click.echo(f"rejected messages (not our bucket / prefix / not from S3): {report['rejected_messages']}")
    for rejection in report["recent_rejections"]:
        click.secho(f"  {rejection['rejected_at']}  {rejection['message_id']}: {rejection['reason']}", fg="yellow")


@cli.command()
@click.option("--limit", default=10_000, show_default=True, help="Most dead-letter-queue messages to move.")
def redrive(limit: int) -> None:
    """Retry what was dead-lettered (after fixing its cause): the inbox's dead objects get a new set
    of attempts, and the dead-letter queue's messages go back to the import queue."""
    from pipeline.aws import client
    from pipeline.importer import inbox
    from pipeline.importer.batch import connect
    from pipeline.importer.queue import redrive as move

    settings = load_settings()
    with connect(settings.database_url) as conn:
        revived = inbox.redrive(conn, settings.enriched_bucket)
    moved = move(client(settings, "sqs"), settings.dead_letter_queue_url, settings.queue_url, limit)
    click.echo(
        f"inbox: {revived} dead object(s) due again; queue: moved {moved} message(s) back to {settings.queue_url}"
    )


@cli.command()
@click.option("--days", type=click.IntRange(min=1), default=None, help="Days kept (default: PIPELINE_RETENTION_DAYS).")
@click.option("--dry-run", is_flag=True, help="Only list the partitions past the horizon and their rows; drop nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def retention(days: int | None, dry_run: bool, as_json: bool) -> None:
    """Drop telemetry_events' monthly partitions past the retention horizon (no DELETE), with their
    projections and their objects' ledger and inbox rows; create the partitions ahead. The daily
    warehouse_maintenance job in Dagster does the same."""
    from pipeline.warehouse import retention as keep

    if days is None and keep.retention_days() is None:
        click.echo("PIPELINE_RETENTION_DAYS is unset: everything is kept (set it, or pass --days).", err=True)
    result = keep.apply(load_settings().database_url, days=days, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo(f"horizon {result.horizon or '(none: everything kept)'}  partitions created {result.partitions_created}")
    verb = "would drop" if dry_run else "dropped"
    for p in result.dropped:
        click.echo(f"  {verb} {p.name} ({p.first_day} .. {p.last_day}): {p.rows} rows in {p.seconds:.2f} s")
    if not dry_run:
        click.echo(
            f"rows removed {result.rows_removed}  ledger rows {result.ledger_rows_removed}  "
            f"inbox rows {result.inbox_rows_removed}  slices refreshed {result.slices_refreshed}"
        )
