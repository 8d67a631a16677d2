"""The web application over HTTP (Starlette's test client, the real app and database): pages,
API, sorting / filtering / paging, and tenant isolation in the web layer and in the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from pipeline.web.app import create_app
from pipeline.web.tenants import issue_token
from pipeline_tests.support import csrf_of, customer_with_reports, new_customer, web_sign_in


@pytest.fixture(scope="module")
def tenants(stack, clients):
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    customer_with_reports(stack, s3, a, objects=3, rows=60)
    customer_with_reports(stack, s3, b, objects=2, rows=30)
    return {a: issue_token(stack.database_url, a), b: issue_token(stack.database_url, b)}


@pytest.fixture(scope="module")
def app(stack):
    application = create_app(stack, secret="test-secret")
    yield application
    application.state.warehouse.close()


def _signed_in(app, token) -> TestClient:
    return web_sign_in(TestClient(app), token)


def _ids(tenants):
    (a, token_a), (b, token_b) = tenants.items()
    return a, token_a, b, token_b


def test_pages_load_for_a_signed_in_customer_and_match_the_report_command(app, tenants):
    a, token_a, _, _ = _ids(tenants)
    client = _signed_in(app, token_a)
    for path in ("/", "/domains", "/sources", "/health"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert a in response.text
    overview = client.get("/").text
    assert "<svg" in overview and "polyline" in overview  # the trend chart rendered
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", "--customer", a, "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    figures = json.loads(cli.stdout)
    api = client.get("/api/overview").json()
    for key in ("reports", "messages", "dmarc_pass_messages"):
        assert api[key] == figures[key]
    assert figures["reports"] == 3 and figures["messages"] > 0
    assert f'id="messages">{figures["messages"]}<' in overview
    assert {d["domain"] for d in api["domains"]} == {d["domain"] for d in figures["domains"]}


def test_a_report_page_and_sources_sorting_filtering_paging(app, tenants):
    a, token_a, _, _ = _ids(tenants)
    client = _signed_in(app, token_a)
    recent = client.get("/api/overview").json()["recent_reports"]
    page = client.get(f"/reports/{recent[0]['report_id']}")
    assert page.status_code == 200 and "records" in page.text

    everything = client.get("/api/sources?per_page=200").json()
    total = everything["total"]
    assert total > 5
    first = client.get("/api/sources?per_page=5&page=1&sort=messages&order=desc").json()
    second = client.get("/api/sources?per_page=5&page=2&sort=messages&order=desc").json()
    assert first["pages"] == -(-total // 5)
    assert not {s["source_ip"] for s in first["items"]} & {s["source_ip"] for s in second["items"]}
    counts = [s["messages"] for s in first["items"] + second["items"]]
    assert counts == sorted(counts, reverse=True)
    ascending = client.get("/api/sources?per_page=200&sort=ip&order=asc").json()["items"]
    assert [s["source_ip"] for s in ascending] == sorted(s["source_ip"] for s in ascending)
    some = everything["items"][0]
    filtered = client.get("/api/sources", params={"q": some["source_ip"]}).json()
    assert [s["source_ip"] for s in filtered["items"]] == [some["source_ip"]]
    html = client.get("/sources", params={"q": "no-such-source-anywhere"}).text
    assert "No source matches this filter." in html


def test_one_customer_cannot_read_another(app, tenants):
    a, token_a, b, token_b = _ids(tenants)
    client_b = _signed_in(app, token_b)
    b_report = client_b.get("/api/overview").json()["recent_reports"][0]["report_id"]
    client_a = _signed_in(app, token_a)

    for path in (f"/reports/{b_report}", f"/api/reports/{b_report}"):  # by URL
        response = client_a.get(path)
        assert response.status_code == 404 and b_report not in response.text and b not in response.text
    tampered = client_a.get("/api/overview", params={"customer": b, "customer_id": b}).json()  # query string
    assert tampered["customer"] == a and b not in json.dumps(tampered)
    hostile = client_a.get("/api/sources", params={"q": f"' OR customer_id = '{b}' --", "sort": "customer_id;drop"})
    assert hostile.status_code == 200 and b not in hostile.text
    api = TestClient(app)  # by API: the bearer token decides, nothing else
    assert api.get("/api/overview").status_code == 401
    assert api.get("/api/overview", headers={"Authorization": "Bearer nope"}).status_code == 401
    as_b = api.get("/api/overview", headers={"Authorization": f"Bearer {token_b}"}).json()
    assert as_b["customer"] == b and a not in json.dumps(as_b)
    assert TestClient(app).get("/", follow_redirects=False).headers["location"] == "/login"
    guest = TestClient(app)
    bad_login = guest.post("/login", data={"token": token_a + "x", "csrf": csrf_of(guest.get("/login").text)})
    assert bad_login.status_code == 401 and token_a not in bad_login.text


def test_row_level_security_holds_even_for_sql_without_a_customer_filter(stack, tenants):
    a, _, b, _ = _ids(tenants)
    with psycopg.connect(stack.database_url) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE pipeline_web")
        conn.execute("SELECT set_config('pipeline.customer', %s, true)", (a,))
        seen = {r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM telemetry_events").fetchall()}
        seen |= {r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM daily_source_summary").fetchall()}
        seen |= {r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM daily_domain_compliance").fetchall()}
        for table in ("daily_domain_services", "service_summary", "customer_summary", "daily_reports"):
            seen |= {r[0] for r in conn.execute(sql.SQL("SELECT customer_id FROM {}").format(sql.Identifier(table)))}
        assert seen == {a}
        for table in ("customer_events", "alerts", "service_marks"):  # others' choices and alerts: not one row
            rows = conn.execute(sql.SQL("SELECT customer_id FROM {}").format(sql.Identifier(table))).fetchall()
            assert {r[0] for r in rows} <= {a}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM tenants")
    with psycopg.connect(stack.database_url) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE pipeline_web")  # no customer set: nothing at all
        assert conn.execute("SELECT count(*) FROM telemetry_events").fetchone()[0] == 0


def test_an_empty_tenant_sees_explaining_empty_states(app, stack):
    lonely = new_customer()
    client = _signed_in(app, issue_token(stack.database_url, lonely))
    assert "No DMARC reports have been imported" in client.get("/").text
    assert "No domains yet" in client.get("/domains").text
    assert "No sending sources yet" in client.get("/sources").text
