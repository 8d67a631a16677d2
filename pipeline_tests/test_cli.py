"""The `pipeline` command as a user runs it, against the session's stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_round_trip(stack, warehouse):
    before = warehouse.execute("SELECT count(*) FROM telemetry_events").fetchone()[0]
    result = run("demo")
    assert result.returncode == 0, result.stderr
    assert "5 of 5 rows in PostgreSQL" in result.stdout
    after = warehouse.execute("SELECT count(*) FROM telemetry_events").fetchone()[0]
    assert after == before + 5


def test_status_json(stack):
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["healthy"] is True
    assert status["endpoint"] == stack.aws_endpoint_url
    assert {"queue_visible", "queue_in_flight", "dead_letter", "buckets"} <= set(status)
