"""Scaling tests measure exact backlogs; the warehouse (and its import inbox) is shared by the
whole session, so objects other tests left pending on purpose (a poison object backing off, say)
are settled first: each scaling test sees only the backlog it makes."""

from __future__ import annotations

import psycopg
import pytest


@pytest.fixture(autouse=True)
def inbox_of_this_test_only(stack):
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE import_inbox SET state = 'done', outcome = 'settled by the scaling tests', "
            "settled_at = clock_timestamp() WHERE state = 'pending'"
        )
