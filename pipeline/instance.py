"""Dagster instance storage for this project: dagster-postgres, holding pooled connections.

dagster-postgres opens a new PostgreSQL connection for every event it stores and every query it
runs (a ``NullPool``), except in the webserver, which calls ``optimize_for_webserver``. The
daemon is as long-lived as the webserver and writes far more: when it creates a run of 500
object partitions it stores 500 planned-materialization events one by one (dagster-postgres
batches only materializations and observations), each on a fresh connection: ~2.5 s of
connects per import run here. This storage is ``DagsterPostgresStorage`` that holds a small
pool in every process that loads the instance (daemon, webserver, run workers, code servers).

dagster.yaml::

    storage:
      custom:
        module: pipeline.instance
        class: PooledPostgresStorage
        config:            # dagster-postgres's own storage config, plus the pool settings
          postgres_url: {env: DAGSTER_DATABASE_URL}
          max_overflow: 4
"""

from __future__ import annotations

from dagster import Field, IntSource
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_config, pg_url_from_config

POOL_FIELDS = {
    "max_overflow": Field(IntSource, default_value=4, description="Connections beyond the one held."),
    "pool_recycle": Field(IntSource, default_value=3600, description="Seconds before a held connection is renewed."),
    "statement_timeout": Field(
        IntSource, default_value=0, description="Milliseconds per statement; 0 for PostgreSQL's own setting."
    ),
}


class PooledPostgresStorage(DagsterPostgresStorage):
    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider=None,
        max_overflow: int = 4,
        pool_recycle: int = 3600,
        statement_timeout: int = 0,
    ):
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        # Pools connect lazily: a process that never touches one of the three holds nothing.
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            storage.optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)

    @classmethod
    def config_type(cls):
        return {**pg_config(), **POOL_FIELDS}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            max_overflow=config_value.get("max_overflow", 4),
            pool_recycle=config_value.get("pool_recycle", 3600),
            statement_timeout=config_value.get("statement_timeout", 0),
        )
