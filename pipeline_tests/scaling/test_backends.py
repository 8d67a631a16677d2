"""The same behavioural tests for every capacity backend: local worker processes for real, and
ECS / the auto-scaling group on the moto endpoint (asserting the desired counts AWS would see).

Each test has its own queue and its own capacity pool, so the backlog is only its own.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pipeline.importer.verify import verify
from pipeline.importer.worker import run_worker
from pipeline.scaling.backends import CapacityError
from pipeline.scaling.controller import CapacityController, recent_decisions
from pipeline.scaling.policy import ScalingPolicy
from pipeline.scaling.protection import WorkerProtection
from pipeline_tests.support import (
    flood,
    make_backend,
    messages_for,
    new_customer,
    private_queue,
    traversable_tmpdir,
    wait_for,
    with_queue,
)

POLICY = ScalingPolicy(target_per_worker=4, min_capacity=0, max_capacity=3, scale_in_cooldown_s=120)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "ecs", "asg"])
def pool(request, stack, clients):
    sqs = clients("sqs")
    queue_url = private_queue(sqs, f"scaling-{request.param}-{uuid.uuid4().hex[:8]}")
    settings = with_queue(stack, queue_url)
    folder = traversable_tmpdir("pipeline-workers-")
    backend = make_backend(request.param, clients, settings, folder)
    clock = Clock()
    controller = CapacityController(
        backend, POLICY, stack.database_url, sqs, queue_url, retries=3, retry_delay_s=0.05, clock=clock
    )
    yield request.param, backend, controller, clock, settings
    if request.param == "local":
        backend.stop_all()
    sqs.delete_queue(QueueUrl=queue_url)


def _drop_shared_copies(stack, clients, customer_id):
    sqs = clients("sqs")
    for message in messages_for(sqs, stack.queue_url, customer_id):
        sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])


def _drain(kind, backend, settings, customer_id):
    """Local: the scaled-out worker processes drain the queue. ECS/ASG on moto start no real
    machines, so the importer loop stands in for the workers they would run."""
    if kind == "local":
        wait_for(
            lambda: (lambda r: r["objects_loaded"] == r["objects_enriched"] > 0)(verify(settings, customer_id)),
            timeout=120,
            what="local workers to import the flood",
        )
    else:
        run_worker(settings, drain=True, idle_polls=1)


def test_flood_scales_out_drains_and_returns_to_zero_after_the_cooldown(pool, stack, clients):
    kind, backend, controller, clock, settings = pool
    customer = new_customer()
    flood(settings, clients("s3"), clients("sqs"), settings.queue_url, customer, objects=10)
    _drop_shared_copies(stack, clients, customer)

    out = controller.reconcile("test flood")
    assert out.applied and out.backlog.total == 10
    assert out.desired == 3  # ceil(10 / 4)
    assert backend.capacity().desired == 3
    if kind == "local":
        wait_for(lambda: backend.capacity().running == 3, timeout=30, what="3 local workers")

    _drain(kind, backend, settings, customer)
    report = verify(settings, customer)
    assert report["missing"] == 0 and report["duplicates"] == 0 and report["objects_loaded"] == 10

    clock.now += 30
    held = controller.reconcile("test idle, cooling down")
    assert held.backlog.total == 0 and held.desired == 3 and "cooldown" in held.reason
    assert backend.capacity().desired == 3

    clock.now += POLICY.scale_in_cooldown_s
    down = controller.reconcile("test idle, cooled down")
    assert down.desired == 0 and backend.capacity().desired == 0
    if kind == "local":
        wait_for(lambda: backend.capacity().running == 0, timeout=60, what="local workers to exit")
    elif kind == "asg":
        assert backend.capacity().running == 0
    decisions = recent_decisions(stack.database_url, backend.key, 10)
    assert [d["desired"] for d in reversed(decisions)] == [3, 3, 0]
    assert all(d["backlog"] is not None and d["reason"] for d in decisions)


def test_a_busy_worker_is_never_scaled_in(pool, stack, clients):
    kind, backend, controller, clock, settings = pool
    customer = new_customer()
    flood(settings, clients("s3"), clients("sqs"), settings.queue_url, customer, objects=6)
    _drop_shared_copies(stack, clients, customer)
    assert controller.reconcile("test flood").desired == 2
    if kind == "local":
        wait_for(lambda: backend.capacity().running == 2, timeout=30, what="2 local workers")
        _drain(kind, backend, settings, customer)
        busy_id = sorted(w[0] for w in backend.workers())[-1]  # the one scale-in would pick first
    else:
        run_worker(settings, drain=True, idle_polls=1)
        if kind == "asg":
            group = backend._group()
            busy_id = sorted(i["InstanceId"] for i in group["Instances"])[0]
        else:
            busy_id = f"arn:aws:ecs:{stack.region}:123456789012:task/{backend.cluster}/busy"
    busy = WorkerProtection(stack.database_url, backend, busy_id)
    busy.hold()

    clock.now += POLICY.scale_in_cooldown_s + 1
    decision = controller.reconcile("test idle, one worker busy")
    assert decision.backlog.total == 0
    assert decision.desired == 1 and decision.protected == 1 and "busy" in decision.reason
    assert backend.capacity().desired == 1
    if kind == "local":
        wait_for(lambda: len(backend.workers()) == 1, timeout=60, what="the idle worker to exit")
        assert [w[0] for w in backend.workers()] == [busy_id]
    if kind == "asg":
        group = backend._group()
        assert [i["InstanceId"] for i in group["Instances"]] == [busy_id]
        assert group["Instances"][0]["ProtectedFromScaleIn"] is True

    busy.release()
    clock.now += POLICY.scale_in_cooldown_s + 1
    assert controller.reconcile("test idle, worker done").desired == 0
    assert backend.capacity().desired == 0


class Flaky:
    """The real backend behind a capacity API that fails the first ``failures`` calls."""

    def __init__(self, backend, failures: int):
        self.backend, self.failures, self.calls = backend, failures, 0
        self.name, self.key = backend.name, backend.key

    def capacity(self):
        return self.backend.capacity()

    def protect(self, worker_id, protected):
        return self.backend.protect(worker_id, protected)

    def set_desired(self, desired, protected=frozenset()):
        self.calls += 1
        if self.calls <= self.failures:
            raise CapacityError(f"{self.name}: injected throttling on call {self.calls}")
        return self.backend.set_desired(desired, protected)


def test_a_capacity_api_error_is_retried_then_reported_and_retried_next_time(pool, stack, clients):
    kind, backend, controller, clock, settings = pool
    customer = new_customer()
    flood(settings, clients("s3"), clients("sqs"), settings.queue_url, customer, objects=5)
    _drop_shared_copies(stack, clients, customer)

    controller.backend = Flaky(backend, failures=2)
    retried = controller.reconcile("test throttled twice")
    assert retried.applied and retried.attempts == 3 and backend.capacity().desired == 2

    controller.backend = Flaky(backend, failures=10)
    clock.now += 1
    flood(settings, clients("s3"), clients("sqs"), settings.queue_url, new_customer(), objects=4)
    failed = controller.reconcile("test capacity API down")
    assert not failed.applied and failed.desired == 3 and "injected throttling" in failed.error
    assert backend.capacity().desired == 2  # nothing applied, nothing pretended
    with psycopg.connect(stack.database_url) as conn:
        recorded = conn.execute(
            "SELECT applied, error, capacity FROM scaling_decisions d JOIN scaling_state s USING (backend) "
            "WHERE backend = %s ORDER BY decision_id DESC LIMIT 1",
            (backend.key,),
        ).fetchone()
    assert recorded[0] is False and "injected throttling" in recorded[1]
    assert recorded[2] == 2  # the state still says 2: the next decision tries 3 again

    controller.backend = backend
    again = controller.reconcile("test capacity API back")
    assert again.applied and again.desired == 3 and backend.capacity().desired == 3
    if kind == "local":
        backend.stop_all()


def test_scaling_status_shows_backlog_capacity_and_decisions(stack, clients):
    import json
    import os
    import subprocess
    import sys

    backend = make_backend("ecs", clients, stack, None)
    env = {
        **os.environ,
        "PIPELINE_CAPACITY_BACKEND": "ecs",
        "PIPELINE_ECS_CLUSTER": backend.cluster,
        "PIPELINE_ECS_SERVICE": backend.service,
        "PIPELINE_SCALING_TARGET_PER_WORKER": "1000000",
    }

    def pipeline(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True)

    decided = pipeline("scaling", "reconcile")
    assert decided.returncode == 0, decided.stderr
    status = pipeline("scaling", "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["backend"] == backend.key
    assert set(data["backlog"]) == {"visible", "in_flight", "pending_partitions", "inbox", "total"}
    assert data["capacity"]["desired"] == data["decisions"][0]["desired"]
    assert data["decisions"][0]["trigger"] == "cli" and data["decisions"][0]["applied"] is True
    text = pipeline("scaling", "status")
    assert "backlog" in text.stdout and "last decisions:" in text.stdout and "desired" in text.stdout


def test_a_local_worker_drains_on_sigterm(stack, clients):
    """SIGTERM mid-batch: the worker finishes the object in hand, gives the rest back to the inbox
    at once (not after its claim lapses), exits; nothing is lost or loaded twice."""
    import threading
    import time

    from pipeline.scaling.backends import LocalWorkerPool

    sqs = clients("sqs")
    queue_url = private_queue(sqs, f"sigterm-{uuid.uuid4().hex[:8]}")
    settings = with_queue(stack, queue_url)
    customer = new_customer()
    flood(settings, clients("s3"), sqs, queue_url, customer, objects=10, rows=20_000)
    _drop_shared_copies(stack, clients, customer)
    pool = make_backend("local", clients, settings, traversable_tmpdir("pipeline-workers-"))
    assert isinstance(pool, LocalWorkerPool)
    # The worker is held mid-batch, whatever the machine's speed: a lock on the events table stops
    # its loads' writes until SIGTERM has been sent (it loaded all ten in 4 s once, before the signal).
    gate = psycopg.connect(stack.database_url)
    gate.execute("LOCK TABLE telemetry_events IN SHARE MODE")
    released = threading.Timer(3.0, gate.commit)
    try:
        pool.set_desired(1)
        wait_for(lambda: pool.capacity().protected == 1, timeout=60, what="the worker to take a batch")
        started = time.monotonic()
        released.start()  # after the signal below is sent: the loads in hand then finish
        pool.stop_all(timeout=60)
        assert time.monotonic() - started < 60 and not pool.workers()
    finally:
        released.cancel()
        gate.close()
        pool.stop_all()

    partial = verify(settings, customer)
    assert partial["duplicates"] == 0
    logs = "".join(p.read_text() for p in pool.folder.glob("*.log"))
    assert partial["objects_loaded"] < 10, "the worker was not stopped mid-batch:\n" + logs[-3000:]
    # What it had not started is due again at once in the inbox (a lapsing claim would hide it).
    with psycopg.connect(stack.database_url) as conn:
        due = conn.execute(
            "SELECT count(*) FROM import_inbox WHERE object_key LIKE %s AND state = 'pending' AND claimed_by IS NULL",
            (f"%customer={customer}/%",),
        ).fetchone()[0]
        waiting = int(
            sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
                "ApproximateNumberOfMessages"
            ]
        )
    assert due + waiting == 10 - partial["objects_loaded"]  # given back, or never taken in
    run_worker(settings, drain=True, idle_polls=1)
    final = verify(settings, customer)
    assert final["objects_loaded"] == 10 and final["missing"] == 0 and final["duplicates"] == 0
    sqs.delete_queue(QueueUrl=queue_url)
