"""The `pipeline` command as a user runs it, against the session's stack."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _demo_runs(since: float) -> tuple[list, set[str]]:
    """The runs the demo's sensors created since ``since`` (in the instance `pipeline dev` uses),
    and the assets materialized since then."""
    from unittest import mock

    from dagster import AssetKey, RunsFilter

    from pipeline import names
    from pipeline.local.inprocess import local_instance

    assets = ("customer_alerts", names.DAILY_DOMAIN_COMPLIANCE, names.DAILY_SOURCE_SUMMARY)
    with mock.patch.dict(os.environ):  # local_instance sets the stack's environment
        instance = local_instance()
        runs = instance.get_runs(RunsFilter(created_after=datetime.datetime.fromtimestamp(since, datetime.UTC)))
        latest = {key: instance.get_latest_materialization_event(AssetKey(key)) for key in assets}
    materialized = {key for key, event in latest.items() if event is not None and event.timestamp >= since}
    return [r for r in runs if names.RUN_KEY_TAG in r.tags], materialized


def test_demo_runs_the_whole_flow(stack, empty_queues):
    since = time.time()
    result = run("demo", "--customers", "2", "--reports-per-customer", "4", "--seed", "5", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("generate", "collect", "enrich", "import", "verify"):
        assert f"  {step}" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("customer-00")]
    assert len(lines) == 2 and all(line.rstrip().endswith("ok") for line in lines)
    assert "  customer-001: 4 reports," in result.stdout and "DMARC pass" in result.stdout
    assert "Web application: `pipeline web`, then http://127.0.0.1:8080/" in result.stdout
    # a staged story: the runs' own logs (Dagster's DEBUG lines, Spark, migrations) go to the file it names
    assert " - DEBUG - " not in result.stdout + result.stderr and "INFO" not in result.stdout
    log_file = result.stdout.split("(logs: ", 1)[1].split(";", 1)[0]
    assert " - DEBUG - " in Path(log_file).read_text()  # they are there, for whoever needs them
    assert len(result.stdout.splitlines()) < 30
    verified = json.loads(run("verify", "--customer", "customer-001", "--json").stdout)
    assert verified["ok"] and verified["reports_loaded"] == 4 and verified["rows_loaded"] > 0
    # every run a sensor created carries its stage's tags (the queue's limits, one owner per retry)
    from pipeline import names

    runs, materialized = _demo_runs(since)
    stages = {r.tags.get(names.STAGE_TAG) for r in runs}
    assert {"enrich", "import"} <= stages, stages
    for sensor_run in runs:
        stage = sensor_run.tags.get(names.STAGE_TAG)
        assert stage in names.STAGE_TAGS, sensor_run.tags
        assert sensor_run.tags[names.RETRIES_TAG] == names.STAGE_TAGS[stage][names.RETRIES_TAG]
    assert len(materialized) == 3, materialized  # the pages and the alerts


def test_demo_with_real_reports(stack, empty_queues):
    from pipeline_tests.support import SAMPLES, parsedmarc_aggregate

    # every shared sample, rfc9990-sample.xml (1979) too: the calendar from 1970
    result = run(
        "demo", "--reports", str(SAMPLES), "--customer", "samples", timeout=900, PIPELINE_FIRST_DAY="1970-01-01"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    verified = json.loads(run("verify", "--customer", "samples", "--json").stdout)
    assert (verified["reports_loaded"], verified["messages_loaded"]) == (12, 136)
    assert verified["ok"] and verified["rows_loaded"] == 13

    # The receivers' verdict, per parsedmarc (an independent reader): policy_evaluated DKIM or SPF pass.
    receivers = 0
    for path in sorted(SAMPLES.iterdir()):
        parsed = parsedmarc_aggregate(path)
        for record in parsed["report"]["records"] if parsed else []:
            evaluated = record["policy_evaluated"]
            if "pass" in (str(evaluated.get("dkim")).lower(), str(evaluated.get("spf")).lower()):
                receivers += record["count"]
    report = json.loads(run("report", "--customer", "samples", "--json").stdout)
    assert report["messages"] == 136 and report["dmarc_pass_messages"] == receivers
    assert report["aligned_pass_messages"] - report["dmarc_pass_messages"] == report["verdict_disagreements"] > 0
    assert {s["classification"] for s in report["services"]} <= {
        "authorized",
        "forwarder",
        "unauthorized",
        "suspicious",
    }
    assert {r["domain"] for r in report["readiness"]} == {d["domain"] for d in report["domains"]}


def test_demo_from_a_maildir(stack, empty_queues, tmp_path):
    from pipeline_tests.support import report_maildir

    root = report_maildir(tmp_path / "Maildir")
    result = run("demo", "--maildir", str(root), "--customer", "mailbox", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "  mailbox" in result.stdout and "messages archived 3, moved to .Invalid 1" in result.stdout
    verified = json.loads(run("verify", "--customer", "mailbox", "--json").stdout)
    assert verified["ok"] and verified["reports_loaded"] == 2 and verified["rows_loaded"] == 3


def test_status_json(stack):
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["healthy"] is True
    assert status["endpoint"] == stack.aws_endpoint_url
    assert {"queue_visible", "queue_in_flight", "dead_letter", "buckets"} <= set(status)
