"""The customers' side: `pipeline web`, `web-token`, `report`, `projections`."""

from __future__ import annotations

import json

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings


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
