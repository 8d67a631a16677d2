"""`pipeline demo`: the whole flow on the local stack, and its headline figures."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings


@cli.command()
@click.option(
    "--reports",
    "reports_dir",
    type=click.Path(exists=True, path_type=Path),
    help="Collect these report files instead of generating synthetic ones (needs --customer).",
)
@click.option(
    "--maildir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Collect the messages of this Maildir (the rua mailbox; needs --customer): archived or invalid after.",
)
@click.option("--customer", "customer_id", help="The customer of --reports or --maildir.")
@click.option("--customers", default=3, show_default=True, help="Synthetic customers.")
@click.option("--reports-per-customer", default=8, show_default=True, help="Synthetic reports per customer.")
@click.option("--seed", default=42, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Show every log line (Dagster, Spark, the stages) as it comes.")
def demo(reports_dir, maildir, customer_id, customers, reports_per_customer, seed, verbose) -> None:
    """Run the whole pipeline on the local stack and show the result."""
    from pipeline.demo import headlines, logs_to_file, run_demo
    from pipeline.settings import pipeline_home

    settings = load_settings()
    log_file = pipeline_home() / "demo" / "demo.log"
    click.echo("Pipeline demo on the local stack" + ("" if verbose else f" (logs: {log_file}; -v shows them):"))
    with logs_to_file(None if verbose else log_file) as terminal:
        result = run_demo(
            settings, reports_dir, customer_id, customers, reports_per_customer, seed, echo=terminal, maildir=maildir
        )
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
    lines = headlines(settings, list(result.verify))
    if lines:
        click.echo("")
        click.echo("Headline figures, as the web application shows them:")
        for line in lines:
            click.echo(line)
    click.echo("")
    click.echo(
        "Look around: `pipeline dev` (Dagster UI, http://127.0.0.1:3000), `pipeline verify`, `pipeline import-status`."
    )
    sys.exit(0 if result.ok else 1)
