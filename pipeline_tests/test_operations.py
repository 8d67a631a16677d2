"""A failed run reaches the operator (issue #24): run_failure_alerts posts it to the operations
webhook and publishes it to the operations SNS topic (here moto's, subscribed by a queue)."""

from __future__ import annotations

import http.server
import json
import os
import threading
import urllib.error
import uuid
from unittest import mock

import pytest
from dagster import AssetKey, DagsterInstance, build_run_status_sensor_context, job, op

from pipeline import names
from pipeline.defs.operations.sensors import run_failure_alerts


@op
def breaks():
    raise RuntimeError("the warehouse refused the COPY (test)")


@job
def failing_job():
    breaks()


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):
        _Hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(500 if self.path == "/fail" else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.bodies = []
    yield f"http://127.0.0.1:{server.server_port}/ops", _Hook.bodies
    server.shutdown()


def _failed_run_context():
    instance = DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(
        instance=instance, raise_on_error=False, tags={names.STAGE_TAG: "import", names.RANGE_START_TAG: "a~1"}
    )
    assert not result.success
    return result.dagster_run, build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()


def test_a_failed_run_is_posted_to_the_webhook_and_published_to_sns(stack, clients, webhook, caplog):
    url, bodies = webhook
    sns, sqs = clients("sns"), clients("sqs")
    topic = sns.create_topic(Name=f"ops-{uuid.uuid4().hex[:8]}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"ops-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    run, context = _failed_run_context()
    knobs = {"PIPELINE_OPS_WEBHOOK_URL": url, "PIPELINE_OPS_SNS_TOPIC_ARN": topic}
    with mock.patch.dict(os.environ, knobs), caplog.at_level("WARNING", logger="pipeline.defs.operations.sensors"):
        run_failure_alerts(context)
    [posted] = bodies
    assert posted["run_id"] == run.run_id and posted["job"] == "failing_job" and posted["stage"] == "import"
    assert "the warehouse refused the COPY" in posted["error"] and posted["partition_range"][0] == "a~1"
    got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5).get("Messages", [])
    assert got and json.loads(json.loads(got[0]["Body"])["Message"])["run_id"] == run.run_id
    line = next(r.getMessage() for r in caplog.records if "run failed" in r.getMessage())
    assert f"run_id={run.run_id}" in line and "stage=import" in line and "notified=webhook,sns" in line


def test_a_webhook_that_fails_fails_the_tick_so_the_run_is_handed_over_again(webhook):
    url, bodies = webhook
    _, context = _failed_run_context()
    failing = {"PIPELINE_OPS_WEBHOOK_URL": url.replace("/ops", "/fail")}
    with mock.patch.dict(os.environ, failing), pytest.raises(urllib.error.HTTPError):
        run_failure_alerts(context)
    assert len(bodies) == 1  # it was tried


def test_the_warehouse_asset_says_when_imports_stop():
    """telemetry_events carries a freshness policy (Dagster's freshness daemon evaluates it): failing
    after PIPELINE_IMPORT_FRESHNESS_HOURS without an import, a warning at half of it; and an owner."""
    from pipeline import config
    from pipeline.definitions import defs

    spec = defs.resolve_assets_def("telemetry_events").get_asset_spec(AssetKey("telemetry_events"))
    hours = config.get("PIPELINE_IMPORT_FRESHNESS_HOURS")
    policy = spec.freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta().total_seconds() == hours * 3600
    assert policy.warn_window.to_timedelta().total_seconds() == hours * 1800
    assert spec.owners == ["team:data-platform"]
