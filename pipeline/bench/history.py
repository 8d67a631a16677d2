"""`pipeline bench history` (W9, issue #26): what a refresh costs once the warehouse holds a year.

Every other benchmark starts from an empty warehouse; a DMARC product keeps 13 months. This one
measures, in a scratch warehouse (its own database), the projections' refresh after one new day
of a customer, first with nothing else stored, then on top of that customer's history (``days``
days), the same new day's shape each time:

- each day: ``recurring`` sources seen every day (a customer's own senders: their all-days rows
  exist and grow a day at a time) and ``tail`` sources seen that day only (forwarders, spam: each
  a new all-days row), 3 messages each;
- ``refresh_vs_empty``: median seconds of the refresh after one new day on the history, over the
  same on an empty warehouse (``repeats`` new days each; target <= 1.2);
- ``history_events``, ``history_load_s`` (written by SQL, ``INSERT ... SELECT`` of the columns the
  projections read, not through the loader: labelled as such), ``history_refresh_s`` (the
  history's first refresh, every key new), ``table_bytes_per_event`` (telemetry_events' heap and
  indexes over its rows).

The partitioned warehouse, retention and the import and page figures of W9 (docs/SCALING.md)
come with the rest of issue #26.
"""

from __future__ import annotations

import statistics
import time
import uuid

import psycopg

from pipeline.bench import Targets, verdicts
from pipeline.bench.importer import scratch_warehouse
from pipeline.settings import Settings
from pipeline.warehouse.projections import refresh

TARGETS: Targets = {"refresh_vs_empty": ("<=", 1.2)}
FIRST_DAY = "2025-01-01"
DAYS_PER_STATEMENT = 20  # the history is written a few weeks at a time

_DAYS = """
INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, as_org,
                              country, trust_score, policy_dkim, policy_spf, dmarc_pass, message_count)
SELECT md5(%(customer)s || '/' || d || '/' || s)::uuid, %(ledger)s, %(customer)s, %(first)s::date + d, 'example.com',
       CASE WHEN s <= %(recurring)s THEN '10.' || (s / 65536) || '.' || (s / 256 %% 256) || '.' || (s %% 256)
            ELSE '2001:db8:' || to_hex(d) || '::' || to_hex(s) END,
       64500 + s %% 97, 'Network ' || (s %% 97), 'NL', 0.25 + (s %% 7) / 10.0,
       CASE WHEN s %% 5 = 0 THEN 'fail' ELSE 'pass' END, 'pass', s %% 5 <> 0, 3
FROM generate_series(%(d0)s::int, %(d1)s::int) d, generate_series(1, %(sources)s::int) s
"""


def _write_days(url: str, customer: str, first: int, count: int, recurring: int, tail: int) -> int:
    """Days ``first`` .. ``first + count - 1`` of ``customer``, as one load each statement."""
    written = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for d0 in range(first, first + count, DAYS_PER_STATEMENT):
            d1 = min(first + count, d0 + DAYS_PER_STATEMENT) - 1
            (ledger,) = conn.execute(
                "INSERT INTO load_ledger (event, bucket, object_key, object_version) "
                "VALUES ('loaded', 'bench-history', %s, 'v') RETURNING ledger_id",
                (f"{customer}/{d0}-{d1}",),
            ).fetchone()
            written += conn.execute(
                _DAYS,
                {
                    "customer": customer,
                    "ledger": ledger,
                    "first": FIRST_DAY,
                    "d0": d0,
                    "d1": d1,
                    "recurring": recurring,
                    "sources": recurring + tail,
                },
            ).rowcount
    return written


def _one_new_day(url: str, customer: str, day: int, recurring: int, tail: int) -> float:
    _write_days(url, customer, day, 1, recurring, tail)
    started = time.perf_counter()
    refresh(url)
    return time.perf_counter() - started


def run(settings: Settings, days: int, recurring: int, tail: int, repeats: int, say) -> dict:
    with scratch_warehouse(settings) as scratch:
        url = scratch.database_url
        tag = uuid.uuid4().hex[:6]
        say(f"W9: {repeats} new day(s) of {recurring + tail} sources on an empty warehouse")
        empty = [_one_new_day(url, f"empty{tag}{n}", 0, recurring, tail) for n in range(repeats)]
        customer = f"history{tag}"
        say(f"W9: writing {days} days of history ({days * (recurring + tail):,} events, by SQL)")
        started = time.perf_counter()
        events = _write_days(url, customer, 0, days, recurring, tail)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        refresh(url)
        history_refresh_s = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # as autovacuum would have, over a year
        say(f"W9: {repeats} new day(s) on the history")
        on_history = [_one_new_day(url, customer, days + n, recurring, tail) for n in range(repeats)]
        with psycopg.connect(url) as conn:
            size, rows = conn.execute(
                "SELECT pg_total_relation_size('telemetry_events'), (SELECT count(*) FROM telemetry_events)"
            ).fetchone()
    figures = {
        "history_events": events,
        "history_days": days,
        "history_written_by": "SQL INSERT ... SELECT (not the loader)",
        "history_load_s": round(load_s, 1),
        "history_refresh_s": round(history_refresh_s, 1),
        "new_day_sources": {"recurring": recurring, "tail": tail},
        "refresh_empty_s": [round(s, 3) for s in empty],
        "refresh_history_s": [round(s, 3) for s in on_history],
        "refresh_vs_empty": round(statistics.median(on_history) / statistics.median(empty), 2),
        "table_bytes_per_event": round(size / rows),
    }
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures
