"""The customers' DMARC product over a crafted customer whose answers are known by construction:
the receiver's verdict vs recomputed alignment, services and their classification (and the
customer marking one as theirs), policy readiness, alerts to a real local webhook receiver, the
weekly digest through a real local SMTP server, detail tables and CSV export under row-level
security, keyset paging, and sessions that end."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from pipeline.enrich.synthetic import ENRICHED_ARROW_SCHEMA, parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import load_object
from pipeline.local.ports import free_port
from pipeline.warehouse.projections import rebuild, refresh
from pipeline.web import alerts, digest
from pipeline.web.app import create_app
from pipeline.web.tenants import configure_notifications, issue_token, revoke_token
from pipeline_tests.support import csrf_of, new_customer, smtp_server, web_sign_in

START = dt.date(2026, 9, 1)
DAYS = 20
LAST = START + dt.timedelta(days=DAYS - 1)
FORWARDED = json.dumps([{"type": "forwarded", "comment": None}])


def _record(ip, service, org, messages, receiver_pass, aligned, trust, override=None):
    return {
        "source_ip": ip,
        "service_name": service,
        "as_org": org,
        "message_count": messages,
        "policy_dkim": "pass" if receiver_pass else "fail",
        "policy_spf": "pass" if receiver_pass else "fail",
        "dkim_aligned": aligned,
        "spf_aligned": aligned,
        "dmarc_pass": aligned,
        "dkim_result": "pass" if aligned else "fail",
        "spf_result": "pass" if aligned else "fail",
        "trust_score": trust,
        "override_reasons": override,
        "disposition": "none" if receiver_pass or override else "quarantine",
    }


def _shop_day(n: int) -> list[dict]:
    """shop.example on day n (0-based): p=quarantine, five kinds of sender."""
    records = [
        _record("203.0.113.1", "Google", "Google", 100, True, True, 0.9),
        _record("203.0.113.2", "Amazon SES", "Amazon", 50, True, True, 0.8),
        _record("203.0.113.2", "Amazon SES", "Amazon", 10, False, False, 0.8),  # SES 83% aligned: a blocker
        _record("203.0.113.3", "Microsoft", "Microsoft", 20, False, False, 0.8),  # unauthorized
        _record("203.0.113.4", None, "Hetzner", 15, False, False, 0.1),  # suspicious: unknown, low trust
        _record("203.0.113.5", "Yahoo", "Yahoo", 12, False, False, 0.5, FORWARDED),  # forwarder
    ]
    if n == 0:  # the receiver failed it, the recomputed alignment passes it: a disagreement
        records.append(_record("203.0.113.1", "Google", "Google", 7, False, True, 0.9))
    if n >= 15:  # an authorized service first seen less than 14 days ago: a blocker
        records.append(_record("203.0.113.6", "SendGrid", "SendGrid", 30, True, True, 0.9))
    if n >= 16:  # a new unauthorized source above the alert threshold (4 x 60 messages)
        records.append(_record("203.0.113.7", "Microsoft", "Microsoft", 60, False, False, 0.8))
    return records


def _objects() -> list[tuple[str, dt.date, str, int, list[dict]]]:
    """(domain, day, policy, pct, records) of every report."""
    out = []
    for n in range(DAYS):
        day = START + dt.timedelta(days=n)
        out.append(("shop.example", day, "quarantine", 100, _shop_day(n)))
        policy, pct = ("none", 100) if n < 18 else ("quarantine", 25)  # a policy change on day 18
        out.append(
            ("news.example", day, policy, pct, [_record("198.51.100.1", "Google", "Google", 100, True, True, 0.9)])
        )
        if n < 3:  # reports for tiny.example stopped after three days
            out.append(
                ("tiny.example", day, "reject", 100, [_record("198.51.100.2", "Google", "Google", 5, True, True, 0.9)])
            )
    return out


def _load(settings, s3, customer: str) -> list[dict]:
    """Import every crafted report with the real loader; return all records (the truth)."""
    everything = []
    for domain, day, policy, pct, records in _objects():
        report_id = f"{customer}-{domain}-{day}"
        base = synthetic_enriched_table(len(records), seed=1, customer_id=customer, day=day, report_id=report_id)
        rows = base.to_pylist()
        for row, record in zip(rows, records, strict=True):
            row.update(record, policy_domain=domain, header_from=domain, policy_p=policy, policy_pct=pct)
        everything += rows
        _import(settings, s3, customer, day, domain, rows)
    refresh(settings.database_url)
    return everything


def _import(settings, s3, customer: str, day: dt.date, name: str, rows: list[dict]) -> None:
    """One enriched object of ``rows`` for the customer's day, loaded by the real loader."""
    key = f"{settings.enriched_prefix}customer={customer}/dt={day}/{name}.parquet"
    body = parquet_bytes(pa.Table.from_pylist(rows, schema=ENRICHED_ARROW_SCHEMA))
    etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag))


@pytest.fixture(scope="module")
def shop(stack, clients):
    customer, other = new_customer(), new_customer()
    records = _load(stack, clients("s3"), customer)
    _load(stack, clients("s3"), other)
    app = create_app(stack, secret="dmarc-test")
    yield {
        "customer": customer,
        "other": other,
        "records": records,
        "token": issue_token(stack.database_url, customer),
        "other_token": issue_token(stack.database_url, other),
        "app": app,
    }
    app.state.warehouse.close()


