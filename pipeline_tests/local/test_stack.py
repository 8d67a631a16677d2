"""The local stack, against the real moto server and PostgreSQL that `pipeline up` starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from pipeline.importer.events import parse_s3_event
from pipeline.local import stack as local_stack
from pipeline.local.postgres import EmbeddedPostgres
from pipeline.local.processes import pid_alive, read_pid
from pipeline.settings import ConfigurationError, read_state
from pipeline_tests.support import receive_all, traversable_tmpdir


def test_stack_is_up_and_healthy(stack, pipeline_home):
    status = local_stack.status(stack, pipeline_home)
    assert status.healthy, status
    assert set(status.buckets) == {stack.raw_bucket, stack.enriched_bucket}
    assert all(count is not None for count in status.buckets.values())
    assert read_state(pipeline_home).queue_url == stack.queue_url


def test_enriched_put_yields_exactly_one_message(stack, clients, empty_queues):
    s3, sqs = clients("s3"), clients("sqs")
    key = f"{stack.enriched_prefix}customer=acme/dt=2026-11-01/{uuid.uuid4().hex}.parquet"
    etag = s3.put_object(Bucket=stack.enriched_bucket, Key=key, Body=b"rows")["ETag"].strip('"')
    # Objects elsewhere must not reach the import queue.
    s3.put_object(Bucket=stack.enriched_bucket, Key=f"tmp/{uuid.uuid4().hex}", Body=b"x")
    s3.put_object(Bucket=stack.raw_bucket, Key=f"raw/{uuid.uuid4().hex}", Body=b"x")

    messages = receive_all(sqs, stack.queue_url)
    assert len(messages) == 1
    versions = parse_s3_event(messages[0]["Body"], stack.enriched_bucket, stack.enriched_prefix).versions
    assert [(v.bucket, v.key, v.etag) for v in versions] == [(stack.enriched_bucket, key, etag)]
    assert json.loads(messages[0]["Body"])["Type"] == "Notification"  # it came through SNS
    # Its object is no Parquet: the message must not come back (after its visibility timeout)
    # into a later test's import, nor its object stay for a later sweep.
    sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
    s3.delete_object(Bucket=stack.enriched_bucket, Key=key)


def test_unacknowledged_message_ends_in_dead_letter_queue(stack, clients, empty_queues):
    sqs = clients("sqs")
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    max_receives = int(policy["maxReceiveCount"])
    key = f"{stack.enriched_prefix}customer=acme/dt=2026-11-01/poison-{uuid.uuid4().hex}.parquet"
    clients("s3").put_object(Bucket=stack.enriched_bucket, Key=key, Body=b"not parquet")

    for attempt in range(max_receives):
        got = sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1, VisibilityTimeout=0)
        assert len(got.get("Messages", [])) == 1, f"receive {attempt + 1} found nothing"
    # One more receive: SQS moves the message instead of delivering it a sixth time.
    assert sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1).get("Messages", []) == []
    dead = receive_all(sqs, stack.dead_letter_queue_url)
    assert len(dead) == 1
    assert parse_s3_event(dead[0]["Body"]).versions[0].key == key


def test_up_twice_is_harmless(stack, pipeline_home):
    moto_pid = read_pid(pipeline_home / "moto.pid")
    again = local_stack.up(pipeline_home, database_url=os.environ.get("DATABASE_URL") or None)
    assert again.aws_endpoint_url == stack.aws_endpoint_url
    assert again.queue_url == stack.queue_url
    assert again.database_url == stack.database_url
    assert read_pid(pipeline_home / "moto.pid") == moto_pid
    assert local_stack.status(again, pipeline_home).healthy


def _processes_under(path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server")
def test_lifecycle_ports_taken_crash_recovery_and_down():
    """A second stack: its preferred ports are taken, it crashes, `up` recovers, `down` cleans up."""
    home = traversable_tmpdir("pipeline-test-second-") / "second"
    blockers = []
    for port in (local_stack.MOTO_PREFERRED_PORT, 54329):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            blockers.append(sock)
        except OSError:
            sock.close()  # already taken by someone else: just as good
    try:
        settings = local_stack.up(home)
        assert not settings.aws_endpoint_url.endswith(f":{local_stack.MOTO_PREFERRED_PORT}")
        assert ":54329/" not in settings.database_url
        assert local_stack.status(settings, home).healthy

        # Crash: SIGKILL both servers, leaving pid files and postmaster.pid behind.
        os.kill(read_pid(home / "moto.pid"), signal.SIGKILL)
        os.kill(EmbeddedPostgres(home / "postgres").postmaster_pid(), signal.SIGKILL)
        time.sleep(1)
        recovered = local_stack.up(home)
        assert local_stack.status(recovered, home).healthy
    finally:
        for sock in blockers:
            sock.close()
        local_stack.down(home)
    deadline = time.monotonic() + 10
    while _processes_under(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(home) == []


def test_unreachable_database_url_is_named_and_nothing_is_started(tmp_path):
    home = tmp_path / "bad-db"
    env = {
        **os.environ,
        "PIPELINE_HOME": str(home),
        "DATABASE_URL": "postgresql://ops:s3cret@127.0.0.1:1/warehouse",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "up"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "DATABASE_URL=postgresql://ops:***@127.0.0.1:1/warehouse" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "unset DATABASE_URL" in result.stderr
    assert read_pid(home / "moto.pid") is None
    assert _processes_under(home) == []


def test_commands_without_a_stack_say_to_run_up(tmp_path):
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path / "nothing")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "pipeline up" in result.stderr


def test_missing_stack_is_a_configuration_error(tmp_path, monkeypatch):
    from pipeline.settings import load_settings

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("PIPELINE_AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ConfigurationError, match="pipeline up"):
        load_settings()


def test_failed_up_leaves_no_moto_behind(monkeypatch):
    """PostgreSQL failing after moto started must not leak the moto server."""
    from pipeline.local import postgres

    home = traversable_tmpdir("pipeline-test-failing-") / "home"

    started: list[int] = []

    def broken(*_args, **_kwargs):
        started.append(read_pid(home / "moto.pid"))  # moto is up by now
        raise ConfigurationError("PostgreSQL is broken on purpose")

    monkeypatch.setattr(local_stack, "prepare_databases", broken)
    with pytest.raises(ConfigurationError, match="on purpose"):
        local_stack.up(home)
    assert read_pid(home / "moto.pid") is None
    assert started and started[0] and not pid_alive(started[0])
    assert postgres.EmbeddedPostgres(home / "postgres").postmaster_pid() is None
