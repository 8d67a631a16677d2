"""`pipeline chaos`: the pipeline under injected faults (RELIABILITY.md)."""

from __future__ import annotations

import json
import sys

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings


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
