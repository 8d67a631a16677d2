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
