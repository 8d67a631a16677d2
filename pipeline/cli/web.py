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
@click.option("--revoke", is_flag=True, help="Revoke the customer's token instead: it stops working, sessions end.")
def web_token(customer_id: str, revoke: bool) -> None:
    """Issue (or rotate) a customer's API token for the web application; shown once. Rotating or
    revoking ends every session signed in with the old token."""
    from pipeline.web.tenants import issue_token, revoke_token

    url = load_settings().database_url
    if revoke:
        if not revoke_token(url, customer_id):
            raise click.ClickException(f"{customer_id!r} has no token to revoke")
        click.echo(f"{customer_id}: token revoked, its sessions ended", err=True)
        return
    try:
        click.echo(issue_token(url, customer_id))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--customer") from None


@cli.command()
@click.option("--customer", "customer_id", required=True)
@click.option("--webhook", default=None, help="URL that alerts are POSTed to (signed); '' removes it.")
@click.option("--email", default=None, help="Where the weekly digest goes; '' removes it.")
def notify(customer_id: str, webhook: str | None, email: str | None) -> None:
    """Where a customer's alerts (webhook) and weekly digest (e-mail) go. A new webhook gets a new
    signing secret, printed once: the receiver checks X-Pipeline-Signature with it."""
    from pipeline.web.tenants import configure_notifications

    try:
        secret = configure_notifications(load_settings().database_url, customer_id, webhook, email)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if secret:
        click.echo(secret)


@cli.group()
def alerts() -> None:
    """Alert rules per customer, and their evaluation (also run after every projection refresh)."""


@alerts.command("evaluate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def alerts_evaluate(as_json: bool) -> None:
    """Refresh the projections, fire new alerts (once per occurrence), deliver webhooks."""
    from pipeline.warehouse.projections import refresh
    from pipeline.web import alerts as rules

    url = load_settings().database_url
    refresh(url)
    fired = rules.evaluate(url)
    delivery = rules.deliver(url)
    if as_json:
        click.echo(json.dumps({"fired": fired, **delivery}))
        return
    for alert in fired:
        click.echo(f"{alert['customer_id']}: {alert['rule']}: {alert['message']}")
    click.echo(f"{len(fired)} alert(s) fired, {delivery['delivered']} delivered, {delivery['failed']} failed")


@alerts.command("rule")
@click.option("--customer", "customer_id", required=True)
@click.argument("rule")
@click.option("--threshold", type=float, default=None, help="The rule's threshold (see `pipeline alerts rules`).")
@click.option("--off", is_flag=True, help="Turn the rule off for this customer.")
def alerts_rule(customer_id: str, rule: str, threshold: float | None, off: bool) -> None:
    """Set one of a customer's alert rules (recorded as a customer event)."""
    from pipeline.web import alerts as rules

    try:
        rules.set_rule(load_settings().database_url, customer_id, rule, threshold, enabled=not off)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RULE") from None


@alerts.command("rules")
def alerts_rules() -> None:
    """The alert rules and their defaults."""
    from pipeline.web.alerts import RULES

    for rule in RULES.values():
        click.echo(f"{rule.name:26} default {rule.default:<6g} {rule.doc}")


@cli.command()
@click.option("--customer", "customer_id", required=True)
@click.argument("service")
@click.option("--not-mine", is_flag=True, help="Withdraw an earlier mark.")
def mark(customer_id: str, service: str, not_mine: bool) -> None:
    """Mark a sending service as the customer's own (its sources become authorized)."""
    from pipeline.warehouse.projections import refresh
    from pipeline.web.dmarc import mark_service

    url = load_settings().database_url
    mark_service(url, customer_id, service, mine=not not_mine)
    refresh(url)


@cli.command()
@click.option("--customer", "customer_id", default=None, help="One customer (default: every customer with an address).")
@click.option("--to", "to", default=None, help="Send to this address instead of the customer's own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def digest(customer_id: str | None, to: str | None, as_json: bool) -> None:
    """Send the weekly digest e-mail (volumes, pass rate trend, new sources, readiness) over SMTP."""
    from pipeline.web import digest as weekly

    try:
        sent = weekly.send_all(load_settings().database_url, customer_id, to)
    except weekly.DigestError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"sent": sent}))
    else:
        for item in sent:
            click.echo(f"{item['customer']}: digest sent to {item['to']}")


