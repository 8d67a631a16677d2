"""QueueDepthRunLauncher in the real Dagster daemon: a flood of objects becomes sensor runs that
the daemon launches through it; capacity rises, the queue drains, capacity returns to zero.
And a capacity API error never costs a launch."""

from __future__ import annotations

import uuid

import pytest

from pipeline.importer.verify import verify
from pipeline.local.daemon import running_daemon
from pipeline.scaling.backends import LocalWorkerPool
from pipeline.scaling.controller import recent_decisions
from pipeline_tests.support import flood, messages_for, new_customer, private_queue, wait_for


@pytest.fixture
def daemon(stack, clients):
    # Its own queue: the shared one holds other tests' leftovers (a poison object stays in flight
    # for minutes), which would rightly keep capacity above zero.
    queue_url = private_queue(clients("sqs"), f"launcher-{uuid.uuid4().hex[:8]}")
    env = {
        "PIPELINE_IMPORT_QUEUE_URL": queue_url,
        "PIPELINE_CAPACITY_SENSOR_INTERVAL_S": "5",
        "PIPELINE_SCALING_TARGET_PER_WORKER": "10",
        "PIPELINE_SCALING_MAX": "2",
        "PIPELINE_SCALING_COOLDOWN_S": "20",
        # The sensor takes in 5 notifications a tick: the rest wait on SQS, which is the workers'
        # work (the rows it hands to runs are the runs', and never size the workers: #24).
        "PIPELINE_SENSOR_MAX_MESSAGES": "5",
    }
    with running_daemon(stack, env) as running:
        yield running, queue_url
    clients("sqs").delete_queue(QueueUrl=queue_url)


def test_daemon_launches_through_the_scaling_launcher_and_returns_to_zero(stack, clients, daemon):
    daemon, queue_url = daemon
    workers = daemon.workers
    customer = new_customer()
    flood(stack, clients("s3"), clients("sqs"), queue_url, customer, objects=30, rows=50)
    for message in messages_for(clients("sqs"), stack.queue_url, customer):  # the bucket's own copies
        clients("sqs").delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def loaded():
        daemon.check()
        report = verify(stack, customer)
        return report["objects_loaded"] == 30 and report["missing"] == 0

    try:
        wait_for(loaded, timeout=240, interval=2, what="the flood to be imported")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the daemon's log ends:\n{daemon.log_tail(6000)}") from None
    report = verify(stack, customer)
    assert report["duplicates"] == 0

    key = f"local:{workers.absolute()}"
    decisions = recent_decisions(stack.database_url, key, 200)
    launches = [d for d in decisions if d["trigger"].startswith("launch ")]
    assert launches, "no run went through QueueDepthRunLauncher"
    assert max(d["desired"] for d in decisions) >= 1, "capacity never rose for the notifications waiting on SQS"

    (reported,) = daemon.query("SELECT count(*) FROM event_logs WHERE event LIKE '%capacity local%'")
    assert reported >= len(launches), "the decision is not on the runs' event logs"

    def back_to_zero():
        latest = recent_decisions(stack.database_url, key, 1)
        return latest and latest[0]["desired"] == 0 and not LocalWorkerPool(workers).workers()

    try:
        wait_for(back_to_zero, timeout=120, interval=2, what="capacity to return to zero after the cooldown")
    except AssertionError as exc:
        recent = [
            (d["trigger"][:20], d["backlog"], d["desired"], d["reason"])
            for d in recent_decisions(stack.database_url, key, 5)
        ]
        raise AssertionError(f"{exc}; last decisions: {recent}") from None


def test_a_capacity_api_error_is_reported_on_the_run_and_the_run_still_launches(stack):
    from dagster._core.test_utils import create_run_for_test, instance_for_test

    group = f"no-such-group-{uuid.uuid4().hex[:6]}"
    overrides = {
        "run_launcher": {
            "module": "pipeline.scaling.launcher",
            "class": "QueueDepthRunLauncher",
            "config": {
                # stands in for the process-spawning part only; the capacity API error is moto's
                "inner_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"},
                "backend": "asg",
                "asg_name": group,
            },
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        run = create_run_for_test(instance, job_name="import_objects")
        instance.launch_run(run.run_id, workspace=None)
        assert [r.run_id for r in instance.run_launcher.inner.queue()] == [run.run_id]
        messages = [e.message for e in instance.all_logs(run.run_id)]
        assert any("NOT applied after 3 attempts" in m and group in m for m in messages), messages

    decisions = recent_decisions(stack.database_url, f"asg:{group}", 5)
    assert decisions and decisions[0]["applied"] is False and "not found" in decisions[0]["error"]


def test_enrichment_runs_are_sized_whatever_started_them():
    """ecs/cpu and ecs/memory reach EcsRunLauncher for every enrichment run: a sensor's (stage tag)
    and a UI backfill's (no tag, the asset selected) alike; a run's own tags win; imports keep the
    run task's size."""
    from dagster import AssetKey, DagsterInstance, job, op
    from dagster._core.launcher.base import LaunchRunContext

    from pipeline import names
    from pipeline.scaling.launcher import QueueDepthRunLauncher, size_tags

    sizes = {"enrich": {"cpu": 2048, "memory": 8192}}
    enriched, events = [AssetKey(names.ENRICHED_TELEMETRY)], [AssetKey(names.TELEMETRY_EVENTS)]
    assert size_tags({names.STAGE_TAG: "enrich"}, [], sizes) == {"ecs/cpu": "2048", "ecs/memory": "8192"}
    assert size_tags({}, enriched, sizes) == {"ecs/cpu": "2048", "ecs/memory": "8192"}  # a UI backfill
    assert size_tags({"ecs/memory": "16384"}, enriched, sizes) == {"ecs/cpu": "2048"}
    assert size_tags({}, events, sizes) == {} and size_tags({names.STAGE_TAG: "import"}, [], sizes) == {}

    @op
    def nothing():
        pass

    @job
    def some_job():
        nothing()

    instance = DagsterInstance.ephemeral()
    run = some_job.execute_in_process(instance=instance, tags={names.STAGE_TAG: "enrich"}).dagster_run

    class Recorder:
        launched: list = []

        def launch_run(self, context):
            Recorder.launched.append(context.dagster_run)

        def register_instance(self, instance):
            pass

    launcher = QueueDepthRunLauncher(task_sizes=sizes)
    launcher.register_instance(instance)
    launcher._inner = Recorder()
    launcher.scale = lambda *args, **kwargs: None  # no capacity decision in this test
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    [launched] = Recorder.launched
    assert launched.tags["ecs/cpu"] == "2048" and launched.tags["ecs/memory"] == "8192"
    assert instance.get_run_by_id(run.run_id).tags["ecs/cpu"] == "2048"  # on the run, for the UI too
