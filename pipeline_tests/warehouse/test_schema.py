"""Warehouse migrations against the real PostgreSQL of the local stack."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pipeline.local.postgres import ensure_database, sibling_database_url
from pipeline.telemetry import EVENT_PG_TYPES
from pipeline.warehouse.schema import MigrationDrift, current_version, migrate, migrations

CLAIM = "INSERT INTO load_ledger (event, bucket, object_key, object_version) VALUES ('loaded', 'b', 'k', 'v')"


@pytest.fixture
def scratch_db(stack):
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    ensure_database(stack.database_url, name)
    url = sibling_database_url(stack.database_url, name)
    yield url
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_migrations_apply_once_in_order(scratch_db):
    versions = [m.version for m in migrations()]
    assert migrate(scratch_db) == versions
    assert migrate(scratch_db) == []
    assert current_version(scratch_db) == versions[-1]


def test_edited_migration_is_reported(scratch_db, tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_one.sql").write_text("CREATE TABLE one (x int);")
    migrate(scratch_db, folder)
    (folder / "0001_one.sql").write_text("CREATE TABLE one (x bigint);")
    with pytest.raises(MigrationDrift, match="0001_one"):
        migrate(scratch_db, folder)


def test_events_table_has_the_enriched_schema(warehouse):
    rows = warehouse.execute(
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_name = 'telemetry_events' AND column_name <> 'ledger_id'"""
    ).fetchall()
    assert dict(rows) == EVENT_PG_TYPES and EVENT_PG_TYPES["event_id"] == "uuid"


def test_ledger_is_append_only(scratch_db):
    migrate(scratch_db)
    with psycopg.connect(scratch_db) as conn:
        conn.execute(CLAIM)
        conn.commit()
        for statement in (
            "UPDATE load_ledger SET rows = 1",
            "DELETE FROM load_ledger",
            "TRUNCATE load_ledger CASCADE",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()
        # A version may be loaded again (X, Y, X: it is live again), as a new row ...
        (again,) = conn.execute(CLAIM + " RETURNING ledger_id").fetchone()
        conn.commit()
        # ... but a load is ended at most once.
        end = (
            "INSERT INTO load_ledger (event, bucket, object_key, object_version, refers_to) "
            "VALUES ('superseded', 'b', 'k', 'v2', %s)"
        )
        conn.execute(end, (again,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(end, (again,))


def _migrations_before(tmp_path, version: int):
    """A folder holding the migrations older than ``version``: a warehouse as it was before it."""
    import shutil

    from pipeline.warehouse.schema import MIGRATIONS

    folder = tmp_path / f"before-{version:04d}"
    folder.mkdir()
    for m in migrations():
        if m.version < version:
            shutil.copy(MIGRATIONS / f"{m.version:04d}_{m.name}.sql", folder)
    return folder


def _from_on(version: int) -> list[int]:
    """The versions a warehouse at `version - 1` applies to reach today's schema: the tests of one
    migration stay true when later ones are added."""
    return [m.version for m in migrations() if m.version >= version]


def test_the_incremental_rollups_migration_on_a_populated_warehouse(scratch_db, tmp_path):
    """Migration 0017 on a warehouse that has events and projections: the rollups it reshapes are
    emptied and every projected slice is marked, so the next refresh rebuilds them from the daily
    rows; the result is what a full rebuild gives."""
    from psycopg import sql

    from pipeline.warehouse.projections import rebuild, refresh

    migrate(scratch_db, _migrations_before(tmp_path, 17))
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        (ledger,) = conn.execute(CLAIM + " RETURNING ledger_id").fetchone()
        conn.execute(
            "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, "
            "trust_score, policy_dkim, policy_spf, dmarc_pass, message_count) "
            "SELECT 'e' || d || '-' || s, %s, 'c1', date '2026-05-01' + d, 'example.com', '192.0.2.' || s, 64500, "
            "0.5, 'pass', 'fail', true, 2 FROM generate_series(0, 9) d, generate_series(1, 5) s",
            (ledger,),
        )
        # projected by the code before 0017 (its daily rows and a rollup row), nothing left dirty
        conn.execute(
            "INSERT INTO daily_source_summary (customer_id, day, source_ip, asn, messages, dmarc_pass) "
            "SELECT 'c1', date '2026-05-01' + d, '192.0.2.' || s, 64500, 2, 2 "
            "FROM generate_series(0, 9) d, generate_series(1, 5) s"
        )
        conn.execute(
            "INSERT INTO source_summary (customer_id, source_ip, messages, dmarc_pass, first_day, last_day) "
            "VALUES ('c1', '192.0.2.1', 20, 20, '2026-05-01', '2026-05-10')"
        )
        conn.execute("DELETE FROM projection_dirty")
    assert migrate(scratch_db, _migrations_before(tmp_path, 18)) == [17]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM source_summary").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM projection_dirty WHERE customer_id = 'c1'").fetchone()[0] == 10
    migrate(scratch_db)  # the later ones: the refresh below is today's code
    refresh(scratch_db)
    tables = ("source_summary", "service_summary", "customer_summary", "daily_source_summary")

    def rows() -> list:
        with psycopg.connect(scratch_db) as conn:
            return [
                sorted(conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(t))).fetchall()) for t in tables
            ]

    refreshed = rows()
    assert len(refreshed[0]) == 5 and refreshed[0][0][8] == 20  # five sources, 10 days x 2 messages each
    rebuild(scratch_db)
    assert rows() == refreshed