@cli.command()
@click.option("--customer", "customer_id", required=True)
@click.option("--window", "preset", default=None, help="7d, 30d, 90d (the last days, today included) or all.")
@click.option("--from", "start", default=None, metavar="YYYY-MM-DD", help="The window's first day.")
@click.option("--to", "end", default=None, metavar="YYYY-MM-DD", help="The window's last day.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def report(customer_id: str, preset: str | None, start: str | None, end: str | None, as_json: bool) -> None:
    """The overview figures of one customer over a window (all time by default), as the web
    application shows them; a bounded window beside the one before it."""
    from pipeline.warehouse.projections import refresh
    from pipeline.web.dmarc import readiness, reporters, services
    from pipeline.web.queries import Warehouse, overview
    from pipeline.web.window import Window, WindowError

    try:
        window = Window.parse({"window": preset, "from": start, "to": end})
    except WindowError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = load_settings()
    refresh(settings.database_url)
    warehouse = Warehouse(settings.database_url, pool_size=1)
    try:
        with warehouse.tenant(customer_id) as conn:
            data = overview(conn, customer_id, window)
            data["services"] = [
                {k: s[k] for k in ("name", "classification", "messages", "pass_rate", "aligned_rate", "marked")}
                for s in services(conn, customer_id)
            ]
            data["readiness"] = readiness(conn, customer_id)
            data["reporters"] = [  # over the window, as the reporters page shows them
                {k: r[k] for k in ("report_org", "reports", "messages", "pass_rate", "last_report")}
                for r in reporters(conn, customer_id, window)
            ]
    finally:
        warehouse.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rate = f"{100 * data['dmarc_pass_rate']:.1f}%" if data["dmarc_pass_rate"] is not None else "-"
    click.echo(
        f"{customer_id} ({window.label}): {data['reports']} reports, {data['messages']} messages, "
        f"DMARC pass {rate}, {data['sources']} sources, {data['first_day'] or '-'} .. {data['last_day'] or '-'}"
    )
    if data["previous"]:
        change = data["change"]
        messages = f"{change['messages_pct']:+.1f}%" if change["messages_pct"] is not None else "new"
        points = f"{change['pass_rate_points']:+.1f} points" if change["pass_rate_points"] is not None else "-"
        before = data["previous"]["window"]
        click.echo(f"  vs {before['from']} .. {before['to']}: messages {messages}, DMARC pass {points}")
    for d in data["domains"]:
        dr = f"{100 * d['dmarc_pass_rate']:.1f}%" if d["dmarc_pass_rate"] is not None else "-"
        click.echo(f"  {d['domain']:40} {d['messages']:>10} messages  DMARC pass {dr}")
    click.echo(
        f"  receivers passed {data['dmarc_pass_messages']} messages; "
        f"recomputed alignment {data['aligned_pass_messages']}; "
        f"{data['verdict_disagreements']} disagree (`/disagreements` lists them)"
    )
    for s in data["services"][:10]:
        pr = f"{100 * s['pass_rate']:.1f}%" if s["pass_rate"] is not None else "-"
        click.echo(f"  service {s['name']:32} {s['classification']:12} {s['messages']:>10} messages  pass {pr}")
    for r in data["reporters"][:10]:
        pr = f"{100 * r['pass_rate']:.1f}%" if r["pass_rate"] is not None else "-"
        click.echo(f"  reporter {r['report_org']:31} {r['reports']:>5} reports {r['messages']:>10} messages  pass {pr}")
    for r in data["readiness"]:
        step = f"p={r['next_policy']} pct={r['next_pct']}" if r["next_policy"] else "at the strictest policy"
        state = "ready" if r["ready"] else f"blocked: {'; '.join(b['detail'] for b in r['blockers'])}"
        click.echo(f"  readiness {r['domain']}: p={r['current_policy']} -> {step}: {state}")


@cli.command()
@click.argument("action", type=click.Choice(["refresh", "rebuild", "status"]))
@click.option(
    "--customer",
    "customers",
    multiple=True,
    help="rebuild: only this customer's projections (repeatable); the others are not read or written.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="rebuild: customers rebuilt at once, each in its own session (a large warehouse's recovery).",
)
def projections(action: str, customers: tuple[str, ...], jobs: int) -> None:
    """Keep the web application's projections: refresh dirty slices, rebuild all (or some
    customers'), or show status."""
    from pipeline.warehouse import projections as proj

    url = load_settings().database_url
    if (customers or jobs > 1) and action != "rebuild":
        raise click.UsageError("--customer and --jobs go with `rebuild` only (a refresh takes every dirty slice).")
    if action == "status":
        click.echo(f"dirty slices waiting: {proj.dirty_slices(url)}")
        return
    if action == "refresh":
        result = proj.refresh(url)
    elif jobs > 1:
        result = proj.rebuild_in_parallel(url, jobs, customers or None)
    else:
        result = proj.rebuild(url, customers or None)
    click.echo(
        f"{action}: {result.slices} slice(s), {result.domain_rows} domain row(s), {result.source_rows} source row(s)"
    )
