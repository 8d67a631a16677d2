"""The ``pipeline`` command."""

from __future__ import annotations

import json
import logging
import os
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
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
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
    from pipeline.local.dotenv import write_dotenv

    settings = stack.up(
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )
    _print_status(stack.status(settings))
    dotenv = write_dotenv(settings, REPO_ROOT)
    if dotenv:
        click.echo(f"dagster env    {dotenv} (for `dagster dev`, `dagster definitions validate -w workspace.yaml`)")


@cli.command()
@click.option("--purge", is_flag=True, help="Also delete the state folder (embedded database included).")
def down(purge: bool) -> None:
    """Stop the local stack started by `pipeline up`."""
    from pipeline.local import stack
    from pipeline.local.dotenv import remove_dotenv

    stopped = stack.down(purge=purge)
    remove_dotenv(REPO_ROOT)
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
@click.option(
    "--reports",
    "reports_dir",
    type=click.Path(exists=True, path_type=Path),
    help="Collect these report files instead of generating synthetic ones (needs --customer).",
)
@click.option("--customer", "customer_id", help="The customer of --reports.")
@click.option("--customers", default=3, show_default=True, help="Synthetic customers.")
@click.option("--reports-per-customer", default=8, show_default=True, help="Synthetic reports per customer.")
@click.option("--seed", default=42, show_default=True)
def demo(reports_dir, customer_id, customers, reports_per_customer, seed) -> None:
    """Run the whole pipeline on the local stack and show the result."""
    from pipeline.demo import run_demo

    settings = load_settings()
    click.echo("Pipeline demo on the local stack:")
    result = run_demo(settings, reports_dir, customer_id, customers, reports_per_customer, seed, echo=click.echo)
    click.echo("")
    click.echo(
        f"{'customer':16} {'objects':>8} {'rows':>8} {'reports':>8} {'messages':>9} {'missing':>8} {'dups':>5}  verify"
    )
    for cid, v in result.verify.items():
        click.echo(
            f"{cid:16} {v['objects_loaded']:>8} {v['rows_loaded']:>8} {v['reports_loaded']:>8} "
            f"{v['messages_loaded']:>9} {v['missing']:>8} {v['duplicates']:>5}  "
            + click.style("ok" if v["ok"] else "NOT OK", fg="green" if v["ok"] else "red")
        )
    _demo_headlines(settings, list(result.verify))
    click.echo("")
    click.echo(
        "Look around: `pipeline dev` (Dagster UI, http://127.0.0.1:3000), `pipeline verify`, `pipeline import-status`."
    )
    sys.exit(0 if result.ok else 1)


def _demo_headlines(settings, customers: list[str]) -> None:
    """The customers' headline figures as the web application shows them, and how to open it."""
    from pipeline.web.queries import Warehouse, overview
    from pipeline.web.tenants import issue_token

    if not customers:
        return
    click.echo("")
    click.echo("Headline figures, as the web application shows them:")
    warehouse = Warehouse(settings.database_url, pool_size=1)
    try:
        for cid in customers:
            with warehouse.tenant(cid) as conn:
                o = overview(conn, cid)
            rate = f"{100 * o['dmarc_pass_rate']:.1f}%" if o["dmarc_pass_rate"] is not None else "-"
            click.echo(
                f"  {cid}: {o['reports']} reports, {o['messages']} messages, DMARC pass {rate}, "
                f"{len(o['domains'])} domain(s), {o['sources']} sending sources"
            )
    finally:
        warehouse.close()
    token = issue_token(settings.database_url, customers[0])
    click.echo(
        f"Web application: `pipeline web`, then http://127.0.0.1:8080/ and sign in as {customers[0]} "
        f"with the token {token}"
    )


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


