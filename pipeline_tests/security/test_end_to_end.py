"""The hostile corpus end to end (issue #21, "Prove it"): a rua Maildir that mixes every hostile
shape and every hostile field value with good reports is collected, enriched, imported and
shown. Every good report is loaded; every hostile message is in .Invalid with its reason or is
inert in the pages, the JSON API, every CSV export, the digest and the webhook bodies; in
Chromium no script runs and the security headers are there; another tenant reaches nothing
through any route or export; a copied session cookie is worthless after sign-out."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from starlette.testclient import TestClient

from pipeline.collector.generate import generate_reports
from pipeline.collector.maildir import collect_maildir
from pipeline.collector.spool import Spool
from pipeline.enrich.spark import enrich_days_in_process
from pipeline.warehouse.projections import refresh
from pipeline.web import alerts, digest
from pipeline.web.app import TABLES, create_app
from pipeline.web.tenants import configure_notifications, issue_token
from pipeline_tests.security import hostile
from pipeline_tests.security.test_tenancy import enriched, load_all
from pipeline_tests.support import csrf_of, new_customer, served, smtp_server, web_sign_in, webhook_receiver

YESTERDAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
BEGIN = int(dt.datetime.combine(YESTERDAY, dt.time(), tzinfo=dt.UTC).timestamp())


class _Active(HTMLParser):
    """What a browser would run or load from a page: script elements, event-handler attributes,
    javascript: URLs, elements a report could only have injected (img, iframe, object)."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in {"script", "img", "iframe", "object", "embed", "base"}:
            self.found.append(tag)
        for name, value in attrs:
            url = name in {"href", "src", "action", "formaction", "xlink:href"}
            if name.startswith("on") or (url and (value or "").strip().lower().startswith("javascript:")):
                self.found.append(f"{tag}[{name}={value}]")


def active(html: str) -> list[str]:
    parser = _Active()
    parser.feed(html)
    return parser.found


TRAVERSAL_ID = "../../api/export/sources.csv"