def _client(shop, token=None):
    return web_sign_in(TestClient(shop["app"]), token or shop["token"])


def _run(*args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cli(*args) -> dict:
    return json.loads(_run(*args))


def test_figures_are_the_receivers_verdict_with_the_recomputed_alignment_beside_it(shop):
    records = shop["records"]
    receiver = sum(r["message_count"] for r in records if r["policy_dkim"] == "pass" or r["policy_spf"] == "pass")
    aligned = sum(r["message_count"] for r in records if r["dmarc_pass"])
    disagree = [r for r in records if (r["policy_dkim"] == "pass") != r["dmarc_pass"]]
    assert receiver != aligned and disagree  # the data makes the difference visible

    report = _cli("report", "--customer", shop["customer"], "--json")
    assert report["dmarc_pass_messages"] == receiver
    assert report["aligned_pass_messages"] == aligned
    assert report["verdict_disagreements"] == sum(r["message_count"] for r in disagree) == 7
    assert report["dmarc_pass_rate"] == round(receiver / report["messages"], 4)

    client = _client(shop)
    listed = client.get("/api/disagreements").json()["disagreements"]
    assert [(r["source_ip"], r["message_count"], r["dmarc_pass"], r["aligned_pass"]) for r in listed] == [
        ("203.0.113.1", 7, False, True)
    ]
    overview = client.get("/").text
    assert f'id="aligned-messages">{aligned}<' in overview and "7 messages disagree" in overview
    report_page = client.get(f"/api/reports/{listed[0]['report_id']}").json()
    assert {(r["dmarc_pass"], r["aligned_pass"]) for r in report_page["records"] if r["message_count"] == 7} == {
        (False, True)
    }


def test_services_are_classified_and_a_customers_mark_is_an_event_that_a_rebuild_replays(stack, shop):
    report = _cli("report", "--customer", shop["customer"], "--json")
    status = {s["name"]: s["classification"] for s in report["services"]}
    assert status == {
        "Google": "authorized",
        "Amazon SES": "authorized",
        "SendGrid": "authorized",
        "Microsoft": "unauthorized",
        "Hetzner": "suspicious",
        "Yahoo": "forwarder",
    }
    ses = next(s for s in report["services"] if s["name"] == "Amazon SES")
    assert ses["messages"] == DAYS * 60 and ses["pass_rate"] == round(50 / 60, 4)

    client = _client(shop)
    page = client.get("/services")
    response = client.post(
        "/services/mark", data={"service": "Microsoft", "mine": "1", "csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303
    shop["app"].state.refresher.wait()  # the refresh runs after the response, outside the request
    services = {s["name"]: s for s in client.get("/api/services").json()["services"]}
    assert services["Microsoft"]["classification"] == "authorized" and services["Microsoft"]["marked"]
    sources = client.get("/api/sources", params={"q": "203.0.113.3"}).json()["items"]
    assert sources[0]["classification"] == "authorized"  # the sources follow their service
    assert client.post("/services/mark", data={"service": "Hetzner", "mine": "1"}).status_code == 403  # no CSRF

    with psycopg.connect(stack.database_url) as conn:
        kinds = conn.execute(
            "SELECT kind, subject FROM customer_events WHERE customer_id = %s", (shop["customer"],)
        ).fetchall()
    assert kinds == [("service_marked", "Microsoft")]
    before = client.get("/api/services").json()
    rebuild(stack.database_url, [shop["customer"]])
    assert client.get("/api/services").json() == before  # the choice is replayed from its event

    _run("mark", "--customer", shop["customer"], "Microsoft", "--not-mine")
    services = {s["name"]: s for s in client.get("/api/services").json()["services"]}
    assert services["Microsoft"]["classification"] == "unauthorized" and not services["Microsoft"]["marked"]


def test_policy_readiness_names_the_next_step_and_its_blockers(shop):
    readiness = {r["domain"]: r for r in _cli("report", "--customer", shop["customer"], "--json")["readiness"]}
    shop_domain = readiness["shop.example"]
    assert (shop_domain["current_policy"], shop_domain["next_policy"], shop_domain["next_pct"]) == (
        "quarantine",
        "reject",
        25,
    )
    assert not shop_domain["ready"]
    blockers = {(b["reason"], b.get("service")) for b in shop_domain["blockers"]}
    assert blockers == {("not_aligned", "Amazon SES"), ("new_service", "SendGrid")}
    ses = next(b for b in shop_domain["blockers"] if b["reason"] == "not_aligned")
    assert ses["unaligned_messages"] == 10 * 20 and ses["messages"] == 60 * 20  # 30 days hold all 20 of them

    news = readiness["news.example"]  # all aligned, 20 days, quarantine 25% since day 18
    assert (news["current_policy"], news["current_pct"], news["next_policy"], news["next_pct"]) == (
        "quarantine",
        25,
        "quarantine",
        100,
    )
    assert news["ready"] and news["blockers"] == []
    tiny = readiness["tiny.example"]  # at p=reject already
    assert tiny["next_policy"] is None and not tiny["ready"]
    page = _client(shop).get("/readiness").text
    assert "Amazon SES: 83.3% aligned" in page and "safe now" in page


class _Receiver(BaseHTTPRequestHandler):
    received: list = []
    fail_next = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).fail_next:
            type(self).fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(monkeypatch):
    """A real HTTP receiver on loopback: the webhook knobs that a shared deployment keeps off
    (plain http, private addresses) are on for it."""
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
    monkeypatch.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
    _Receiver.received, _Receiver.fail_next = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", free_port(8900)), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_alerts_fire_once_per_occurrence_and_reach_a_real_webhook_signed(stack, shop, receiver):
    customer = shop["customer"]
    secret = configure_notifications(
        stack.database_url, customer, webhook_url=f"http://127.0.0.1:{receiver.server_port}/hook"
    )
    today = LAST  # windows count back from today
    fired = [a for a in alerts.evaluate(stack.database_url, today=today) if a["customer_id"] == customer]
    by_rule: dict[str, int] = {}
    for alert in fired:
        by_rule[alert["rule"]] = by_rule.get(alert["rule"], 0) + 1
    assert by_rule == {
        "new_unauthorized_source": 1,  # 203.0.113.7: 240 messages from day 16 on
        "pass_rate_below": 7,  # shop.example, each of its last 7 days (about 70%)
        "reports_stopped": 1,  # tiny.example, silent since its third day
        "policy_changed": 1,  # news.example: none -> quarantine 25%
    }
    _Receiver.fail_next = 1  # the first delivery fails: retried at the next evaluation
    first = alerts.deliver(stack.database_url)
    assert first["failed"] >= 1
    alerts.deliver(stack.database_url)
    mine = [(h, b) for h, b in _Receiver.received if json.loads(b)["customer"] == customer]
    assert sorted(json.loads(b)["alert_id"] for _, b in mine) == sorted(a["alert_id"] for a in fired)
    for headers, body in mine:
        expected = (
            "sha256="
            + hmac.new(
                secret.encode(), headers["X-Pipeline-Timestamp"].encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        assert hmac.compare_digest(headers["X-Pipeline-Signature"], expected)

    again = alerts.evaluate(stack.database_url, today=today)  # projections refresh again: nothing new
    assert [a for a in again if a["customer_id"] == customer] == []
    rebuild(stack.database_url, [customer])
    assert [a for a in alerts.evaluate(stack.database_url, today=today) if a["customer_id"] == customer] == []
    alerts.deliver(stack.database_url)
    assert len([b for _, b in _Receiver.received if json.loads(b)["customer"] == customer]) == len(fired)

    client = _client(shop)
    shown = client.get("/api/alerts").json()["alerts"]
    assert len(shown) == len(fired) and all(a["delivered_at"] for a in shown)
    assert "203.0.113.7" in client.get("/alerts").text
    other = _client(shop, shop["other_token"]).get("/api/alerts").json()["alerts"]
    assert customer not in json.dumps(other)


@pytest.fixture
def smtp_inbox(monkeypatch):
    """A real SMTP server (aiosmtpd) on a free port; PIPELINE_SMTP_* point at it."""
    with smtp_server(monkeypatch, 8950) as inbox:
        yield inbox


def _html(message) -> str:
    return next(p for p in message.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()


def test_the_weekly_digest_goes_out_over_a_real_smtp_server(stack, shop, smtp_inbox, monkeypatch):
    configure_notifications(stack.database_url, shop["customer"], email="postmaster@shop.example")
    sent = digest.send_all(stack.database_url, shop["customer"], today=LAST)
    assert [s["to"] for s in sent] == ["postmaster@shop.example"] and len(smtp_inbox) == 1
    message = smtp_inbox[0]
    assert message["To"] == "postmaster@shop.example" and shop["customer"] in message["Subject"]
    html = _html(message)
    week = [r for r in shop["records"] if r["day"] > LAST - dt.timedelta(days=7)]
    assert f'id="messages">{sum(r["message_count"] for r in week)}<' in html
    assert "203.0.113.7" in html and "shop.example" in html and "Amazon SES" in html  # new source, readiness

    monkeypatch.delenv("PIPELINE_SMTP_HOST")
    with pytest.raises(digest.DigestError, match="PIPELINE_SMTP_HOST"):
        digest.send_all(stack.database_url, shop["customer"])


def test_the_weekly_digest_job_sends_through_dagster(stack, shop, smtp_inbox):
    from pipeline.defs.reports.digest import weekly_digest, weekly_digest_schedule
    from pipeline.defs.resources import resource_defs

    configure_notifications(stack.database_url, shop["customer"], email="dmarc@shop.example")
    assert weekly_digest_schedule.cron_schedule == "0 7 * * 1"
    result = weekly_digest.execute_in_process(resources=resource_defs())
    assert result.success
    mine = [m for m in smtp_inbox if m["To"] == "dmarc@shop.example"]
    assert len(mine) == 1 and shop["customer"] in _html(mine[0])


def test_detail_tables_and_csv_export_honour_filters_and_tenants(shop):
    client = _client(shop)
    detail = client.get("/api/sources/203.0.113.2").json()
    assert {(r["result"], r["messages"]) for r in detail["dkim"]} == {("pass", 50 * DAYS), ("fail", 10 * DAYS)}
    assert client.get("/sources/203.0.113.2").status_code == 200
    for view in ("reports", "reporters", "countries", "disagreements"):
        assert client.get(f"/{view}").status_code == 200, view

    exported = client.get("/api/export/sources.csv", params={"classification": "suspicious"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    api = client.get("/api/sources", params={"classification": "suspicious"}).json()["items"]
    assert [r["source_ip"] for r in rows] == [s["source_ip"] for s in api] == ["203.0.113.4"]
    from pipeline.web.app import _stream_sources
    from pipeline.web.queries import SourceQuery

    for sort, descending in (("messages", True), ("pass_rate", False), ("org", True)):  # batches of 2, by cursor
        query = SourceQuery(sort=sort, descending=descending)
        streamed = "".join(_stream_sources(shop["app"].state.warehouse, shop["customer"], query, batch=2))
        listed = client.get("/api/sources", params={"sort": sort, "order": "desc" if descending else "asc"}).json()
        assert [r["source_ip"] for r in csv.DictReader(io.StringIO(streamed))] == [
            s["source_ip"] for s in listed["items"]
        ]
    for view in ("domains", "services", "readiness", "reports", "reporters", "countries", "alerts", "disagreements"):
        response = client.get(f"/api/export/{view}.csv")
        assert response.status_code == 200, view
    dkim = list(csv.DictReader(io.StringIO(client.get("/api/export/dkim.csv", params={"ip": "203.0.113.2"}).text)))
    assert sum(int(r["messages"]) for r in dkim) == 60 * DAYS

    other = _client(shop, shop["other_token"])  # the same views, as the other tenant: none of these rows
    theirs = other.get("/api/export/reports.csv").text
    assert shop["customer"] not in theirs and shop["other"] in theirs
    assert client.get("/api/export/nothing.csv").status_code == 404
    assert TestClient(shop["app"]).get("/api/export/sources.csv").status_code == 401


def test_sources_page_by_cursor_the_same_rows_as_one_long_page(shop):
    client = _client(shop)
    for sort, order in (("messages", "desc"), ("pass_rate", "asc"), ("org", "desc")):
        whole = client.get("/api/sources", params={"sort": sort, "order": order, "per_page": 200}).json()["items"]
        paged, after, page = [], None, 1
        while True:
            params = {"sort": sort, "order": order, "per_page": 5, "page": page}
            if after:
                params["after"] = after
            data = client.get("/api/sources", params=params).json()
            paged += data["items"]
            after, page = data["next"], page + 1
            if not after:
                break
        assert [s["source_ip"] for s in paged] == [s["source_ip"] for s in whole], (sort, order)
    assert client.get("/api/sources", params={"after": "not-a-cursor!"}).status_code == 200


def test_sessions_end_with_their_token_and_forms_need_their_csrf_token(stack, shop):
    customer = new_customer()
    app = shop["app"]
    token = issue_token(stack.database_url, customer)
    browser = web_sign_in(TestClient(app), token)
    assert browser.get("/api/ping").json() == {"customer": customer}
    issue_token(stack.database_url, customer)  # rotated: the old session ends
    assert browser.get("/", follow_redirects=False).headers["location"] == "/login"

    fresh = issue_token(stack.database_url, customer)
    browser = web_sign_in(TestClient(app), fresh)
    assert revoke_token(stack.database_url, customer)
    assert browser.get("/", follow_redirects=False).status_code == 303  # revoked: signed out
    assert TestClient(app).get("/api/ping", headers={"Authorization": f"Bearer {fresh}"}).status_code == 401

    token = issue_token(stack.database_url, customer)
    forged = TestClient(app).post("/login", data={"token": token}, follow_redirects=False)
    assert forged.status_code == 403  # a cross-site form has no CSRF token
    signed = web_sign_in(TestClient(app), token)
    assert signed.get("/logout").status_code == 405  # signing out is a POST
    assert signed.post("/logout", data={"csrf": "wrong"}).status_code == 403
    signed.post("/logout", data={"csrf": csrf_of(signed.get("/").text)}, follow_redirects=False)
    assert signed.get("/", follow_redirects=False).status_code == 303

    secure = create_app(stack, secret="s", secure_cookie=True)
    try:
        response = TestClient(secure, base_url="https://testserver").get("/login")
        assert "secure" in response.headers["set-cookie"].lower()
    finally:
        secure.state.warehouse.close()
    plain = TestClient(app).get("/login")
    assert "secure" not in plain.headers["set-cookie"].lower()


def test_a_filtered_count_stops_at_its_cap_and_paging_goes_on(shop, monkeypatch):
    from pipeline.web import queries

    client = _client(shop)
    exact = client.get("/api/sources", params={"q": "203.0.113.", "per_page": 5}).json()
    assert exact["total"] == 7 and not exact["total_capped"]
    monkeypatch.setattr(queries, "COUNT_CAP", 3)
    capped = client.get("/api/sources", params={"q": "203.0.113.", "per_page": 5}).json()
    assert capped["total"] == 3 and capped["total_capped"] and capped["next"]
    rest = client.get("/api/sources", params={"q": "203.0.113.", "per_page": 5, "after": capped["next"]}).json()
    assert len(capped["items"]) + len(rest["items"]) == 7


def test_alert_rules_are_also_evaluated_hourly_through_dagster(stack, shop):
    from dagster import DefaultScheduleStatus

    from pipeline.defs.reports.digest import alerts_job, alerts_schedule
    from pipeline.defs.resources import resource_defs

    assert alerts_schedule(None).default_status == DefaultScheduleStatus.STOPPED  # PIPELINE_ALERTS_SCHEDULE=0 here
    assert alerts_schedule(True).default_status == DefaultScheduleStatus.RUNNING  # the shipped default
    assert alerts_schedule(True).cron_schedule == "15 * * * *"
    from pipeline.definitions import defs

    result = defs.resolve_job_def(alerts_job.name).execute_in_process(resources=resource_defs())
    assert result.success
    [materialization] = result.asset_materializations_for_node("customer_alerts")
    assert "alerts_fired" in materialization.metadata


def test_a_customer_sets_rules_and_notifications_in_the_app(stack, shop, receiver):
    customer = new_customer()
    token = issue_token(stack.database_url, customer)
    client = web_sign_in(TestClient(shop["app"]), token)
    page = client.get("/alerts")
    csrf = csrf_of(page.text)
    form = {"csrf": csrf, "rule": "pass_rate_below", "threshold": "0.5", "enabled": "1"}
    saved = client.post("/alerts/rules", data=form)
    assert saved.status_code == 200 and "Rule pass_rate_below saved." in saved.text
    client.post("/alerts/rules", data={"csrf": csrf, "rule": "reports_stopped", "threshold": "3"})  # unticked: off
    rules = client.get("/api/alerts").json()["rules"]
    assert rules["pass_rate_below"] == {**rules["pass_rate_below"], "threshold": 0.5, "enabled": True}
    assert rules["reports_stopped"]["enabled"] is False
    assert "must be a number" in client.post("/alerts/rules", data={"csrf": csrf, "rule": "x", "threshold": "-1"}).text
    assert client.post("/alerts/rules", data={"rule": "pass_rate_below", "threshold": "1"}).status_code == 403

    url = f"http://127.0.0.1:{receiver.server_port}/mine"
    shown = client.post("/alerts/notify", data={"csrf": csrf, "webhook": url, "email": "a@b.example"})
    secret = shown.text.split('id="webhook-secret">')[1].split("<")[0]
    assert len(secret) > 30 and secret not in client.get("/alerts").text  # shown once
    again = client.post("/alerts/notify", data={"csrf": csrf, "webhook": url, "email": "c@b.example"})
    assert 'id="webhook-secret"' not in again.text  # the same URL keeps its secret
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute(
            "SELECT webhook_url, webhook_secret, digest_email FROM tenants WHERE customer_id = %s", (customer,)
        ).fetchone()
    assert stored == (url, secret, "c@b.example")
    with psycopg.connect(stack.database_url) as conn:
        events = conn.execute(
            "SELECT subject, payload FROM customer_events WHERE customer_id = %s ORDER BY event_id", (customer,)
        ).fetchall()
    assert [e[0] for e in events] == ["pass_rate_below", "reports_stopped"]  # choices are events


def test_the_overview_summarises_who_sends_and_readiness(shop):
    client = _client(shop)
    data = client.get("/api/overview").json()
    assert data["service_classes"]["authorized"]["services"] == 3  # Google, Amazon SES, SendGrid
    assert data["service_classes"]["suspicious"] == {"services": 1, "messages": 15 * DAYS}
    assert {r["domain"]: r["ready"] for r in data["readiness"]} == {
        "shop.example": False,
        "news.example": True,
        "tiny.example": False,
    }
    page = client.get("/").text
    assert 'href="/services?classification=suspicious"' in page and "safe now" in page and "(strictest)" in page


def _window_truth(records, first: dt.date, last: dt.date) -> dict:
    """The figures of the days first..last, summed from the crafted records (the truth)."""
    rows = [r for r in records if first <= r["day"] <= last]
    messages = sum(r["message_count"] for r in rows)
    passed = sum(r["message_count"] for r in rows if r["policy_dkim"] == "pass" or r["policy_spf"] == "pass")
    return {
        "messages": messages,
        "dmarc_pass_messages": passed,
        "reports": len({(r["policy_domain"], r["day"]) for r in rows}),
        "sources": len({r["source_ip"] for r in rows}),
        "domains": {
            d: sum(r["message_count"] for r in rows if r["policy_domain"] == d)
            for d in {r["policy_domain"] for r in rows}
        },
    }


def test_a_window_sums_its_days_and_compares_with_the_one_before(shop):
    records, client = shop["records"], _client(shop)
    first, last = START + dt.timedelta(days=10), LAST  # the last ten days; the ten before are the comparison
    now, before = _window_truth(records, first, last), _window_truth(records, START, first - dt.timedelta(days=1))
    assert now["messages"] != before["messages"] and "tiny.example" in before["domains"]  # the windows differ

    data = client.get("/api/overview", params={"from": str(first), "to": str(last)}).json()
    assert data["window"] == {"preset": "custom", "from": str(first), "to": str(last), "days": 10}
    for key in ("messages", "dmarc_pass_messages", "reports", "sources"):
        assert data[key] == now[key], key
        assert data["previous"][key] == before[key], key
    assert data["previous"]["window"] == {
        "preset": "previous",
        "from": str(START),
        "to": str(first - dt.timedelta(days=1)),
        "days": 10,
    }
    assert data["change"]["messages_pct"] == round(100 * (now["messages"] - before["messages"]) / before["messages"], 1)
    assert data["change"]["pass_rate_points"] == round(
        100
        * (
            round(now["dmarc_pass_messages"] / now["messages"], 4)
            - round(before["dmarc_pass_messages"] / before["messages"], 4)
        ),
        1,
    )
    assert [t["day"] for t in data["trend"]] == [str(first + dt.timedelta(days=n)) for n in range(10)]
    assert {d["domain"]: d["messages"] for d in data["domains"]} == now["domains"]  # tiny.example stopped: not here
    everything = client.get("/api/overview").json()  # no window: all time, nothing to compare with
    assert everything["window"]["preset"] == "all" and everything["previous"] is None
    assert everything["messages"] == sum(r["message_count"] for r in records)

    domains = client.get("/api/domains", params={"from": str(first), "to": str(last)}).json()
    assert {d["domain"]: d["messages"] for d in domains["domains"]} == now["domains"]
    reports = client.get("/api/reports", params={"from": str(first), "to": str(last)}).json()
    assert len(reports["reports"]) == now["reports"] and reports["window"]["days"] == 10
    reporters = client.get("/api/reporters", params={"from": str(first), "to": str(last)}).json()["reporters"]
    assert sum(r["reports"] for r in reporters) == now["reports"]
    exported = client.get("/api/export/reporters.csv", params={"from": str(first), "to": str(last)}).text
    assert sum(int(r["reports"]) for r in csv.DictReader(io.StringIO(exported))) == now["reports"]
    exported = client.get("/api/export/domains.csv", params={"from": str(START), "to": str(START)}).text
    assert {r["domain"]: int(r["messages"]) for r in csv.DictReader(io.StringIO(exported))} == _window_truth(
        records, START, START
    )["domains"]

    # sources and services: the window's messages per source and per service, first and last days within it
    by_source: dict = {}
    for r in records:
        if first <= r["day"] <= last:
            by_source[r["source_ip"]] = by_source.get(r["source_ip"], 0) + r["message_count"]
    listed = client.get("/api/sources", params={"from": str(first), "to": str(last), "per_page": 200}).json()
    assert {s["source_ip"]: s["messages"] for s in listed["items"]} == by_source and listed["total"] == len(by_source)
    assert all(str(first) <= s["first_day"] <= s["last_day"] <= str(last) for s in listed["items"])
    page_one = client.get("/api/sources", params={"from": str(first), "to": str(last), "per_page": 5}).json()
    page_two = client.get(
        "/api/sources", params={"from": str(first), "to": str(last), "per_page": 5, "after": page_one["next"]}
    ).json()  # keyset paging within the window
    assert [s["source_ip"] for s in page_one["items"] + page_two["items"]] == [s["source_ip"] for s in listed["items"]]
    # the count is the window's wherever the page starts (the page's own query counts it)
    assert page_one["total"] == page_two["total"] == len(by_source)
    past = client.get("/api/sources", params={"from": str(first), "to": str(last), "page": 50}).json()
    assert past["items"] == [] and past["total"] == len(by_source)
    assert set(page_one["items"][0]) == set(client.get("/api/sources").json()["items"][0])  # no column of its own
    window = {"from": str(first), "to": str(last)}
    for sort, order in (("pass_rate", "asc"), ("org", "desc")):  # by the window's figures, by an attribute
        full = client.get("/api/sources", params={**window, "sort": sort, "order": order, "per_page": 200}).json()
        one = client.get("/api/sources", params={**window, "sort": sort, "order": order, "per_page": 5}).json()
        two = client.get(
            "/api/sources", params={**window, "sort": sort, "order": order, "per_page": 5, "after": one["next"]}
        ).json()
        assert [s["source_ip"] for s in one["items"] + two["items"]] == [s["source_ip"] for s in full["items"]]
    searched = client.get("/api/sources", params={**window, "q": "203.0.113.2"}).json()  # a filter: the joined path
    assert [(s["source_ip"], s["messages"]) for s in searched["items"]] == [("203.0.113.2", by_source["203.0.113.2"])]
    assert searched["total"] == 1
    exported = client.get("/api/export/sources.csv", params={"from": str(first), "to": str(last)}).text
    assert {r["source_ip"]: int(r["messages"]) for r in csv.DictReader(io.StringIO(exported))} == by_source
    all_time = client.get("/api/export/sources.csv", params={"window": "all"}).text
    assert exported.splitlines()[0] == all_time.splitlines()[0]  # the same columns, whatever the window
    by_service: dict = {}
    for r in records:
        if first <= r["day"] <= last:
            name = r["service_name"] or r["as_org"]
            by_service[name] = by_service.get(name, 0) + r["message_count"]
    services = client.get("/api/services", params={"from": str(first), "to": str(last)}).json()
    assert {s["name"]: s["messages"] for s in services["services"]} == by_service
    assert {s["name"]: s["sources"] for s in services["services"]}["Microsoft"] == 2  # .3 all along, .7 from day 16
    early = client.get("/api/services", params={"from": str(START), "to": str(START + dt.timedelta(days=14))}).json()
    assert "SendGrid" not in {s["name"] for s in early["services"]}  # first seen on day 15
    assert {s["name"]: s["sources"] for s in early["services"]}["Microsoft"] == 1
    classes = client.get("/api/overview", params={"from": str(START), "to": str(START + dt.timedelta(days=14))}).json()
    assert classes["service_classes"]["authorized"]["services"] == 2  # Google and Amazon SES; SendGrid came later

    # the other tenant, the same window: its own rows only (its data is built the same way)
    other = _client(shop, shop["other_token"])
    theirs = other.get("/api/export/reports.csv", params={"from": str(first), "to": str(last)}).text
    assert shop["customer"] not in theirs and shop["other"] in theirs


def test_countries_and_disagreements_take_a_window(shop):
    """The countries table over a window: per country, the messages and the distinct sources of
    the window's source-days (a source-day's country as the daily projection names it, the
    greatest of its rows'); the disagreements: only the window's records; both as CSV too."""
    records, client = shop["records"], _client(shop)
    first, last = START + dt.timedelta(days=14), START + dt.timedelta(days=17)
    days: dict = {}
    for r in records:
        if first <= r["day"] <= last:
            got = days.setdefault((r["day"], r["source_ip"]), {"country": r["country"] or "", "messages": 0})
            got["country"] = max(got["country"], r["country"] or "")
            got["messages"] += r["message_count"]
    truth: dict = {}
    for (_, ip), got in days.items():
        country = truth.setdefault(got["country"], {"messages": 0, "sources": set()})
        country["messages"] += got["messages"]
        country["sources"].add(ip)
    window = {"from": str(first), "to": str(last)}
    listed = client.get("/api/countries", params=window).json()
    assert listed["window"]["days"] == 4
    assert {c["country"]: (c["messages"], c["sources"]) for c in listed["countries"]} == {
        name: (c["messages"], len(c["sources"])) for name, c in truth.items()
    }
    exported = client.get("/api/export/countries.csv", params=window).text
    assert sum(int(r["messages"]) for r in csv.DictReader(io.StringIO(exported))) == sum(
        c["messages"] for c in truth.values()
    )
    everything = client.get("/api/countries", params={"window": "all"}).json()["countries"]
    assert sum(c["messages"] for c in everything) == sum(r["message_count"] for r in records)

    # the one disagreement is on the first day (the receiver failed 7 messages the alignment passes)
    on_first = client.get("/api/disagreements", params={"from": str(START), "to": str(START)}).json()
    assert [(d["day"], d["message_count"]) for d in on_first["disagreements"]] == [(str(START), 7)]
    assert client.get("/api/disagreements", params=window).json()["disagreements"] == []
    page = client.get("/disagreements", params=window).text
    assert 'id="window-label"' in page and "None: every receiver" in page


def test_a_page_keeps_its_window_and_a_wrong_window_says_what_to_send(shop):
    client = _client(shop)
    page = client.get("/", params={"window": "7d"}).text  # the crafted reports are older than a week
    assert 'id="window-label">last 7 days' in page and "fall in this window" in page
    assert client.get("/api/overview", params={"window": "7d"}).json()["messages"] == 0
    first, last = START + dt.timedelta(days=18), LAST
    page = client.get("/domains", params={"from": str(first), "to": str(last)}).text
    assert f'id="window-label">{first} → {last}<' in page
    # the session keeps the window for the next pages, and their export links carry it
    page = client.get("/reporters").text
    assert f'id="window-label">{first} → {last}<' in page
    assert f'/api/export/reporters.csv?from={first}&amp;to={last}"' in page
    truth = _window_truth(shop["records"], first, last)
    assert f'id="messages">{truth["messages"]}<' in client.get("/").text
    assert "vs the 2 days before" in client.get("/").text
    assert 'id="window-label">all time<' in client.get("/", params={"window": "all"}).text
    assert 'id="window-label">all time<' in client.get("/domains").text
    # pages that are all-time figures show no window
    assert 'id="window"' not in client.get("/alerts").text

    for params, says in (
        ({"from": "2026-13-01"}, "not a day of the calendar"),
        ({"from": "yesterday"}, "send it as YYYY-MM-DD"),
        ({"from": str(LAST), "to": str(START)}, "is after"),
        ({"window": "5d"}, "is not one of all, 7d, 30d, 90d"),
        ({"window": "7d", "from": str(START)}, "not both"),
    ):
        api = client.get("/api/overview", params=params)
        assert api.status_code == 400 and says in api.json()["error"], (params, api.text)
        page = client.get("/", params=params)
        assert page.status_code == 400 and says in page.text, params
    assert client.get("/api/export/domains.csv", params={"window": "1y"}).status_code == 400


def test_the_report_command_takes_a_window(shop):
    first, last = START + dt.timedelta(days=10), LAST
    report = _cli("report", "--customer", shop["customer"], "--from", str(first), "--to", str(last), "--json")
    truth = _window_truth(shop["records"], first, last)
    assert report["window"] == {"preset": "custom", "from": str(first), "to": str(last), "days": 10}
    assert report["messages"] == truth["messages"] and report["previous"]["window"]["to"] == str(
        first - dt.timedelta(days=1)
    )
    by_reporter: dict = {}
    for r in shop["records"]:
        if first <= r["day"] <= last:
            got = by_reporter.setdefault(r["report_org"], {"reports": set(), "messages": 0})
            got["reports"].add(r["report_id"])
            got["messages"] += r["message_count"]
    assert {r["report_org"]: (r["reports"], r["messages"]) for r in report["reporters"]} == {
        org: (len(got["reports"]), got["messages"]) for org, got in by_reporter.items()
    }
    text = _run("report", "--customer", shop["customer"], "--window", "30d")
    assert "last 30 days" in text
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", "--customer", shop["customer"], "--from", "2026-02-30"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert done.returncode == 2 and "not a day of the calendar" in done.stderr


def test_a_domain_page_shows_its_trend_services_sources_subdomains_reporters_and_readiness(stack, clients, shop):
    records, client = shop["records"], _client(shop)
    first, last = START + dt.timedelta(days=15), LAST
    mine = [r for r in records if r["policy_domain"] == "shop.example" and first <= r["day"] <= last]
    data = client.get("/api/domains/shop.example", params={"from": str(first), "to": str(last)}).json()
    assert data["domain"] == "shop.example" and data["window"]["days"] == 5
    assert data["messages"] == sum(r["message_count"] for r in mine) and data["reports"] == 5
    assert [t["day"] for t in data["trend"]] == [str(first + dt.timedelta(days=n)) for n in range(5)]
    assert data["dmarc_pass"] == sum(
        r["message_count"] for r in mine if r["policy_dkim"] == "pass" or r["policy_spf"] == "pass"
    )
    services: dict = {}
    sources: dict = {}
    for r in mine:
        name = r["service_name"] or r["as_org"]
        services[name] = services.get(name, 0) + r["message_count"]
        sources[r["source_ip"]] = sources.get(r["source_ip"], 0) + r["message_count"]
    assert {s["service"]: s["messages"] for s in data["services"]} == services
    assert {s["source_ip"]: s["messages"] for s in data["sources"]} == sources
    assert "198.51.100.1" not in sources  # news.example's sender: not on shop.example's page
    assert data["subdomains"] == [
        {
            "header_from": "shop.example",
            "messages": data["messages"],
            "dmarc_pass": data["dmarc_pass"],
            "aligned_pass": data["aligned_pass"],
            "sources": len(sources),
            "pass_rate": data["dmarc_pass_rate"],
            "aligned_rate": data["aligned_rate"],
        }
    ]
    assert [(r["report_org"], r["reports"]) for r in data["reporters"]] == [(mine[0]["report_org"], 5)]
    assert data["readiness"]["domain"] == "shop.example" and data["readiness"]["ready"] is False
    # all time, tiny.example's three days; a window after them is an empty page, not an error
    tiny = client.get("/api/domains/tiny.example").json()
    assert tiny["reports"] == 3 and tiny["messages"] == 15 and tiny["last_day"] == str(START + dt.timedelta(days=2))
    empty = client.get("/domains/tiny.example", params={"from": str(last), "to": str(last)})
    assert empty.status_code == 200 and "falls in this window" in empty.text
    page = client.get("/domains/shop.example", params={"window": "all"}).text
    assert 'id="domain">shop.example<' in page and 'href="/sources/203.0.113.1"' in page and "SendGrid" in page
    assert 'href="/domains/shop.example"' in client.get("/domains").text  # the list links each domain
    # a domain no report of this customer names, or another tenant's: not found
    assert client.get("/api/domains/nowhere.example").status_code == 404
    assert client.get("/domains/nowhere.example").status_code == 404
    # another tenant's domain: it exists, for them alone
    rows = synthetic_enriched_table(1, seed=2, customer_id=shop["other"], day=START, report_id="theirs").to_pylist()
    rows[0].update(policy_domain="theirs-only.example", header_from="theirs-only.example")
    key = f"{stack.enriched_prefix}customer={shop['other']}/dt={START}/theirs-only.parquet"
    body = parquet_bytes(pa.Table.from_pylist(rows, schema=ENRICHED_ARROW_SCHEMA))
    s3 = clients("s3")
    etag = s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=body)["ETag"].strip('"')
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        load_object(conn, s3, ObjectVersion(stack.enriched_bucket, key, etag, etag=etag))
    refresh(stack.database_url)
    other = _client(shop, shop["other_token"])
    assert other.get("/api/domains/theirs-only.example").json()["messages"] == rows[0]["message_count"]
    assert client.get("/api/domains/theirs-only.example").status_code == 404
    assert client.get("/domains/theirs-only.example").status_code == 404


def test_every_page_says_how_current_its_tenants_data_is(stack, clients, shop):
    """Each signed-in page shows "data through": the end of the latest reporting period loaded for
    that customer, whatever another tenant loaded later; the overview API and the report command
    carry it; a customer without reports is told so."""
    truth = max(r["report_end"] for r in shop["records"]).astimezone(dt.UTC)
    last_day = max(r["day"] for r in shop["records"])
    stamp = f"Data through {truth:%Y-%m-%d %H:%M} UTC"
    # another tenant, one report a month after the shop's last: it moves its own stamp only
    later, s3 = new_customer(), clients("s3")
    day = LAST + dt.timedelta(days=30)
    rows = synthetic_enriched_table(1, seed=2, customer_id=later, day=day, report_id=f"{later}-late").to_pylist()
    _import(stack, s3, later, day, "late", rows)
    refresh(stack.database_url)

    client = _client(shop)
    pages = ["/", "/domains", "/domains/shop.example", "/services", "/readiness", "/sources", "/alerts", "/more"]
    pages += ["/health", f"/sources/{shop['records'][0]['source_ip']}"]
    for path in pages:
        html = client.get(path).text
        assert 'id="data-through"' in html and stamp in html, path
        assert f"the last day with data: {last_day}" in html, path
    assert client.get("/api/overview").json()["data_through"] == {
        "report_end": truth.isoformat(),
        "last_day": str(last_day),
        "label": f"{truth:%Y-%m-%d %H:%M} UTC",
    }
    assert _cli("report", "--customer", shop["customer"], "--json")["data_through"]["report_end"] == truth.isoformat()

    theirs = max(r["report_end"] for r in rows).astimezone(dt.UTC)
    assert (
        f"Data through {theirs:%Y-%m-%d %H:%M} UTC"
        in _client(shop, issue_token(stack.database_url, later)).get("/").text
    )
    empty = _client(shop, issue_token(stack.database_url, new_customer())).get("/domains").text
    assert "No reports loaded yet" in empty and "the last day with data" not in empty
    assert 'id="data-through"' not in TestClient(shop["app"]).get("/login").text  # not signed in: no stamp
