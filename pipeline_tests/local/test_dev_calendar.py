"""`pipeline dev` opens on a calendar of the days the local stack holds, not 5,000 missing ones."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import uuid
from unittest import mock

import psycopg
import pytest

from pipeline.local.calendar import EMPTY_LOOKBACK_DAYS, dev_first_day
from pipeline.local.postgres import ensure_database, sibling_database_url
from pipeline.warehouse.schema import migrate


@pytest.fixture
def scratch_db(stack):
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    ensure_database(stack.database_url, name)
    url = sibling_database_url(stack.database_url, name)
    migrate(url)
    yield url
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_the_calendar_starts_at_the_month_of_the_oldest_stored_report(scratch_db):
    today = dt.date(2026, 12, 6)
    first, why = dev_first_day(scratch_db, today)
    assert first == dt.date(2026, 9, 1) and str(EMPTY_LOOKBACK_DAYS) in why  # nothing stored yet
    with psycopg.connect(scratch_db) as conn:
        conn.execute(
            "INSERT INTO raw_inbox (bucket, object_key, etag, customer_id, day, source) "
            "VALUES ('b', 'raw/k1', 'e', 'c1', '2026-03-17', 'sweep')"
        )
    assert dev_first_day(scratch_db, today)[0] == dt.date(2026, 3, 1)
    with psycopg.connect(scratch_db) as conn:  # enriched before the raw inbox existed: still counted
        conn.execute("INSERT INTO enrichment_batches (batch_id, day) VALUES ('old', '2025-11-30')")
    first, why = dev_first_day(scratch_db, today)
    assert first == dt.date(2025, 11, 1) and "2025-11-30" in why


def test_an_unreachable_warehouse_falls_back_to_recent_months():
    first, _ = dev_first_day("postgresql://nobody@127.0.0.1:1/none", dt.date(2026, 1, 15))
    assert first == dt.date(2025, 10, 1)


def test_pipeline_dev_hands_dagster_the_calendar_and_says_so(stack):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_FIRST_DAY"}
    with mock.patch.dict(os.environ, env, clear=True):
        shown = subprocess.run(
            [sys.executable, "-m", "pipeline", "dev", "--", "--help"], capture_output=True, text=True, timeout=120
        )
    assert shown.returncode == 0, shown.stderr
    # the first of a month (which one depends on what the stack holds: other tests store reports of 1979)
    assert re.search(r"^day partitions from \d{4}-\d{2}-01 ", shown.stdout, re.M), shown.stdout
    assert "PIPELINE_FIRST_DAY" in shown.stdout
    with mock.patch.dict(os.environ, {**env, "PIPELINE_FIRST_DAY": "2012-01-01"}, clear=True):
        chosen = subprocess.run(
            [sys.executable, "-m", "pipeline", "dev", "--", "--help"], capture_output=True, text=True, timeout=120
        )
    assert chosen.returncode == 0 and "day partitions from" not in chosen.stdout  # the operator's choice stands