def _maildir(root: Path, customer: str) -> tuple[dict[str, str], list]:
    """new/ holds every hostile field report, every hostile shape and two generated good reports."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    messages: dict[str, str] = {}
    cases = hostile.field_cases(begin=BEGIN)  # dated yesterday, so that alerts and the digest see them
    cases["traversal-id.xml"] = hostile.report_xml(begin=BEGIN, report_id=TRAVERSAL_ID)
    for n, (name, xml) in enumerate(sorted(cases.items())):
        message = f"1720{n:06d}.{n}.host"
        (root / "new" / message).write_bytes(hostile.email_of(hostile.attachment(xml, "report.xml", "text/xml")))
        messages[message] = name
    for n, (name, data) in enumerate(sorted({**hostile.mime_shapes(), **hostile.archive_shapes()}.items())):
        message = f"1730{n:06d}.{n}.host"
        (root / "new" / message).write_bytes(
            data if name.endswith(".eml") else hostile.email_of(hostile.attachment(data, name))
        )
        messages[message] = name
    good = generate_reports(root.parent / "good", 1, 2, seed=77, start=YESTERDAY)
    for n, report in enumerate(good):
        message = f"1740{n:06d}.{n}.host"
        data = Path(report.path).read_bytes()
        (root / "new" / message).write_bytes(hostile.email_of(hostile.attachment(data, Path(report.path).name)))
        messages[message] = "good"
    return messages, good


@pytest.fixture(scope="module")
def hostile_site(stack, clients, tmp_path_factory):
    s3 = clients("s3")
    folder = tmp_path_factory.mktemp("hostile")
    victim, other = new_customer(), new_customer()
    messages, good = _maildir(folder / "Maildir", victim)
    result = collect_maildir(folder / "Maildir", victim, stack, Spool(folder / "spool"))
    days = sorted({YESTERDAY.isoformat()})
    enrich_days_in_process(stack, s3, days, f"hostile-{victim}")
    outcomes = load_all(stack, s3, enriched(s3, stack, victim))

    # another tenant with ordinary data, to look for from the victim's side and the other way
    from pipeline_tests.support import customer_with_reports

    customer_with_reports(stack, s3, other, objects=1, rows=10)
    refresh(stack.database_url)
    tokens = {victim: issue_token(stack.database_url, victim), other: issue_token(stack.database_url, other)}

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PIPELINE_WEBHOOK_ALLOW_HTTP", "1")
        env.setenv("PIPELINE_WEBHOOK_ALLOW_PRIVATE", "1")
        with webhook_receiver(8760) as (url, hooks):
            configure_notifications(stack.database_url, victim, webhook_url=f"{url}/h")
            configure_notifications(stack.database_url, victim, email="dmarc@victim.example")
            alerts.evaluate(stack.database_url)
            alerts.deliver(stack.database_url)

        with smtp_server(env, 8970) as inbox:
            digest.send_all(stack.database_url, victim)

    app = create_app(stack, secret="hostile-test")
    with served(app, 8640) as web_url:
        yield {
            "victim": victim,
            "other": other,
            "tokens": tokens,
            "messages": messages,
            "good": good,
            "result": result,
            "outcomes": outcomes,
            "webhooks": [(h, b) for h, b in hooks if json.loads(b)["customer"] == victim],
            "digests": inbox,
            "app": app,
            "url": web_url,
            "root": folder / "Maildir",
        }
    app.state.warehouse.close()


def test_every_good_report_is_loaded_and_every_hostile_message_is_refused_or_collected(hostile_site, stack):
    site = hostile_site
    invalid = {entry["message"].split(":2,")[0]: entry["reason"] for entry in site["result"].invalid}
    archived = {name.split(":2,")[0] for name in site["result"].archived}
    assert set(invalid) | archived == set(site["messages"])
    assert all(site["messages"][m] != "good" for m in invalid), "a good report was refused"
    assert all(reason.strip() for reason in invalid.values())
    assert all(getattr(o, "outcome", None) == "loaded" for o in site["outcomes"]), site["outcomes"]
    with psycopg.connect(stack.database_url) as conn:
        loaded = dict(
            conn.execute(
                "SELECT report_id, count(*) FROM telemetry_events WHERE customer_id = %s GROUP BY 1", (site["victim"],)
            ).fetchall()
        )
    for report in site["good"]:
        assert loaded.get(report.report_id) == len(report.records), report.report_id
    field_reports = [n for n in site["messages"].values() if n.startswith("field-")]
    assert len(loaded) >= len(site["good"]) + len(field_reports) // 2  # most hostile values are just text


def _pages(client, victim_ids: list[str]) -> dict[str, object]:
    paths = ["/", "/domains", "/sources", "/services", "/readiness", "/alerts", "/more", "/health"]
    paths += [f"/{view}" for view in TABLES]
    paths += [f"/reports/{quote(rid, safe='')}" for rid in victim_ids[:40]]
    paths += ["/sources/192.0.2.10"]
    return {path: client.get(path) for path in paths}


def _report_ids(stack, customer: str) -> list[str]:
    with psycopg.connect(stack.database_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT report_id FROM telemetry_events WHERE customer_id = %s ORDER BY 1", (customer,)
            ).fetchall()
        ]


def test_hostile_values_are_inert_in_pages_json_and_every_csv(hostile_site, stack):
    site = hostile_site
    client = web_sign_in(TestClient(site["app"]), site["tokens"][site["victim"]])
    ids = _report_ids(stack, site["victim"])
    for path, response in _pages(client, ids).items():
        assert response.status_code == 200, path
        assert active(response.text) == [], path
    overview = client.get("/").text
    assert f'href="/reports/{quote(TRAVERSAL_ID, safe="")}"' in overview or TRAVERSAL_ID not in overview
    for path in ["/api/overview", "/api/domains", "/api/sources", "/api/services", "/api/readiness", "/api/alerts"]:
        response = client.get(path)
        assert response.headers["content-type"].startswith("application/json") and response.json() is not None
        assert response.headers["x-content-type-options"] == "nosniff"
    assert hostile.SCRIPT in client.get("/api/reporters").text  # the value is kept, as data, in JSON
    for view in ["sources", "domains", "services", "readiness", "alerts", *TABLES]:
        text = client.get(f"/api/export/{view}.csv").text
        for row in csv.reader(io.StringIO(text)):
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")), (view, cell)
                assert not (cell.startswith("-") and not cell.lstrip("-").replace(".", "").isdigit()), (view, cell)
    reporters = [c for row in csv.reader(io.StringIO(client.get("/api/export/reporters.csv").text)) for c in row]
    assert "'" + hostile.FIELD_PAYLOADS["formula-hyperlink"].lower() in {c.lower() for c in reporters}  # as text


def test_hostile_values_are_inert_in_the_digest_and_the_webhook_bodies(hostile_site):
    site = hostile_site
    assert site["webhooks"], "no alert reached the webhook"
    for headers, body in site["webhooks"]:
        assert headers["Content-Type"] == "application/json"
        json.loads(body)  # one JSON document, whatever the values
        assert "\r\n" not in str(headers)
    [message] = site["digests"]
    assert message["To"] == "dmarc@victim.example" and "\n" not in message["Subject"]
    html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert active(html) == []


def test_no_script_runs_in_chromium_and_the_security_headers_are_there(hostile_site, stack):
    from pipeline_tests.web.test_browser import _chromium

    if _chromium() is None:
        pytest.skip("Debian's chromium is not installed (scripts/ensure-chromium.sh installs it as root)")
    from playwright.sync_api import sync_playwright

    site = hostile_site
    ids = _report_ids(stack, site["victim"])
    dialogs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(site["url"] + "/login")
            page.fill("input[name=token]", site["tokens"][site["victim"]])
            page.click("button[type=submit]")
            page.wait_for_url(site["url"] + "/")
            paths = ["/", "/sources?per_page=200", "/services", "/alerts", "/reporters", "/reports", "/domains"]
            paths += [f"/reports/{quote(rid, safe='')}" for rid in ids if "script" in rid or "img" in rid]
            for path in paths:
                response = page.goto(site["url"] + path)
                assert response.status == 200, path
                headers = response.headers
                assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no script
                assert "frame-ancestors 'none'" in headers["content-security-policy"]
                assert headers["x-content-type-options"] == "nosniff"
                assert page.title() != "pwned" and page.evaluate("document.title") != "pwned", path
                assert page.locator("script").count() == 0 and page.locator("img[onerror]").count() == 0, path
        finally:
            browser.close()
    assert dialogs == []


def test_another_tenant_reaches_nothing_through_any_route_or_export(hostile_site, stack):
    site = hostile_site
    victim_ids = _report_ids(stack, site["victim"])
    theirs = web_sign_in(TestClient(site["app"]), site["tokens"][site["other"]])
    for path, response in _pages(theirs, victim_ids).items():
        body = response.text
        assert site["victim"] not in body, path
        if path.startswith("/reports/"):
            assert response.status_code == 404, path
    for view in ["sources", "domains", "services", "readiness", "alerts", *TABLES, "dkim?ip=192.0.2.10"]:
        name, _, query = view.partition("?")
        body = theirs.get(f"/api/export/{name}.csv" + (f"?{query}" if query else "")).text
        assert site["victim"] not in body and "Hostile Reporter" not in body, view
    for path in ["/api/overview", "/api/sources", "/api/alerts", "/api/services", "/api/sources/192.0.2.10"]:
        response = theirs.get(path, params={"customer": site["victim"]})
        assert site["victim"] not in response.text and "hostile-" not in response.text, path


def test_a_copied_session_cookie_is_worthless_after_sign_out(hostile_site):
    site = hostile_site
    client = web_sign_in(TestClient(site["app"]), site["tokens"][site["victim"]])
    assert client.get("/api/overview").status_code == 200
    copied = dict(client.cookies)
    csrf = csrf_of(client.get("/alerts").text)
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    thief = TestClient(site["app"], cookies=copied)
    assert thief.get("/api/overview").status_code == 401
    assert thief.get("/", follow_redirects=False).status_code == 303
