"""Warehouse migrations against the real PostgreSQL of the local stack."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pipeline.local.postgres import ensure_database, sibling_database_url
from pipeline.telemetry import ENRICHED_FIELDS, PG_TYPES
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
    assert dict(rows) == {name: PG_TYPES[kind] for name, kind in ENRICHED_FIELDS.items()}


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