def test_the_domain_sources_migration_fills_its_projection_at_the_next_refresh(scratch_db, tmp_path):
    """Migration 0018 (a domain's sources and header_from subdomains, issue #25) on a projected,
    clean warehouse: every projected slice is marked, and the next refresh fills the new table as
    a rebuild does."""
    from pipeline.warehouse.projections import rebuild, refresh

    migrate(scratch_db, _migrations_before(tmp_path, 18))
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        (ledger,) = conn.execute(CLAIM + " RETURNING ledger_id").fetchone()
        conn.execute(
            "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, header_from, "
            "source_ip, policy_dkim, policy_spf, dmarc_pass, message_count) "
            "SELECT 'e' || d || '-' || s, %s, 'c1', date '2026-05-01' + d, 'example.com', "
            "CASE WHEN s = 1 THEN 'news.example.com' ELSE 'example.com' END, '192.0.2.' || s, 'pass', 'fail', "
            "s > 2, 2 FROM generate_series(0, 9) d, generate_series(1, 5) s",
            (ledger,),
        )
        # projected by the code before 0018: its daily rows, nothing left dirty
        conn.execute(
            "INSERT INTO daily_domain_compliance (customer_id, day, policy_domain, reports, messages, dmarc_pass, "
            "dmarc_fail, spf_pass, spf_fail, dkim_pass, dkim_fail, disposition_none, disposition_quarantine, "
            "disposition_reject) SELECT 'c1', date '2026-05-01' + d, 'example.com', 1, 10, 10, 0, 0, 10, 10, 0, "
            "10, 0, 0 FROM generate_series(0, 9) d"
        )
        conn.execute("DELETE FROM projection_dirty")
    assert migrate(scratch_db) == _from_on(18)
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM projection_dirty WHERE customer_id = 'c1'").fetchone()[0] == 10
    refresh(scratch_db)
    query = "SELECT * FROM daily_domain_sources ORDER BY day, header_from, source_ip"
    with psycopg.connect(scratch_db) as conn:
        filled = conn.execute(query).fetchall()
        by_header = conn.execute(
            "SELECT header_from, sum(messages), sum(aligned_pass) FROM daily_domain_sources GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert len(filled) == 50  # 10 days x 5 sources
    assert by_header == [("example.com", 80, 60), ("news.example.com", 20, 0)]
    rebuild(scratch_db)
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute(query).fetchall() == filled


def test_the_partitioning_migration_on_a_populated_warehouse(scratch_db, tmp_path):
    """Migration 0019 (issue #26) on a warehouse of three months of two tenants, projected: every
    row moves to its month's partition with its id as a uuid (the same 128 bits), nothing is left
    to refresh, the projections still equal a rebuild, uniqueness holds per partition, and the web
    role reads its own rows through the parent and no partition directly."""
    from pipeline.warehouse.partitions import partitions
    from pipeline.warehouse.projections import rebuild, refresh

    migrate(scratch_db, _migrations_before(tmp_path, 19))
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        (ledger,) = conn.execute(CLAIM + " RETURNING ledger_id").fetchone()
        conn.execute(  # ids as enrichment writes them: 32 hex characters
            "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, "
            "trust_score, policy_dkim, policy_spf, dmarc_pass, message_count) "
            "SELECT md5(c || d || '-' || s), %s, c, date '2026-03-20' + d * 3, 'example.com', '192.0.2.' || s, "
            "64500, 0.5, 'pass', 'fail', s > 1, 2 "
            "FROM unnest(ARRAY['c1', 'c2']) c, generate_series(0, 19) d, generate_series(1, 5) s",
            (ledger,),
        )
        before = conn.execute(
            "SELECT customer_id, day, event_id, message_count FROM telemetry_events ORDER BY 1, 2, 3"
        ).fetchall()
    refresh(scratch_db)
    projected = _projections(scratch_db)

    assert migrate(scratch_db) == _from_on(19)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        after = conn.execute(
            "SELECT customer_id, day, replace(event_id::text, '-', ''), message_count FROM telemetry_events "
            "ORDER BY 1, 2, 3"
        ).fetchall()
        assert after == before and len(after) == 200
        months = {(p.first_day.year, p.first_day.month) for p in partitions(conn)}
        assert {(2026, 3), (2026, 4), (2026, 5)} <= months  # 2026-03-20 .. 2026-05-16
        placed = conn.execute(
            "SELECT tableoid::regclass::text, min(day), max(day) FROM telemetry_events GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [name for name, _, _ in placed] == [
            "telemetry_events_2026_03",
            "telemetry_events_2026_04",
            "telemetry_events_2026_05",
        ]
        assert all(
            name.endswith(f"{low:%Y_%m}") and (low.year, low.month) == (high.year, high.month)
            for name, low, high in placed
        )
        assert conn.execute("SELECT count(*) FROM projection_dirty").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day) "
                "SELECT event_id, ledger_id, customer_id, day FROM telemetry_events LIMIT 1"
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="no partition"):  # routing refuses it first
            conn.execute(
                "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day) "
                "VALUES (gen_random_uuid(), %s, 'c1', NULL)",
                (ledger,),
            )
    assert _projections(scratch_db) == projected
    rebuild(scratch_db)
    assert _projections(scratch_db) == projected

    with psycopg.connect(scratch_db) as conn:
        conn.execute("SET ROLE pipeline_web")
        conn.execute("SELECT set_config('pipeline.customer', 'c2', false)")
        assert conn.execute("SELECT count(DISTINCT customer_id), count(*) FROM telemetry_events").fetchone() == (1, 100)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM telemetry_events_2026_04")


def _projections(url: str) -> dict:
    tables = ("daily_domain_compliance", "daily_source_summary", "source_summary", "customer_summary")
    from psycopg import sql

    with psycopg.connect(url) as conn:
        return {
            t: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2, 3").format(sql.Identifier(t))).fetchall()
            for t in tables
        }
