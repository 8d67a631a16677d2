"""The shipped dagster.yaml's storage: dagster-postgres holding pooled connections."""

from __future__ import annotations

import shutil

from dagster import AssetKey, AssetMaterialization, DagsterInstance
from sqlalchemy import event

from pipeline.instance import PooledPostgresStorage
from pipeline.project import REPO_ROOT
from pipeline.settings import dagster_sqlalchemy_url
from pipeline_tests.support import traversable_tmpdir


def test_the_shipped_instance_writes_many_events_on_one_connection(stack, monkeypatch):
    home = traversable_tmpdir("dagster-instance-")
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_DATABASE_URL", dagster_sqlalchemy_url(stack.dagster_database_url))
    instance = DagsterInstance.get()
    try:
        assert isinstance(instance.get_ref().storage_data.rehydrate(), PooledPostgresStorage)
        connects: list[int] = []
        event.listen(instance.event_log_storage._engine, "connect", lambda *_: connects.append(1))
        for n in range(20):
            instance.report_runless_asset_event(AssetMaterialization(AssetKey("pool_probe"), metadata={"n": n}))
        # dagster-postgres's own storage connects once per event stored (and again per index write)
        assert len(connects) <= 2, f"{len(connects)} connections for 20 events"
        latest = instance.get_latest_materialization_event(AssetKey("pool_probe"))
        assert latest.asset_materialization.metadata["n"].value == 19
    finally:
        instance.dispose()
        shutil.rmtree(home, ignore_errors=True)
