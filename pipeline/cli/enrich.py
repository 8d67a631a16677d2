"""The enrichment stage: `pipeline enrich` (one Spark run, as the Dagster asset runs it)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from pipeline.cli.app import cli, stdout_to_stderr
from pipeline.settings import load_settings


@cli.command()
@click.option("--days", required=True, help="Days to enrich: 2026-11-01,2026-11-02 or a range 2026-11-01..2026-11-30.")
@click.option(
    "--master",
    default=None,
    help="Spark master, used whatever the run's size (default: PIPELINE_SPARK_MASTER, else local[*], for runs of "
    "PIPELINE_ENRICH_LOCAL_BYTES or more); 'none' enriches in this process.",
)
@click.option(
    "--customers",
    default=None,
    help="Only these customers' reports: acme,globex (default: every customer of the days).",
)
@click.option(
    "--reprocess",
    is_flag=True,
    help="Enrich every batch of the days again (a fix); without it only what no run enriched under the current "
    "model and reference data.",
)
@click.option("--run-id", default=None, help="Names the staging prefix (default: a fresh id).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def enrich(
    days: str, master: str | None, customers: str | None, reprocess: bool, run_id: str | None, as_json: bool
) -> None:
    """Enrich raw telemetry of some days and publish it (what enriched_telemetry runs), outside Dagster."""
    import datetime as dt
    import uuid

    from pipeline.aws import client
    from pipeline.enrich.spark import enrich_days, enrich_days_in_process, spark_session

    wanted: list[str] = []
    for part in days.split(","):
        first, _, last = part.strip().partition("..")
        try:
            start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)
        except ValueError:
            raise click.BadParameter(
                f"{part!r} is not a day (YYYY-MM-DD) or a range of days", param_hint="--days"
            ) from None
        wanted += [(start + dt.timedelta(n)).isoformat() for n in range((end - start).days + 1)]
    settings = load_settings()
    s3 = client(settings, "s3")
    run_id = run_id or f"cli-{uuid.uuid4().hex[:12]}"
    scope = [c.strip() for c in customers.split(",") if c.strip()] if customers else None
    try:
        if master == "none":
            results = enrich_days_in_process(settings, s3, wanted, run_id, scope, reprocess)
        else:
            with stdout_to_stderr():
                # --master names a Spark master: Spark runs whatever the size (default: small runs in process)
                results = enrich_days(
                    (lambda: spark_session(master)),
                    settings,
                    s3,
                    wanted,
                    run_id,
                    scope,
                    reprocess,
                    local_bytes=0 if master else None,
                )
    except ValueError as exc:  # a customer id the collector never writes
        raise click.BadParameter(str(exc), param_hint="--customers") from None
    rows = [asdict(r) for r in results]
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "days": rows}, indent=2))
    else:
        for r in results:
            click.echo(
                f"{r.day}  listed {r.listed_objects}  already enriched {r.skipped_objects}  batches {len(r.batches)}  "
                f"raw objects read {r.raw_objects}  records {r.raw_records}  enriched {r.enriched_rows}  "
                f"rescued {r.rescued_rows}  written {len(r.written)}  unchanged {len(r.unchanged)}  "
                f"removed {len(r.removed)}" + (f"  gone since planned {r.gone_objects}" if r.gone_objects else "")
            )
    sys.exit(0 if all(r.rows_match and not r.null_event_ids for r in results) else 1)
