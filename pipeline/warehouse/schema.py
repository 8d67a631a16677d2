"""Versioned warehouse migrations, applied idempotently.

Each ``migrations/NNNN_name.sql`` runs once, in order, in its own transaction, recorded in
``schema_migrations``. An advisory lock makes concurrent ``migrate`` calls (two ``pipeline up``,
an importer starting beside the CLI) safe. A migration that changed after it was applied is
reported: edit history by adding a migration, never by rewriting one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pipeline.warehouse.partitions import ensure_ahead

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x44_4D_41_52_43  # "DMARC"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationDrift(RuntimeError):
    pass


def migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        found.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"Two migrations share a version number in {folder}: {versions}")
    return found


def migrate(database_url: str, folder: Path = MIGRATIONS) -> list[int]:
    """Apply pending migrations; return the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                version: checksum
                for version, checksum in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            }
            for migration in migrations(folder):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationDrift(
                            f"Migration {migration.version:04d}_{migration.name} changed after it "
                            "was applied. Revert the edit and add a new migration instead."
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("warehouse migration applied version=%04d name=%s", migration.version, migration.name)
                applied_now.append(migration.version)
            if conn.execute("SELECT to_regprocedure('ensure_event_partitions(date, date)')").fetchone()[0]:
                ensure_ahead(conn)  # this month's partition and the next ones, before any load needs them
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def current_version(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])
