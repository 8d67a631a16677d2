"""Where a tenant's alerts and digests go, and what a hostile report can make of them (issue #21,
medium 3, 4, 5, 6 and 8): webhook targets checked after DNS and connected to as checked, an
overall deadline, delivery isolated per tenant, a generic error for the tenant, alert floods
summarized, one digest address per tenant and failures isolated, CSV cells that never run,
windows counted from today."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import socket
import threading
import time

import psycopg
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from pipeline.enrich.synthetic import ENRICHED_ARROW_SCHEMA, parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import load_object
from pipeline.local.ports import free_port
from pipeline.warehouse.projections import refresh
from pipeline.web import alerts, digest, webhooks
from pipeline.web.app import create_app, csv_cell
from pipeline.web.tenants import check_address, configure_notifications, issue_token
from pipeline_tests.security import hostile
from pipeline_tests.support import new_customer, web_sign_in, webhook_receiver

TODAY = dt.datetime.now(dt.UTC).date()


def load_rows(settings, s3, customer: str, day: dt.date, changes: list[dict], name: str) -> None:
    """One enriched object of ``len(changes)`` synthetic rows, each updated with its changes,
    imported with the real loader."""
    rows = synthetic_enriched_table(len(changes), seed=3, customer_id=customer, day=day, report_id=name).to_pylist()
    for row, change in zip(rows, changes, strict=True):
        row.update(change)
    key = f"{settings.enriched_prefix}customer={customer}/dt={day}/{name}.parquet"
    body = parquet_bytes(pa.Table.from_pylist(rows, schema=ENRICHED_ARROW_SCHEMA))
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag))


def suspicious(ip: str, messages: int = 150) -> dict:
    return {
        "source_ip": ip,
        "message_count": messages,
        "service_name": None,
        "trust_score": 0.05,
        "policy_dkim": "fail",
        "policy_spf": "fail",
        "dkim_aligned": False,
        "spf_aligned": False,
        "dmarc_pass": False,
    }


# -- webhook targets (medium 5) ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hostile.WEBHOOK_TARGETS))
def test_webhook_targets_on_the_hosting_network_are_refused(name):
    with pytest.raises(webhooks.WebhookRefused):
        webhooks.check(hostile.WEBHOOK_TARGETS[name])


def test_a_name_resolving_to_a_private_address_is_refused_after_resolution():
    """A public-looking name whose DNS answer is internal (rebinding): checked after resolution."""

    def rebinding(host, port, type=0):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    with pytest.raises(webhooks.WebhookRefused, match="not public"):
        webhooks.check("https://hooks.customer.example/alert", resolve=rebinding)


def test_the_delivery_connects_to_the_address_that_was_checked(monkeypatch):
    """The name resolves once, to the checked address; the request goes there with the name as
    Host. (Private addresses allowed here: the receiver is on loopback.)"""
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
    answers = []

    def resolve_once(host, port, type=0):
        answers.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    with webhook_receiver(8700) as (url, received):
        port = int(url.rsplit(":", 1)[1])
        target = webhooks.check(f"http://hooks.customer.example:{port}/x?y=1", resolve=resolve_once)
        assert webhooks.post(target, b"{}", {"Content-Type": "application/json"}) == 204
    assert answers == ["hooks.customer.example"]  # resolved once, by the check
    assert [(headers["Host"], body) for headers, body in received] == [(f"hooks.customer.example:{port}", b"{}")]


class Drip:
    """A receiver that accepts and then answers one byte every ``every`` seconds, for ever: a
    per-read timeout never fires on it."""

    def __init__(self, every: float = 0.2):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.every, self.stop = self.sock.getsockname()[1], every, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        try:
            while not self.stop.is_set():
                conn.sendall(b"H")
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def test_one_delivery_has_an_overall_deadline(monkeypatch):
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
    drip = Drip()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            webhooks.post(webhooks.check(f"http://127.0.0.1:{drip.port}/slow"), b"{}", {}, deadline_s=1.0)
        assert time.monotonic() - started < 2.5
    finally:
        drip.close()


def _alerts_of(settings, customer: str, n: int) -> None:
    with psycopg.connect(settings.database_url) as conn:
        for i in range(n):
            conn.execute(
                "INSERT INTO alerts (customer_id, rule, occurrence, message) VALUES (%s, 'policy_changed', %s, 'x')",
                (customer, f"test/{i}"),
            )


def test_a_slow_receiver_delays_no_other_tenant_and_its_tenant_sees_a_generic_error(stack, monkeypatch):
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_TIMEOUT_S", "1.5")
    drip = Drip()
    closed = free_port(8790)  # nothing listens: connection refused
    slow_tenant, refused_tenant, good_tenant = new_customer(), new_customer(), new_customer()
    with webhook_receiver(8720) as (fast, received):
        for customer, url in (
            (slow_tenant, f"http://127.0.0.1:{drip.port}/hook"),
            (refused_tenant, f"http://127.0.0.1:{closed}/hook"),
            (good_tenant, f"{fast}/hook"),
        ):
            issue_token(stack.database_url, customer)
            configure_notifications(stack.database_url, customer, webhook_url=url)
            _alerts_of(stack, customer, 5)
        try:
            started = time.monotonic()
            outcome = alerts.deliver(stack.database_url)
            elapsed = time.monotonic() - started
        finally:
            drip.close()
    assert sum(1 for _, body in received if json.loads(body)["customer"] == good_tenant) == 5
    assert outcome["failed"] >= 2
    assert elapsed < 5 * 1.5  # not one deadline per alert of the slow tenant, one after another
    app = create_app(stack, secret="notify-test")
    try:
        for customer in (slow_tenant, refused_tenant):
            client = web_sign_in(TestClient(app), issue_token(stack.database_url, customer))
            shown = client.get("/api/alerts").json()["alerts"]
            errors = {a["last_error"] for a in shown if a["last_error"]}
            assert errors == {webhooks.GENERIC_FAILURE}, errors  # one attempt, a generic reason
            page = client.get("/alerts").text
            assert "refused" not in page.lower() and "timed out" not in page.lower() and "Errno" not in page
            assert sum(a["attempts"] for a in shown) == 1  # the rest wait for the next round
    finally:
        app.state.warehouse.close()


def test_the_app_refuses_a_webhook_on_the_hosting_network(stack):
    customer = new_customer()
    app = create_app(stack, secret="notify-test")
    try:
        client = web_sign_in(TestClient(app), issue_token(stack.database_url, customer))
        from pipeline_tests.support import csrf_of

        csrf = csrf_of(client.get("/alerts").text)
        for url in (hostile.WEBHOOK_TARGETS["metadata"], hostile.WEBHOOK_TARGETS["plain-http"]):
            page = client.post("/alerts/notify", data={"csrf": csrf, "webhook": url, "email": ""}).text
            assert "Not saved" in page
        with psycopg.connect(stack.database_url) as conn:
            stored = conn.execute("SELECT webhook_url FROM tenants WHERE customer_id = %s", (customer,)).fetchone()
        assert stored == (None,)
    finally:
        app.state.warehouse.close()


# -- alert floods (medium 6) ---------------------------------------------------------------------


def test_one_forged_report_with_2000_new_sources_fires_a_bounded_number_of_alerts(stack, clients, monkeypatch):
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
    customer = new_customer()
    issue_token(stack.database_url, customer)
    changes = [suspicious(f"198.18.{n // 250}.{n % 250 + 1}") for n in range(2000)]
    load_rows(stack, clients("s3"), customer, TODAY, changes, "flood")
    refresh(stack.database_url)
    with webhook_receiver(8740) as (url, received):
        configure_notifications(stack.database_url, customer, webhook_url=f"{url}/h")
        fired = [a for a in alerts.evaluate(stack.database_url, today=TODAY) if a["customer_id"] == customer]
        alerts.deliver(stack.database_url)
        alerts.deliver(stack.database_url)  # a second round sends nothing more
    assert len(fired) == alerts.MAX_NEW_PER_EVALUATION + 1
    mine = [json.loads(body) for _, body in received if json.loads(body)["customer"] == customer]
    assert len(mine) == alerts.MAX_NEW_PER_EVALUATION + 1
    [summary] = [r for r in mine if r["rule"] == "summary"]
    with psycopg.connect(stack.database_url) as conn:
        recorded = dict(
            conn.execute(
                "SELECT rule, count(*) FROM alerts WHERE customer_id = %s AND rule <> 'summary' GROUP BY rule",
                (customer,),
            ).fetchall()
        )
    assert recorded["new_unauthorized_source"] == 2000  # every occurrence is recorded (and listed), once
    assert summary["details"]["summarized"] == sum(recorded.values()) - alerts.MAX_NEW_PER_EVALUATION
    again = [a for a in alerts.evaluate(stack.database_url, today=TODAY) if a["customer_id"] == customer]
    assert again == []


# -- dates: windows from today (medium 3) ----------------------------------------------------------


def test_a_forged_far_future_day_silences_no_alert_and_is_not_the_digest_week(stack, clients):
    """Rows of 2099 (as loaded before the collector refused such reports) beside real ones."""
    customer = new_customer()
    issue_token(stack.database_url, customer)
    s3 = clients("s3")
    load_rows(stack, s3, customer, TODAY - dt.timedelta(days=1), [suspicious("198.19.0.1", 500)], "real")
    load_rows(stack, s3, customer, dt.date(2099, 1, 1), [suspicious("198.19.0.2", 500)], "forged")
    refresh(stack.database_url)
    fired = [a for a in alerts.evaluate(stack.database_url) if a["customer_id"] == customer]
    sources = {a["message"].split()[3] for a in fired if a["rule"] == "new_unauthorized_source"}
    assert sources == {"198.19.0.1"}  # the real new source alerts; the forged day neither alerts nor hides it
    with psycopg.connect(stack.database_url, row_factory=psycopg.rows.dict_row) as conn:
        data = digest.content(conn, customer)
    assert data["period"].endswith(str(TODAY)) and data["messages"] == 500
    assert "2099" not in json.dumps(data, default=str)


# -- digests (medium 8) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example, c@d.example",
        "Name <a@b.example>",
        "a@b.example\r\nBcc: c@d.example",
        "a b@c.example",
        "@b.example",
        "a@",
        "a@localhost",
        "a@b..example",
        "a..b@c.example",
        "",
    ],
)
def test_a_digest_goes_to_exactly_one_valid_address(address):
    with pytest.raises(ValueError):
        check_address(address)


def test_one_tenants_bad_address_or_refused_digest_stops_no_other(stack, monkeypatch):
    from aiosmtpd.controller import Controller

    inbox = []

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
            if address.startswith("refused@"):
                return "550 mailbox unavailable"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            inbox.append(envelope.rcpt_tos)
            return "250 OK"

    port = free_port(8960)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("PIPELINE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("PIPELINE_SMTP_PORT", str(port))
    bad, refused, good = sorted(new_customer() for _ in range(3))  # in the order the digest visits them
    try:
        for customer in (bad, refused, good):
            issue_token(stack.database_url, customer)
        with psycopg.connect(stack.database_url) as conn:  # as stored before addresses were checked
            conn.execute(
                "UPDATE tenants SET digest_email = %s WHERE customer_id = %s", ("x@y.example, z@w.example", bad)
            )
        configure_notifications(stack.database_url, refused, email=f"refused@{refused}.example")
        configure_notifications(stack.database_url, good, email=f"dmarc@{good}.example")
        outcome = digest.send_each(stack.database_url)
    finally:
        controller.stop()
    mine = {f["customer"]: f["error"] for f in outcome["failed"]}
    assert "is not one e-mail address" in mine[bad] and "refused the digest" in mine[refused]
    assert good in [s["customer"] for s in outcome["sent"]] and [f"dmarc@{good}.example"] in inbox


# -- CSV (medium 4) ------------------------------------------------------------------------------

FORMULAS = [v for k, v in hostile.FIELD_PAYLOADS.items() if k.startswith("formula")]


def test_csv_cells_never_begin_a_formula():
    for payload in FORMULAS:
        assert csv_cell(payload).startswith("'")
    assert csv_cell(-3) == -3 and csv_cell("plain") == "plain" and csv_cell({"a": "=1"}) == '{"a": "=1"}'


def test_every_export_of_a_hostile_report_is_inert(stack, clients):
    customer = new_customer()
    token = issue_token(stack.database_url, customer)
    changes = []
    for n, payload in enumerate(FORMULAS * 2):
        changes.append(
            {
                **suspicious(f"198.20.0.{n + 1}"),
                "report_org": payload,
                "report_id": payload,
                "as_org": payload,
                "service_name": payload,
                "policy_domain": payload,
                "header_from": payload,
                "dkim_domain": payload,
                "dkim_selector": payload,
                "spf_domain": payload,
                "country": payload,
                "report_email": payload,
            }
        )
    load_rows(stack, clients("s3"), customer, TODAY, changes, "formulas")
    refresh(stack.database_url)
    alerts.evaluate(stack.database_url)
    app = create_app(stack, secret="csv-test")
    try:
        client = web_sign_in(TestClient(app), token)
        views = ["sources", "domains", "services", "readiness", "reports", "reporters", "countries", "alerts"]
        views += ["disagreements"]
        cells = 0
        for view in views + ["dkim?ip=198.20.0.1", "spf?ip=198.20.0.1"]:
            path, _, query = view.partition("?")
            response = client.get(f"/api/export/{path}.csv" + (f"?{query}" if query else ""))
            assert response.status_code == 200, view
            for row in csv.reader(io.StringIO(response.text)):
                for cell in row:
                    cells += 1
                    assert not cell.startswith(("=", "+", "@", "\t", "\r")), (view, cell)
                    assert not (cell.startswith("-") and not cell.lstrip("-").replace(".", "").isdigit()), (view, cell)
        assert cells > 100
    finally:
        app.state.warehouse.close()
