"""The weekly digest: one HTML e-mail per customer (volumes, the pass rate trend, new sources,
policy readiness, the week's alerts), sent over SMTP (PIPELINE_SMTP_*), read as the tenant."""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
from email.message import EmailMessage
from pathlib import Path

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pipeline import config
from pipeline.web import alerts, dmarc
from pipeline.web.queries import Warehouse
from pipeline.web.tenants import check_address

log = logging.getLogger("pipeline.digest")
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
WEEK = 7


class DigestError(RuntimeError):
    pass


def content(conn, customer_id: str, today: dt.date | None = None) -> dict:
    """What one customer's digest says, over the week that ends today (not the newest day a
    report claims: a forged far-future day would otherwise be the digest's week)."""
    last = today or dt.datetime.now(dt.UTC).date()
    days = conn.execute(
        """SELECT day, sum(messages) AS messages, sum(dmarc_pass) AS dmarc_pass
           FROM daily_domain_compliance WHERE customer_id = %s AND day > %s AND day <= %s
           GROUP BY day ORDER BY day""",
        (customer_id, last - dt.timedelta(days=2 * WEEK), last),
    ).fetchall()
    week = [d for d in days if d["day"] > last - dt.timedelta(days=WEEK)]
    before = [d for d in days if d["day"] <= last - dt.timedelta(days=WEEK)]

    def rate(rows):
        messages = sum(int(r["messages"]) for r in rows)
        return round(sum(int(r["dmarc_pass"]) for r in rows) / messages, 4) if messages else None

    new_sources = conn.execute(
        """SELECT source_ip, service, classification, messages, first_day FROM source_summary
           WHERE customer_id = %s AND first_day > %s AND first_day <= %s ORDER BY messages DESC, source_ip LIMIT 10""",
        (customer_id, last - dt.timedelta(days=WEEK), last),
    ).fetchall()
    fired = [
        a
        for a in alerts.recent(conn, customer_id, 50)
        if a["fired_at"] >= (dt.datetime.now(dt.UTC) - dt.timedelta(days=WEEK)).isoformat()
    ]
    return {
        "customer": customer_id,
        "period": f"{last - dt.timedelta(days=WEEK - 1)} to {last}" if week else None,
        "messages": sum(int(d["messages"]) for d in week),
        "pass_rate": rate(week),
        "pass_rate_before": rate(before),
        "trend": [{"day": d["day"].isoformat(), "messages": int(d["messages"]), "pass_rate": rate([d])} for d in week],
        "new_sources": [
            {**s, "first_day": s["first_day"].isoformat(), "messages": int(s["messages"])} for s in new_sources
        ],
        "readiness": dmarc.readiness(conn, customer_id),
        "alerts": fired,
    }


def render(data: dict) -> tuple[str, str, str]:
    """(subject, plain text, HTML)."""
    rate = f"{100 * data['pass_rate']:.1f}%" if data["pass_rate"] is not None else "no mail"
    subject = f"DMARC weekly digest for {data['customer']}: {data['messages']} messages, {rate} pass"
    lines = [subject, f"Period: {data['period'] or 'no reports this week'}"]
    for day in data["trend"]:
        day_rate = f"{100 * day['pass_rate']:.1f}%" if day["pass_rate"] is not None else "-"
        lines.append(f"  {day['day']}: {day['messages']} messages, {day_rate} pass")
    lines.append(f"New sources: {len(data['new_sources'])}")
    lines += [
        f"  {s['source_ip']} ({s['service']}, {s['classification']}): {s['messages']}" for s in data["new_sources"]
    ]
    for r in data["readiness"]:
        lines.append(
            f"Readiness {r['domain']}: p={r['current_policy']} -> {r['next_policy'] or '-'}: "
            f"{'ready' if r['ready'] else 'not yet'}"
        )
    html = TEMPLATES.get_template("digest.html").render(data=data, subject=subject)
    return subject, "\n".join(lines) + "\n", html


def send(database_url: str, customer_id: str, to: str, today: dt.date | None = None) -> dict:
    host = config.get("PIPELINE_SMTP_HOST")
    if not host:
        raise DigestError("No SMTP server is set: set PIPELINE_SMTP_HOST (and PIPELINE_SMTP_PORT) to send digests.")
    try:
        check_address(to)
    except ValueError as exc:
        raise DigestError(f"{customer_id}: the digest address {exc}; set it again in the app") from None
    warehouse = Warehouse(database_url, pool_size=1)
    try:
        with warehouse.tenant(customer_id) as conn:
            data = content(conn, customer_id, today)
    finally:
        warehouse.close()
    subject, text, html = render(data)
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = subject, config.get("PIPELINE_SMTP_FROM"), to
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    try:
        with smtplib.SMTP(host, int(config.get("PIPELINE_SMTP_PORT")), timeout=30) as smtp:
            if config.get("PIPELINE_SMTP_STARTTLS"):
                smtp.starttls()
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DigestError(
            f"The SMTP server {host}:{config.get('PIPELINE_SMTP_PORT')} refused the digest for "
            f"{customer_id}: {exc}. Check PIPELINE_SMTP_HOST / PIPELINE_SMTP_PORT."
        ) from None
    log.info("digest sent customer=%s to=%s messages=%s", customer_id, to, data["messages"])
    return {"customer": customer_id, "to": to, "subject": subject}


def send_all(
    database_url: str, customer_id: str | None = None, to: str | None = None, today: dt.date | None = None
) -> list[dict]:
    """Send each tenant's digest; one tenant's bad address or an SMTP refusal of its digest is
    that tenant's failure (logged, listed in ``failed``), and every later tenant still gets its
    own. With one ``customer_id`` its failure raises, as a command should."""
    return send_each(database_url, customer_id, to, today)["sent"]


def send_each(
    database_url: str, customer_id: str | None = None, to: str | None = None, today: dt.date | None = None
) -> dict:
    if not config.get("PIPELINE_SMTP_HOST"):
        raise DigestError("No SMTP server is set: set PIPELINE_SMTP_HOST (and PIPELINE_SMTP_PORT) to send digests.")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT customer_id, digest_email FROM tenants WHERE revoked_at IS NULL "
            "AND (%(c)s::text IS NULL OR customer_id = %(c)s) ORDER BY customer_id",
            {"c": customer_id},
        ).fetchall()
    if customer_id and not rows:
        raise DigestError(f"{customer_id!r} has no web access: run `pipeline web-token --customer {customer_id}`")
    sent, failed = [], []
    for customer, email in rows:
        address = to or email
        if not address:
            if customer_id:
                raise DigestError(
                    f"{customer} has no digest address: `pipeline notify --customer {customer} --email ADDR`"
                )
            continue
        try:
            sent.append(send(database_url, customer, address, today))
        except DigestError as exc:
            if customer_id:
                raise
            failed.append({"customer": customer, "error": str(exc)})
            log.warning("digest failed customer=%s error=%s (the other customers' digests go on)", customer, exc)
    return {"sent": sent, "failed": failed}
