"""`pipeline bench import|flood|web|enrich|trickle|history`: the benchmark commands (figures in BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys

import click

from pipeline.cli.app import cli, stdout_to_stderr
from pipeline.settings import load_settings


@cli.group()
def bench() -> None:
    """Benchmarks: figures measured in one run against baselines, printed as ratios."""


def _print_figures(figures: dict, targets: dict) -> None:
    """One figure a line, each with its target and whether this run met it."""
    width = max(len(name) for name in figures) + 2
    for name, value in figures.items():
        if name == "targets_met":
            continue
        verdict = ""
        if name in targets:
            op, target = targets[name]
            met = figures["targets_met"].get(name)
            verdict = click.style(
                f"  target {op} {target}: {'met' if met else 'NOT met'}", fg="green" if met else "red"
            )
        click.echo(f"{name:{width}} {value}{verdict}")


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
    _print_figures(figures, bench_importer.TARGETS)


@bench.command("flood")
@click.option("--workloads", default="w5,w6,w7", show_default=True, help="Which of W5, W6, W7 to run.")
@click.option("--scale", default=1.0, show_default=True, help="Fraction of the reports and records (quick runs: 0.1).")
@click.option("--master", default="local[2]", show_default=True, help="Spark master of the enrichment stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_flood(workloads: str, scale: float, master: str, as_json: bool) -> None:
    """The whole flow under a flood: collect, one Spark run, import runs, projections, stage by stage."""
    from pipeline.bench import flood

    with stdout_to_stderr():
        figures = flood.run(load_settings(), workloads, scale, master, progress=sys.stderr.isatty() or not as_json)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    _print_figures(figures, flood.TARGETS)


@bench.command("web")
@click.option("--events", default=1_000_000, show_default=True, help="Telemetry events in the scratch warehouse.")
@click.option("--customers", default=5, show_default=True)
@click.option("--clients", default=50, show_default=True, help="Concurrent clients.")
@click.option("--rounds", default=6, show_default=True, help="Rounds of every page and API route per client.")
@click.option("--days", default=30, show_default=True, help="Days of history the events spread over (400: 13 months).")
@click.option(
    "--versus",
    "baseline",
    type=click.IntRange(min=1),
    default=None,
    help="Also run at this many events, the same shape, and print the p95 ratio (1000000: web_p95_vs_1m).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_web(
    events: int, customers: int, clients: int, rounds: int, days: int, baseline: int | None, as_json: bool
) -> None:
    """p50/p95 page and API latency under concurrent clients, beside the SQL alone; with --versus,
    the same at a smaller history and the ratio."""
    from pipeline.bench import web as bench_web_module

    shape = {"customers": customers, "clients": clients, "rounds": rounds, "days": days}
    with stdout_to_stderr():
        if baseline is None:
            figures = bench_web_module.run(load_settings(), events, progress=not as_json, **shape)
        else:
            figures = bench_web_module.versus(load_settings(), events, baseline, progress=not as_json, **shape)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    _print_figures(figures, bench_web_module.VERSUS_TARGETS)


@bench.command("enrich")
@click.option("--customers", default=10, show_default=True)
@click.option("--reports", default=40, show_default=True, help="Reports per customer.")
@click.option("--master", default="local[2]", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_enrich(customers: int, reports: int, master: str, as_json: bool) -> None:
    """Spark rows/s and fixed seconds per run, beside one-process pyarrow enrichment of the same data."""
    from pipeline.bench import enrich as bench_enrich_module

    with stdout_to_stderr():
        figures = bench_enrich_module.run(load_settings(), customers, reports, master)
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        click.echo(f"{name:28} {value}")


@bench.command("trickle")
@click.option("--customers", default=20, show_default=True)
@click.option("--reports", default=40, show_default=True, help="Reports per customer, over two days.")
@click.option("--wave-size", default=20, show_default=True, help="Reports per wave.")
@click.option("--held", default=100_000, show_default=True, help="Raw objects held for raw_tick_growth (0: skip).")
@click.option(
    "--page-reports", default=6, show_default=True, help="Reports timed to the page by a real daemon (0: skip)."
)
@click.option(
    "--production-customers", default=10_000, show_default=True, help="Customers of the partition simulation's load."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_trickle(
    customers: int, reports: int, wave_size: int, held: int, page_reports: int, production_customers: int, as_json: bool
) -> None:
    """W8: reports trickling in, wave after wave, through the real path; amplification, wave cost
    growth, raw tick growth, partitions at production load (simulated), report to page."""
    from pipeline.bench import trickle

    with stdout_to_stderr():
        figures = trickle.run(
            load_settings(),
            customers,
            reports,
            wave_size,
            held,
            page_reports,
            production_customers,
            progress=sys.stderr.isatty() or not as_json,
        )
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=str))
        return
    _print_figures(figures, trickle.TARGETS)


@bench.command("history")
@click.option("--days", default=400, show_default=True, help="Days of one customer's history (13 months).")
@click.option("--recurring", default=2_000, show_default=True, help="Sources seen every day.")
@click.option("--tail", default=3_000, show_default=True, help="Sources seen on one day only, each day.")
@click.option("--repeats", default=3, show_default=True, help="New days timed on each warehouse.")
@click.option("--customers", default=10, show_default=True, help="Customers of that history (10: 20,000,000 events).")
@click.option("--import-objects", default=100, show_default=True, help="Objects of W1's workload imported on each.")
@click.option(
    "--migration",
    "migration_events",
    type=click.IntRange(min=10),
    default=None,
    help="Only time the upgrade from before partitioning (migration 0019) of a warehouse of this many events.",
)
@click.option(
    "--drill",
    "drill_events",
    type=click.IntRange(min=1),
    default=None,
    help="Only the disaster-recovery drill: this many events rebuilt from S3 into an empty warehouse.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def bench_history(
    days: int,
    recurring: int,
    tail: int,
    repeats: int,
    customers: int,
    import_objects: int,
    migration_events: int | None,
    drill_events: int | None,
    as_json: bool,
) -> None:
    """W9: a year of history (20,000,000 events): the projections' refresh after one new day and
    W1's import on it against an empty warehouse (refresh_vs_empty, import_rate_vs_empty),
    retention, bytes per event; or, with --migration N, the upgrade to the partitioned table; or,
    with --drill N, the warehouse rebuilt from S3 (rebuild_events_per_s)."""
    from pipeline.bench import history

    def say(message: str) -> None:
        click.echo(message, err=True)

    with stdout_to_stderr():
        if migration_events is not None:
            figures = history.migration(load_settings(), migration_events, say)
        elif drill_events is not None:
            figures = history.drill(load_settings(), drill_events, say, rows_per_object=min(20_000, drill_events))
        else:
            figures = history.run(
                load_settings(), days, recurring, tail, repeats, say, customers=customers, import_objects=import_objects
            )
    if as_json:
        click.echo(json.dumps(figures, indent=2, default=str))
        return
    _print_figures(figures, history.TARGETS)
