"""Row-level security as defence in depth (issue #21, low): the web application logs in as
pipeline_web_login, which reads no table by itself and reaches other tenants through no SQL;
RLS is forced on every tenant table; service policies name their role."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pipeline.warehouse.projections import PROJECTION_TABLES
from pipeline.web.app import create_app
from pipeline.web.queries import web_database_url
from pipeline.web.tenants import issue_token, sign_in
from pipeline_tests.support import customer_with_reports, new_customer

# every table row-level security guards: the events, the projections, alerts and customer events
TENANT_TABLES = ["telemetry_events", *PROJECTION_TABLES, "alerts", "customer_events"]


@pytest.fixture(scope="module")
def two_tenants(stack, clients):
    a, b = new_customer(), new_customer()
    customer_with_reports(stack, clients("s3"), a, objects=1, rows=10)
    customer_with_reports(stack, clients("s3"), b, objects=1, rows=10)
    return {"a": a, "b": b, "token_a": issue_token(stack.database_url, a)}


def test_the_web_application_logs_in_as_its_own_role(stack):
    app = create_app(stack, secret="roles")
    try:
        with app.state.warehouse.service() as conn:
            assert conn.execute("SELECT current_user").fetchone()["current_user"] == "pipeline_web_login"
    finally:
        app.state.warehouse.close()


@pytest.mark.parametrize("table", [*TENANT_TABLES, "tenants", "web_sessions", "load_ledger", "import_inbox"])
def test_outside_a_tenant_the_login_role_reads_no_table(stack, two_tenants, table):
    with (
        psycopg.connect(web_database_url(stack.database_url)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"SELECT count(*) FROM {table}")


def test_in_a_tenant_the_login_role_sees_and_writes_only_that_tenant(stack, two_tenants):
    a, b = two_tenants["a"], two_tenants["b"]
    with psycopg.connect(web_database_url(stack.database_url)) as conn:
        conn.execute("SELECT set_config('role', 'pipeline_web', true), set_config('pipeline.customer', %s, true)", (a,))
        seen = {r[0] for r in conn.execute("SELECT DISTINCT customer_id FROM telemetry_events").fetchall()}
        assert seen == {a}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # a row-level security violation
            conn.execute(
                "INSERT INTO customer_events (customer_id, kind, subject) VALUES (%s, 'service_marked', 'x')", (b,)
            )
        conn.rollback()
        conn.execute("SELECT set_config('role', 'pipeline_web', true), set_config('pipeline.customer', %s, true)", (a,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT webhook_secret FROM tenants")
        conn.rollback()
        conn.execute("SELECT set_config('role', 'pipeline_web', true), set_config('pipeline.customer', %s, true)", (a,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE telemetry_events SET message_count = 0")


def test_a_session_starts_only_with_a_live_token(stack, two_tenants):
    with psycopg.connect(web_database_url(stack.database_url)) as conn:
        assert sign_in(conn, "not-a-token") is None
        assert sign_in(conn, two_tenants["token_a"])[0] == two_tenants["a"]
    with psycopg.connect(stack.database_url) as conn:  # of the functions that run as the owner, only web_*
        callable_ = {
            r[0]
            for r in conn.execute(
                "SELECT proname FROM pg_proc WHERE prosecdef AND pronamespace = 'public'::regnamespace "
                "AND (has_function_privilege('pipeline_web_login', oid, 'EXECUTE') "
                "OR has_function_privilege('pipeline_web', oid, 'EXECUTE'))"
            ).fetchall()
        }
    assert callable_ and all(name.startswith("web_") for name in callable_), callable_


def test_rls_is_forced_and_service_policies_name_their_role(stack):
    with psycopg.connect(stack.database_url) as conn:
        forced = dict(
            conn.execute(
                "SELECT relname, relforcerowsecurity FROM pg_class WHERE relname = ANY(%s) AND relkind IN ('r', 'p')",
                (TENANT_TABLES,),
            ).fetchall()
        )
        policies = conn.execute(
            "SELECT tablename, policyname, roles::text[] FROM pg_policies WHERE tablename = ANY(%s)", (TENANT_TABLES,)
        ).fetchall()
    assert forced == dict.fromkeys(TENANT_TABLES, True)
    assert all("public" not in roles for _, _, roles in policies), policies
    service = {t: roles for t, name, roles in policies if name == "pipeline_service"}
    assert service == dict.fromkeys(TENANT_TABLES, ["pipeline_service"])


def test_an_operator_role_sees_rows_only_as_a_member_of_pipeline_service(stack, two_tenants):
    role = f"ops_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT ON telemetry_events TO "{role}"')
    url = web_database_url(stack.database_url).replace("pipeline_web_login@", f"{role}@")
    try:
        with psycopg.connect(url) as ops:
            assert ops.execute("SELECT count(*) FROM telemetry_events").fetchone()[0] == 0
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'GRANT pipeline_service TO "{role}"')
        with psycopg.connect(url) as ops:
            assert ops.execute("SELECT count(*) FROM telemetry_events").fetchone()[0] > 0
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f'REVOKE ALL ON telemetry_events FROM "{role}"')
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
