"""The run queue's limits match the runs (issue #24, defects 1 and 2): a run created by each
sensor carries its pipeline/stage tag, which the production limits select, and its retry tag, so
that each retry has one owner (import runs: none, the inbox backs off; enrichment: one)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import yaml
from dagster import DagsterInstance

from pipeline import names
from pipeline.collector.collect import collect
from pipeline.collector.spool import Spool
from pipeline.defs.importer.reconcile import import_reconciler
from pipeline.defs.importer.sensors import import_queue_sensor
from pipeline.defs.raw.sensors import raw_telemetry_sensor
from pipeline.project import REPO_ROOT
from pipeline_tests.security import hostile
from pipeline_tests.support import flood, new_customer, private_queue, sensor_tick, with_queue

PRODUCTION = yaml.safe_load((REPO_ROOT / "deploy" / "dagster" / "dagster.yaml").read_text())


def limited_stages() -> set[str]:
    limits = PRODUCTION["run_coordinator"]["config"]["tag_concurrency_limits"]
    return {limit["value"] for limit in limits if limit["key"] == names.STAGE_TAG}


def test_every_sensors_runs_carry_their_stage_and_retry_tags(stack, clients, tmp_path: Path, monkeypatch):
    s3, sqs = clients("s3"), clients("sqs")
    instance = DagsterInstance.ephemeral()
    # the raw sensor's enrichment runs
    baseline = sensor_tick(instance, raw_telemetry_sensor)
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    begin = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
    report = tmp_path / "r.xml"
    report.write_bytes(hostile.report_xml(begin=begin, report_id=f"tags-{uuid.uuid4().hex[:8]}"))
    collect([report], new_customer(), stack, Spool(tmp_path / "spool"))
    enrich = sensor_tick(instance, raw_telemetry_sensor, baseline.cursor).run_requests
    # the import sensor's runs, on a queue of its own
    queue_url = private_queue(sqs, f"tags-{uuid.uuid4().hex[:8]}")
    settings = with_queue(stack, queue_url)
    monkeypatch.setenv("PIPELINE_IMPORT_QUEUE_URL", queue_url)
    flood(settings, s3, sqs, queue_url, new_customer(), objects=3, rows=5)
    imports = sensor_tick(instance, import_queue_sensor).run_requests
    # the reconciler's runs
    reconcile = sensor_tick(instance, import_reconciler).run_requests
    sqs.delete_queue(QueueUrl=queue_url)

    assert enrich and imports and reconcile
    for requests, stage in ((enrich, "enrich"), (imports, "import"), (reconcile, "reconcile")):
        for request in requests:
            assert request.tags[names.STAGE_TAG] == stage, (stage, request.tags)
            assert request.tags[names.RETRIES_TAG] == names.STAGE_TAGS[stage][names.RETRIES_TAG]
    assert {"enrich", "import"} <= limited_stages()  # the production limits select those runs
    assert (
        "pipeline/stage"
        in PRODUCTION["run_launcher"]["config"]["inner_launcher"]["config"]["propagate_tags"]["allow_list"]
    )


def test_each_retry_has_one_owner():
    assert names.STAGE_TAGS["import"][names.RETRIES_TAG] == "0"  # the inbox backs off and counts
    assert PRODUCTION["run_retries"]["max_retries"] == int(names.STAGE_TAGS["enrich"][names.RETRIES_TAG])
    assert PRODUCTION["run_retries"]["retry_on_asset_or_op_failure"]  # an enrichment failure is retried once
