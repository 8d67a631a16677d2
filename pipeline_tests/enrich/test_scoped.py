"""A run caused by new reports of one customer enriches that customer's days only (issue #22): it
neither reads nor lists nor publishes another customer's objects of the same day; the raw
sensor's run requests name the customers with new reports; a backfill still takes them all."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import DagsterInstance, build_sensor_context

from pipeline.collector.collect import collect
from pipeline.collector.spool import Spool
from pipeline.defs.raw.sensors import raw_telemetry_sensor
from pipeline.defs.resources import resource_defs
from pipeline.enrich.spark import enrich_days_in_process
from pipeline_tests.security import hostile
from pipeline_tests.support import new_customer


def _report(tmp_path, day: dt.date, report_id: str, records: int):
    begin = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
    path = tmp_path / f"{report_id}.xml"
    path.write_bytes(hostile.report_xml(records=records, begin=begin, report_id=report_id, org_name="Receiver"))
    return path


def _published(s3, stack, day) -> dict[str, str]:
    listed = s3.list_objects_v2(Bucket=stack.enriched_bucket, Prefix=f"{stack.enriched_prefix}dt={day}/")
    return {o["Key"]: o["ETag"] for o in listed.get("Contents", [])}


def test_a_run_for_one_customers_new_report_leaves_the_others_alone(stack, clients, tmp_path, empty_queues):
    s3 = clients("s3")
    a, b = new_customer(), new_customer()
    day = dt.date(2019, 1, 1) + dt.timedelta(days=random.SystemRandom().randrange(5 * 365 - 2))
    collect([_report(tmp_path, day, f"a1-{a}", 2)], a, stack, Spool(tmp_path / "sa"))
    collect([_report(tmp_path, day, f"b1-{b}", 3)], b, stack, Spool(tmp_path / "sb"))
    enrich_days_in_process(stack, s3, [day.isoformat()], f"all-{uuid.uuid4().hex[:8]}")  # a backfill: everyone
    before = _published(s3, stack, day)
    assert before

    collect([_report(tmp_path, day, f"a2-{a}", 4)], a, stack, Spool(tmp_path / "sa"))
    collect([_report(tmp_path, day, f"b2-{b}", 5)], b, stack, Spool(tmp_path / "sb"))  # not in the run's scope
    [result] = enrich_days_in_process(stack, s3, [day.isoformat()], f"one-{uuid.uuid4().hex[:8]}", customers=[a])
    assert result.rows_read == 4  # a's new report, and nothing of b's, nor a's first one
    assert result.listed_objects == 2 and result.skipped_objects == 1
    assert result.customers == [a] and result.rows_match
    assert len(result.written) == 1 and not result.unchanged and not result.removed
    after = _published(s3, stack, day)
    assert {k: after[k] for k in before} == before  # published objects: not rewritten, not removed
    frame = pq.read_table(
        pa.BufferReader(s3.get_object(Bucket=stack.enriched_bucket, Key=result.written[0])["Body"].read())
    )
    assert set(frame.column("customer_id").to_pylist()) == {a}


def test_the_raw_sensor_names_the_customers_with_new_reports(stack, clients, tmp_path):
    instance = DagsterInstance.ephemeral()
    with build_sensor_context(instance=instance, resources=resource_defs()) as context:
        baseline = raw_telemetry_sensor(context)
    a = new_customer()
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    collect([_report(tmp_path, day, f"n-{a}", 1)], a, stack, Spool(tmp_path / "s"))
    with build_sensor_context(instance=instance, resources=resource_defs(), cursor=baseline.cursor) as context:
        result = raw_telemetry_sensor(context)
    [request] = [r for r in result.run_requests if r.tags["dagster/asset_partition_range_start"] <= day.isoformat()]
    customers = request.run_config["ops"]["enriched_telemetry"]["config"]["customers"]
    assert a in customers and len(customers) < 50  # the customers with new objects, not everyone