@cli.command()
@click.option("--days", required=True, help="Days to enrich: 2026-11-01,2026-11-02 or a range 2026-11-01..2026-11-30.")
@click.option(
    "--master",
    default=None,
    help="Spark master (default PIPELINE_SPARK_MASTER, else local[*]); 'none' enriches in this process.",
)
@click.option("--run-id", default=None, help="Names the staging prefix (default: a fresh id).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def enrich(days: str, master: str | None, run_id: str | None, as_json: bool) -> None:
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
    if master == "none":
        results = enrich_days_in_process(settings, s3, wanted, run_id)
    else:
        saved = os.dup(1)
        os.dup2(2, 1)  # Spark's JVM logs to this process's stdout; keep stdout for the result
        try:
            results = enrich_days(spark_session(master), settings, s3, wanted, run_id)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    rows = [asdict(r) for r in results]
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "days": rows}, indent=2))
    else:
        for r in results:
            click.echo(
                f"{r.day}  raw objects {r.raw_objects}  records {r.raw_records}  enriched {r.enriched_rows}  "
                f"rescued {r.rescued_rows}  written {len(r.written)}  unchanged {len(r.unchanged)}  "
                f"removed {len(r.removed)}"
            )
    sys.exit(0 if all(r.rows_match and not r.null_event_ids for r in results) else 1)


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
    from pipeline.importer.batch import IMPORT_STREAMS
    from pipeline.importer.worker import run_worker
    from pipeline.scaling.protection import worker_identity

    settings = load_settings()
    protection = None
    worker_id = worker_id or worker_identity()
    if worker_id:
        from pipeline.scaling.config import ScalingConfig, make_backend
        from pipeline.scaling.protection import WorkerProtection

        backend = make_backend(ScalingConfig.from_env(), settings)
        protection = WorkerProtection(settings.database_url, backend, worker_id)
        logging.getLogger(__name__).info("worker %s started (capacity backend %s)", worker_id, backend.name)
    stats = run_worker(
        settings,
        batch=batch,
        drain=drain,
        lease_s=lease_s,
        protection=protection,
        streams=streams or IMPORT_STREAMS,
        worker_id=worker_id,
    )
    click.echo(
        f"messages {stats.messages}  objects loaded {stats.objects_loaded}  rows {stats.rows_loaded}  "
        f"duplicates {stats.duplicates}  stale {stats.stale}  failures {stats.failures}  "
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
        click.echo(
            json.dumps(
                {
                    "unloaded": [v.key for v in drift.unloaded],
                    "removed": [v.key for v in drift.removed],
                    "partial": [v.key for v in drift.partial],
                    "stray_loads": drift.stray_loads,
                    "imported": result.imported,
                    "failed": result.failed,
                    "dry_run": dry_run,
                },
                indent=2,
            )
        )
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


@cli.group()
def bench() -> None:
    """Benchmarks: figures measured in one run against baselines, printed as ratios."""


@bench.command("import")
@click.option(
    "--workloads",
    default="w1,w2,w3",
    show_default=True,
    help="Which of W1, W2, W3 (and W4: tick flatness with 100,000 objects seen) to run.",
)
@click.option("--scale", default=1.0, show_default=True, help="Fraction of W1/W2 object counts (quick runs: 0.1).")
@click.option("--trickle-seconds", default=120, show_default=True, help="Length of W3.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_import(workloads: str, scale: float, trickle_seconds: int, as_json: bool) -> None:
    """Importer efficiency vs server-side COPY, speed-up vs naive INSERT, orchestration overhead, freshness."""
    from pipeline.bench import importer as bench_importer

    figures = bench_importer.run(load_settings(), workloads, scale, trickle_seconds, progress=not as_json)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        if name == "targets_met":
            continue
        target = bench_importer.TARGETS.get(name)
        verdict = ""
        if target:
            met = figures["targets_met"][name]
            verdict = click.style(
                f"  target {target[0]} {target[1]}: {'met' if met else 'NOT met'}", fg="green" if met else "red"
            )
        click.echo(f"{name:30} {value}{verdict}")


@bench.command("flood")
@click.option("--workloads", default="w5,w6,w7", show_default=True, help="Which of W5, W6, W7 to run.")
@click.option("--scale", default=1.0, show_default=True, help="Fraction of the reports and records (quick runs: 0.1).")
@click.option("--master", default="local[2]", show_default=True, help="Spark master of the enrichment stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_flood(workloads: str, scale: float, master: str, as_json: bool) -> None:
    """The whole flow under a flood: collect, one Spark run, import runs, projections, stage by stage."""
    from pipeline.bench import flood

    saved = os.dup(1)
    os.dup2(2, 1)  # Spark's JVM logs to this process's stdout; keep stdout for the figures
    try:
        figures = flood.run(load_settings(), workloads, scale, master, progress=sys.stderr.isatty() or not as_json)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        if name == "targets_met":
            continue
        target = flood.TARGETS.get(name)
        verdict = ""
        if target:
            met = figures["targets_met"][name]
            verdict = click.style(
                f"  target {target[0]} {target[1]}: {'met' if met else 'NOT met'}", fg="green" if met else "red"
            )
        click.echo(f"{name:28} {value}{verdict}")


@bench.command("web")
@click.option("--events", default=1_000_000, show_default=True, help="Telemetry events in the scratch warehouse.")
@click.option("--customers", default=5, show_default=True)
@click.option("--clients", default=50, show_default=True, help="Concurrent clients.")
@click.option("--rounds", default=6, show_default=True, help="Rounds of every page and API route per client.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_web(events: int, customers: int, clients: int, rounds: int, as_json: bool) -> None:
    """p50/p95 page and API latency under concurrent clients, beside the SQL alone."""
    from pipeline.bench import web as bench_web_module

    figures = bench_web_module.run(load_settings(), events, customers, clients, rounds, progress=not as_json)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        click.echo(f"{name:24} {value}")


@bench.command("enrich")
@click.option("--customers", default=10, show_default=True)
@click.option("--reports", default=40, show_default=True, help="Reports per customer.")
@click.option("--master", default="local[2]", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_enrich(customers: int, reports: int, master: str, as_json: bool) -> None:
    """Spark rows/s and fixed seconds per run, beside one-process pyarrow enrichment of the same data."""
    from pipeline.bench import enrich as bench_enrich_module

    # Spark's JVM logs to this process's stdout; keep stdout for the figures.
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        figures = bench_enrich_module.run(load_settings(), customers, reports, master)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        click.echo(f"{name:28} {value}")


@cli.command()
@click.option("--policy", type=click.Choice(["queue-depth", "cpu", "both"]), default="both", show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=Path("simulation.png"),
    show_default=True,
    help="Where to write the PNG (queue depth, capacity, cost over a day).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def simulate(policy: str, plot_path: Path, as_json: bool) -> None:
    """Simulate a day of Spark floods: CPU-triggered scaling (min 1) vs queue depth (min 0)."""
    from pipeline.scaling import simulate as sim

    names = ["cpu", "queue-depth"] if policy == "both" else [policy]
    results = [sim.run(name) for name in names]
    sim.plot([trace for trace, _ in results], plot_path)
    table = sim.summaries_as_dict([summary for _, summary in results])
    if as_json:
        click.echo(json.dumps(table if policy == "both" else table[policy], indent=2))
        return
    click.echo(f"{'policy':12} {'drain min (mean/max)':>22} {'machine-min':>12} {'idle machine-min':>17} {'cost $':>8}")
    for row in table.values():
        click.echo(
            f"{row['policy']:12} {row['drain_minutes']:>10} / {row['max_drain_minutes']:<9} "
            f"{row['machine_minutes']:>12} {row['idle_machine_minutes']:>17} {row['cost']:>8}"
        )
    click.echo(f"plot: {plot_path}")


@cli.group()
def scaling() -> None:
    """Queue-depth autoscaling of importer workers (backend: $PIPELINE_CAPACITY_BACKEND)."""


def _controller():
    from pipeline.scaling.config import ScalingConfig, build_controller

    return build_controller(load_settings(), ScalingConfig.from_env())


@scaling.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--decisions", default=10, show_default=True, help="How many recent decisions to show.")
def scaling_status(as_json: bool, decisions: int) -> None:
    """Backlog, desired and actual capacity, and the last decisions with their inputs."""
    from pipeline.scaling.backends import CapacityError
    from pipeline.scaling.controller import recent_decisions

    controller = _controller()
    backlog = controller.backlog()
    try:
        capacity, error = controller.backend.capacity(), None
    except CapacityError as exc:
        capacity, error = None, str(exc)
    recent = recent_decisions(controller.database_url, controller.backend.key, decisions)
    data = {
        "backend": controller.backend.key,
        "policy": asdict(controller.policy),
        "backlog": {**asdict(backlog), "total": backlog.total},
        "capacity": asdict(capacity) if capacity else None,
        "capacity_error": error,
        "decisions": recent,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    p = controller.policy
    click.echo(
        f"backend    {data['backend']}  (target {p.target_per_worker}/worker, [{p.min_capacity}, {p.max_capacity}], "
        f"cooldown {p.scale_in_cooldown_s:.0f}s)"
    )
    click.echo(
        f"backlog    {backlog.total}  (queue visible {backlog.visible}, in flight {backlog.in_flight}, "
        f"import inbox {backlog.inbox}, backfill partitions {backlog.pending_partitions})"
    )
    if capacity:
        click.echo(f"capacity   desired {capacity.desired}  running {capacity.running}  protected {capacity.protected}")
    else:
        click.secho(f"capacity   unavailable: {error}", fg="red")
    click.echo("last decisions:" if recent else "no decisions yet (the launcher and capacity_sensor make them)")
    for d in recent:
        flag = "" if d["applied"] else click.style(f"  NOT APPLIED: {d['error']}", fg="red")
        click.echo(
            f"  {d['decided_at']:%Y-%m-%d %H:%M:%S}  {d['trigger'][:40]:40}  backlog {d['backlog']:>6}  "
            f"{d['current_capacity']} -> {d['desired']}  {d['reason']}{flag}"
        )


@scaling.command("reconcile")
def scaling_reconcile() -> None:
    """Make one scaling decision now (what capacity_sensor does on its schedule)."""
    record = _controller().reconcile("cli")
    click.echo(json.dumps(record.as_dict(), indent=2))
    sys.exit(0 if record.applied else 1)


@scaling.command("stop-workers")
def scaling_stop_workers() -> None:
    """Stop every local worker process (they finish the object in hand first)."""
    from pipeline.scaling.backends import LocalWorkerPool
    from pipeline.scaling.config import ScalingConfig

    pool = LocalWorkerPool(ScalingConfig.from_env().workers_folder())
    count = len(pool.workers())
    pool.stop_all()
    click.echo(f"stopped {count} local worker(s)")


@cli.command()
@click.option("--objects", default=100, show_default=True, help="Enriched objects to import under faults.")
@click.option("--seed", default=1, show_default=True, help="Chooses the faults; the same seed, the same plan.")
@click.option("--rows", default=200, show_default=True, help="Rows per object.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def chaos(objects: int, seed: int, rows: int, as_json: bool) -> None:
    """Import N objects while injecting faults; check nothing is lost or doubled (exit 0 only then)."""
    from pipeline.chaos.run import run_chaos

    def say(message: str) -> None:
        if not as_json:
            click.echo(f"  {message}")

    summary = run_chaos(load_settings(), objects, seed, rows, progress=say)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"objects {summary['objects']}  rows expected {summary['rows_expected']}  loaded {summary['rows_loaded']}"
        )
        click.echo("faults injected:")
        for kind, count in summary["faults"].items():
            click.echo(f"  {kind:34} {count}")
        verdict = click.style("ok", fg="green") if summary["ok"] else click.style("VIOLATED", fg="red")
        click.echo(
            f"lost {summary['lost']}  duplicated {summary['duplicated']}  dead-lettered {summary['dead_lettered']}  "
            f"recovered {summary['recovered']}/{summary['fixed']}  {summary['seconds']}s  [{verdict}]"
        )
        if summary["lost_objects"] or summary["duplicated_objects"]:
            click.echo(f"lost: {summary['lost_objects']}\nduplicated: {summary['duplicated_objects']}")
        click.echo(f"logs of the importers: {summary['logs']}")
    sys.exit(0 if summary["ok"] else 1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """The customers' web application: reports, domains, sources, pipeline health (and /api/...)."""
    import uvicorn

    from pipeline.web.app import create_app

    settings = load_settings()
    click.echo(f"web application on http://{host}:{port}/  (sign in with `pipeline web-token --customer ID`)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


@cli.command("web-token")
@click.option("--customer", "customer_id", required=True, help="The customer to issue a token for.")
def web_token(customer_id: str) -> None:
    """Issue (or replace) a customer's API token for the web application; shown once."""
    from pipeline.web.tenants import issue_token

    try:
        click.echo(issue_token(load_settings().database_url, customer_id))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--customer") from None


@cli.command()
@click.option("--customer", "customer_id", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def report(customer_id: str, as_json: bool) -> None:
    """The overview figures of one customer, as the web application shows them."""
    from pipeline.warehouse.projections import refresh
    from pipeline.web.queries import Warehouse, overview

    settings = load_settings()
    refresh(settings.database_url)
    warehouse = Warehouse(settings.database_url, pool_size=1)
    try:
        with warehouse.tenant(customer_id) as conn:
            data = overview(conn, customer_id)
    finally:
        warehouse.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rate = f"{100 * data['dmarc_pass_rate']:.1f}%" if data["dmarc_pass_rate"] is not None else "-"
    click.echo(
        f"{customer_id}: {data['reports']} reports, {data['messages']} messages, DMARC pass {rate}, "
        f"{data['sources']} sources, {data['first_day'] or '-'} .. {data['last_day'] or '-'}"
    )
    for d in data["domains"]:
        dr = f"{100 * d['dmarc_pass_rate']:.1f}%" if d["dmarc_pass_rate"] is not None else "-"
        click.echo(f"  {d['domain']:40} {d['messages']:>10} messages  DMARC pass {dr}")


@cli.command()
@click.argument("action", type=click.Choice(["refresh", "rebuild", "status"]))
def projections(action: str) -> None:
    """Keep the web application's projections: refresh dirty slices, rebuild all, or show status."""
    from pipeline.warehouse import projections as proj

    url = load_settings().database_url
    if action == "status":
        click.echo(f"dirty slices waiting: {proj.dirty_slices(url)}")
        return
    result = (proj.refresh if action == "refresh" else proj.rebuild)(url)
    click.echo(
        f"{action}: {result.slices} slice(s), {result.domain_rows} domain row(s), {result.source_rows} source row(s)"
    )


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
    env = {
        **os.environ,
        **settings.process_env(),
        "DAGSTER_HOME": str(dagster_home()),
        "PIPELINE_HOME": str(pipeline_home()),
    }
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), *dagster_args]
    click.echo(f"DAGSTER_HOME={env['DAGSTER_HOME']} {' '.join(cmd)}")
    raise SystemExit(subprocess.call(cmd, env=env, cwd=REPO_ROOT))


def dagster_home() -> Path:
    """$PIPELINE_HOME/dagster holding the project's dagster.yaml (storage in PostgreSQL)."""
    from pipeline.local.dotenv import dagster_home as home_of

    return home_of(REPO_ROOT)


if __name__ == "__main__":
    main()
