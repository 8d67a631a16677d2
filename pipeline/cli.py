"""The ``pipeline`` command."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click

from pipeline.settings import ConfigurationError, load_settings, pipeline_home

REPO_ROOT = Path(__file__).resolve().parents[1]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group()
@click.option(
    "--log-level",
    default=os.environ.get("PIPELINE_LOG_LEVEL", "INFO"),
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    show_default=True,
)
def cli(log_level: str) -> None:
    """DMARC telemetry pipeline: collector -> Spark enrichment -> S3/SNS/SQS -> importer -> PostgreSQL."""
    _setup_logging(log_level)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigurationError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


def _print_status(st) -> None:
    ok = click.style("ok", fg="green")
    bad = click.style("DOWN", fg="red")
    click.echo(f"state folder   {st.home}")
    click.echo(f"AWS endpoint   {st.endpoint or 'real AWS'}  [{ok if st.moto_running else bad}]")
    click.echo(f"PostgreSQL     {st.database}  [{ok if st.database_reachable else bad}]")
    if st.database_error:
        click.echo(f"               {st.database_error}")
    for bucket, count in st.buckets.items():
        click.echo(f"bucket         s3://{bucket}  objects={count if count is not None else '?'}")
    click.echo(f"import queue   visible={st.queue_visible} in_flight={st.queue_in_flight}")
    click.echo(f"dead letters   {st.dead_letter}")


@cli.command()
def up() -> None:
    """Start the local stack (moto + PostgreSQL), provision it from deploy/, migrate the warehouse."""
    from pipeline.local import stack

    settings = stack.up(
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )
    _print_status(stack.status(settings))


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete the state folder (embedded database included).")
def down(purge: bool) -> None:
    """Stop the local stack started by `pipeline up`."""
    from pipeline.local import stack

    stopped = stack.down(purge=purge)
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Endpoints, buckets, queue depth, dead letters, database reachability."""
    from pipeline.local import stack

    st = stack.status(load_settings())
    if as_json:
        click.echo(json.dumps({**asdict(st), "healthy": st.healthy}, indent=2))
    else:
        _print_status(st)
    sys.exit(0 if st.healthy else 1)


@cli.command()
def demo() -> None:
    """Run the pipeline end to end on the local stack and show the result."""
    from pipeline.demo import round_trip

    settings = load_settings()
    result = round_trip(settings)
    click.echo("Round trip through the local stack:")
    click.echo(f"  wrote      s3://{settings.enriched_bucket}/{result.key} (ETag {result.etag})")
    click.echo(f"  received   SQS message {result.message_id} via SNS")
    click.echo(
        f"  loaded     ledger row {result.ledger_id}: {result.rows_in_warehouse} of "
        f"{result.rows_written} rows in PostgreSQL"
    )
    click.echo(f"  took       {result.seconds:.2f}s")
    if result.rows_in_warehouse != result.rows_written:
        sys.exit(1)


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--customer", "customer_id", help="The customer these reports belong to.")
@click.option("--flush", "flush_only", is_flag=True, help="Only upload what the spool holds.")
@click.option(
    "--spool",
    "spool_dir",
    type=click.Path(path_type=Path),
    help="Spool folder (default: $PIPELINE_HOME/spool).",
)
@click.option("--max-file-mb", default=25.0, show_default=True, help="Largest report file accepted.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def collect(paths, customer_id, flush_only, spool_dir, max_file_mb, as_json) -> None:
    """Collect DMARC aggregate reports (XML, .xml.gz, .zip, .eml) into raw telemetry in S3.

    Exit status: 0 all collected; 1 some inputs were rejected; 3 some objects wait in the spool
    (S3 unreachable; run again or `pipeline collect --flush`).
    """
    from pipeline.collector import collect as collector
    from pipeline.collector.inputs import Limits
    from pipeline.collector.spool import Spool

    settings = load_settings()
    spool = Spool(spool_dir or pipeline_home() / "spool")
    progress = sys.stderr.isatty() and not as_json
    if flush_only:
        summary = collector.CollectSummary()
        s3 = collector.client(settings, "s3", collector.COLLECTOR_CLIENT)
        collector.flush(spool, collector.Uploader(s3, settings.raw_bucket), summary, progress)
    else:
        if not customer_id or not paths:
            raise click.UsageError("give --customer ID and at least one file or folder (or --flush)")
        limits = Limits(max_file_bytes=int(max_file_mb * 1024 * 1024))
        summary = collector.collect(paths, customer_id, settings, spool, limits, progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_collect_summary(summary, spool)
    sys.exit(summary.exit_code)


@cli.command("generate-reports")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--customers", default=3, show_default=True, help="How many customers (one domain each).")
@click.option("--reports", default=8, show_default=True, help="Reports per customer.")
@click.option("--seed", default=0, show_default=True, help="The same seed writes the same reports.")
@click.option("--start-date", default="2026-11-01", show_default=True, help="Day of the first reports.")
def generate_reports_command(out_dir: Path, customers: int, reports: int, seed: int, start_date: str) -> None:
    """Write synthetic RFC 7489 aggregate reports (XML, .xml.gz, .zip) for demos and load tests."""
    import datetime as dt

    from pipeline.collector.generate import generate_reports

    written = generate_reports(out_dir, customers, reports, seed, dt.date.fromisoformat(start_date))
    click.echo(
        f"{len(written)} reports, {sum(len(r.records) for r in written)} records, "
        f"{sum(r.messages for r in written)} messages in {out_dir} (manifest.json lists them)"
    )


def _print_collect_summary(summary, spool) -> None:
    click.echo(
        f"files {summary.files}  reports {summary.reports}  records {summary.records}  messages {summary.messages}"
    )
    click.echo(
        f"objects written {len(summary.objects_written)}  replaced (better copy) "
        f"{len(summary.objects_replaced)}  already in S3 {len(summary.already_in_s3)}"
    )
    for dup in summary.duplicates:
        click.echo(f"  duplicate  {dup}")
    for rej in summary.rejected:
        click.secho(f"  rejected   {rej['reason']}", fg="yellow")
    for err in summary.upload_errors:
        click.secho(f"  upload     {err}", fg="red")
    if summary.pending_in_spool:
        click.secho(
            f"{summary.pending_in_spool} object(s) wait in {spool.root}: run "
            "`pipeline collect --flush` when S3 is reachable",
            fg="red",
        )


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("dagster_args", nargs=-1, type=click.UNPROCESSED)
def dev(dagster_args: tuple[str, ...]) -> None:
    """Run `dagster dev` on the local stack (UI on http://127.0.0.1:3000)."""
    settings = load_settings()
    env = {**os.environ, **settings.process_env(), "DAGSTER_HOME": str(dagster_home())}
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), *dagster_args]
    click.echo(f"DAGSTER_HOME={env['DAGSTER_HOME']} {' '.join(cmd)}")
    raise SystemExit(subprocess.call(cmd, env=env, cwd=REPO_ROOT))


def dagster_home() -> Path:
    """$PIPELINE_HOME/dagster holding the project's dagster.yaml (storage in PostgreSQL)."""
    home = pipeline_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


if __name__ == "__main__":
    main()
