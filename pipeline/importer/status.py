"""``pipeline import-status``: what operators look at first."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from pipeline.aws import client
from pipeline.importer import inbox
from pipeline.importer.queue import queue_depth
from pipeline.settings import Settings

# A failure is resolved once the ledger records anything later for that object: the same version
# loaded after a redrive, a newer version, or a tombstone.
UNRESOLVED_FAILURES = """
SELECT f.bucket, f.object_key, f.object_version, count(*) AS attempts, max(f.failed_at) AS last_failed,
       (array_agg(f.error ORDER BY f.failed_at DESC))[1] AS error,
       max(f.receive_count) AS receive_count
FROM import_failures f
WHERE NOT EXISTS (SELECT 1 FROM load_ledger l WHERE l.bucket = f.bucket AND l.object_key = f.object_key
                  AND l.recorded_at > f.failed_at)
GROUP BY f.bucket, f.object_key, f.object_version
ORDER BY last_failed DESC
LIMIT %s
"""


def import_status(settings: Settings, limit: int = 20) -> dict:
    sqs = client(settings, "sqs")
    visible, in_flight = queue_depth(sqs, settings.queue_url)
    dead_visible, dead_in_flight = queue_depth(sqs, settings.dead_letter_queue_url)
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        totals = conn.execute(
            "SELECT count(*) AS objects, coalesce(sum(rows), 0) AS rows FROM live_object_versions"
        ).fetchone()
        recent = conn.execute(
            """SELECT event, object_key, object_version, rows, recorded_at FROM load_ledger
               ORDER BY ledger_id DESC LIMIT %s""",
            (limit,),
        ).fetchall()
        failures = conn.execute(UNRESOLVED_FAILURES, (limit,)).fetchall()
        rejected_total = conn.execute("SELECT count(*) AS n FROM rejected_messages").fetchone()["n"]
        rejected = conn.execute(
            "SELECT message_id, reason, rejected_at FROM rejected_messages ORDER BY rejection_id DESC LIMIT %s",
            (limit,),
        ).fetchall()
        box = inbox.counts(conn)
        dead_letters = inbox.dead_letters(conn, limit)
    return {
        "queue_visible": visible,
        "queue_in_flight": in_flight,
        "dead_letter": dead_visible + dead_in_flight + box.dead,
        "queue_dead_letter": dead_visible + dead_in_flight,
        "inbox": box.as_dict(),
        "dead_letters": dead_letters,
        "objects_loaded": totals["objects"],
        "rows_loaded": int(totals["rows"]),
        "recent_loads": recent,
        "failures": failures,
        "rejected_messages": rejected_total,
        "recent_rejections": rejected,
    }
