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


def test_reports_are_spaced_by_the_run_interval_and_intake_goes_on_between(stack, tmp_path, monkeypatch):
    """The sensor ticks every 5 s, so that a report after a quiet spell is enriched at once; once
    its burst (PIPELINE_RAW_RUN_BURST) is spent, a tick within PIPELINE_RAW_RUN_INTERVAL_S of the
    last report holds what is new (its intake still records it), and the first tick past the
    interval reports it and requests its run."""
    import json
    import time

    import psycopg

    instance = DagsterInstance.ephemeral()
    baseline = json.loads(tick(instance).cursor)  # whatever earlier tests collected ...
    baseline["tokens_at"] = None  # ... long ago: a quiet spell
    monkeypatch.setenv("PIPELINE_RAW_RUN_INTERVAL_S", "4")
    monkeypatch.setenv("PIPELINE_RAW_RUN_BURST", "2")
    sample = SAMPLES / "example.net!example.com!1529366400!1529452799.xml"
    first, second = f"c-{uuid.uuid4().hex[:10]}", f"c-{uuid.uuid4().hex[:10]}"
    collect([sample], first, stack, Spool(tmp_path / "a"))
    burst = tick(instance, json.dumps(baseline))  # after a quiet spell: at once
    assert any(first in e.metadata["customers"].value for e in burst.asset_events) and burst.run_requests
    third = f"c-{uuid.uuid4().hex[:10]}"
    collect([sample], third, stack, Spool(tmp_path / "c"))
    reported = tick(instance, burst.cursor)  # the burst's second report: at once too
    assert [e.metadata["customers"].value for e in reported.asset_events] == [[third]]
    collect([sample], second, stack, Spool(tmp_path / "b"))
    held = tick(instance, reported.cursor)
    assert held.asset_events == [] and not held.run_requests
    assert "PIPELINE_RAW_RUN_INTERVAL_S" in held.skip_reason.skip_message
    with psycopg.connect(stack.database_url) as conn:  # taken in all the same: the queue does not pile up
        assert conn.execute("SELECT count(*) FROM raw_inbox WHERE customer_id = %s", (second,)).fetchone()[0] == 1
    assert json.loads(held.cursor)["reported"] == json.loads(reported.cursor)["reported"]
    time.sleep(max(0.0, 4.1 - (time.time() - json.loads(reported.cursor)["reported_at"])))
    later = tick(instance, held.cursor)
    assert [e.metadata["customers"].value for e in later.asset_events] == [[second]]
    assert [r.run_config["ops"]["enriched_telemetry"]["config"]["customers"] for r in later.run_requests] == [[second]]
