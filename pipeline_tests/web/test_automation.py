"""Declarative automation is on from the first deploy (issue #24, defect 3; issue #22's report to
page): through a real dagster-daemon, an object imported by the import sensor reaches the
customer's projections and its alerts are evaluated, without anything switched on in the UI."""

from __future__ import annotations

import uuid

import psycopg
from dagster import DefaultScheduleStatus, DefaultSensorStatus

from pipeline import names
from pipeline.defs.reports.definitions import automation_sensor
from pipeline.defs.reports.digest import digest_schedule
from pipeline.local.daemon import running_daemon
from pipeline_tests.support import flood, messages_for, new_customer, private_queue, wait_for


def test_the_automation_sensor_and_the_digest_schedule_run_by_default(monkeypatch):
    monkeypatch.delenv("PIPELINE_AUTOMATION", raising=False)  # the shipped default
    assert automation_sensor().default_status == DefaultSensorStatus.RUNNING
    assert digest_schedule().default_status == DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("PIPELINE_AUTOMATION", "0")
    assert automation_sensor().default_status == DefaultSensorStatus.STOPPED


def test_an_import_reaches_the_customers_pages_through_the_daemon(stack, clients):
    sqs, s3 = clients("sqs"), clients("s3")
    queue_url = private_queue(sqs, f"automation-{uuid.uuid4().hex[:8]}")
    customer = new_customer()
    env = {
        "PIPELINE_IMPORT_QUEUE_URL": queue_url,
        "PIPELINE_AUTOMATION": "1",
        "PIPELINE_SCALING_MAX": "0",  # the runs import
    }
    try:
        with running_daemon(stack, env, location="pipeline.locations.warehouse_path") as daemon:
            flood(stack, s3, sqs, queue_url, customer, objects=2, rows=30)
            for message in messages_for(sqs, stack.queue_url, customer):  # the bucket's own copies
                sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])

            def on_the_page() -> bool:
                daemon.check()
                with psycopg.connect(stack.database_url) as conn:
                    return bool(
                        conn.execute(
                            "SELECT sum(messages) FROM daily_domain_compliance WHERE customer_id = %s", (customer,)
                        ).fetchone()[0]
                    )

            def alerts_evaluated() -> bool:
                daemon.check()
                found = daemon.query(
                    "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                    "AND asset_key LIKE '%customer_alerts%'"
                )
                return bool(found and found[0])

            try:
                wait_for(on_the_page, timeout=300, interval=3, what="the import to reach the overview's projection")
                wait_for(alerts_evaluated, timeout=180, interval=3, what="the alerts to be evaluated after it")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the daemon's log ends:\n{daemon.log_tail(6000)}") from None
            # the runs the daemon's import sensor created carry the stage's tags: the run queue's
            # limit selects them, and Dagster does not retry what the inbox already retries
            with psycopg.connect(daemon.dagster_url) as conn:
                rows = conn.execute("SELECT run_id, key, value FROM run_tags").fetchall()
            tags: dict[str, dict[str, str]] = {}
            for run_id, key, value in rows:
                tags.setdefault(run_id, {})[key] = value
            imports = [t for t in tags.values() if t.get("dagster/sensor_name") == names.IMPORT_SENSOR]
            assert imports, tags
            assert all(names.STAGE_TAGS["import"].items() <= t.items() for t in imports), imports
    finally:
        sqs.delete_queue(QueueUrl=queue_url)
