"""raw_telemetry_sensor reports what the collector wrote, once."""

from __future__ import annotations

import uuid

from dagster import AssetKey, DagsterInstance, build_sensor_context

from pipeline.collector.collect import collect
from pipeline.collector.spool import Spool
from pipeline.defs.raw.sensors import raw_telemetry_sensor
from pipeline.defs.resources import resource_defs
from pipeline_tests.support import SAMPLES


def tick(instance, cursor=None):
    with build_sensor_context(instance=instance, resources=resource_defs(), cursor=cursor) as context:
        return raw_telemetry_sensor(context)


def test_sensor_reports_new_raw_objects_once(stack, tmp_path, monkeypatch):
    instance = DagsterInstance.ephemeral()
    baseline = tick(instance)  # whatever earlier tests collected
    cid = f"c-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PIPELINE_FIRST_DAY", "1970-01-01")  # a collector that accepts 1979 ...
    collect([SAMPLES], cid, stack, Spool(tmp_path / "spool"))
    result = tick(instance, baseline.cursor)  # ... beside a calendar from 2012 (this process's default)
    ours = [e for e in result.asset_events if cid in e.metadata["customers"].value]
    assert sum(e.metadata["objects"].value for e in ours) == 11  # every sample but rfc9990's (1979)
    assert sum(e.metadata["records"].value for e in ours) == 12
    assert sum(e.metadata["messages"].value for e in ours) == 13
    assert "2018-10-06" in {e.partition for e in ours} and "1979-08-07" not in {e.partition for e in ours}
    assert all(e.asset_key.to_user_string() == "raw_telemetry" for e in result.asset_events)
    # Nothing new: nothing reported, cursor unchanged.
    again = tick(instance, result.cursor)
    assert again.asset_events == [] and again.cursor == result.cursor


def test_enrichment_requests_resolve_the_way_the_daemon_resolves_them(stack, tmp_path):
    """Through SensorDefinition.evaluate_tick (what the daemon's code server calls), which
    refuses run requests of a sensor that names no target."""
    instance = DagsterInstance.ephemeral()
    baseline = tick(instance)
    collect([SAMPLES], f"c-{uuid.uuid4().hex[:10]}", stack, Spool(tmp_path / "spool"))
    from pipeline.definitions import defs

    with build_sensor_context(
        instance=instance, resources=resource_defs(), cursor=baseline.cursor, definitions=defs
    ) as context:
        data = raw_telemetry_sensor.evaluate_tick(context)
    assert data.run_requests
    assert all(list(r.asset_selection) == [AssetKey("enriched_telemetry")] for r in data.run_requests)
