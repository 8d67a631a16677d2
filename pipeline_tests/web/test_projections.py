"""Projections follow loads, supersession and tombstones; incremental upkeep == full rebuild."""

from __future__ import annotations

import time

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pipeline.warehouse.projections import PROJECTION_TABLES, rebuild, refresh
from pipeline.web.dmarc import mark_service
from pipeline_tests.support import delete_and_load, new_customer, put_and_load

SERVICES = ["Google", "Microsoft", "Hetzner", "Amazon SES"]  # the synthetic data's services
OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "delete", "mark"]), st.integers(0, 3), st.integers(1, 60), st.integers(0, 2)
    ),
    min_size=1,
    max_size=8,
)


def _mine(database_url: str, customer: str) -> tuple[list, ...]:
    """Every projection's rows of this customer, ordered."""
    with psycopg.connect(database_url) as conn:
        return tuple(
            sorted(
                conn.execute(
                    sql.SQL("SELECT * FROM {} WHERE customer_id = %s").format(sql.Identifier(table)), (customer,)
                ).fetchall()
            )
            for table in PROJECTION_TABLES
        )


def _truth(database_url: str, customer: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT coalesce(sum(message_count), 0) FROM telemetry_events WHERE customer_id = %s", (customer,)
        ).fetchone()[0]


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_incremental_upkeep_equals_a_full_rebuild(stack, clients, ops):
    s3, customer = clients("s3"), new_customer()
    live: dict[int, str] = {}
    for step, (op, slot, rows, day) in enumerate(ops):
        if op == "put":  # a new object, or an overwrite of the slot's key (supersession)
            live[slot] = put_and_load(stack, s3, customer, f"o{slot}.parquet", rows, seed=step, day=f"2026-10-1{day}")
        elif op == "mark":  # the customer marks a service as theirs, or withdraws it (an event)
            mark_service(stack.database_url, customer, SERVICES[slot], mine=rows % 2 == 0)
        elif slot in live:  # a delete (tombstone)
            delete_and_load(stack, s3, live.pop(slot), step)
        refresh(stack.database_url)
        domains = _mine(stack.database_url, customer)[0]
        assert sum(row[4] for row in domains) == _truth(stack.database_url, customer)  # messages follow the events
    incremental = _mine(stack.database_url, customer)
    rebuild(stack.database_url, [customer])  # the customer's alone: the shared warehouse holds every test's
    assert _mine(stack.database_url, customer) == incremental


def test_a_customers_rebuild_equals_a_full_one_and_leaves_the_others_alone(stack, clients):
    """``rebuild(customers=...)`` recomputes those customers' rows exactly as a full rebuild does
    (the upkeep property above relies on it) and does not touch another tenant's rows, even stale ones."""
    s3, mine, theirs = clients("s3"), new_customer(), new_customer()
    for seed, customer in enumerate((mine, theirs)):
        put_and_load(stack, s3, customer, "a.parquet", 40, seed=seed, day="2026-10-11")
        put_and_load(stack, s3, customer, "b.parquet", 25, seed=seed + 7, day="2026-10-12")
    mark_service(stack.database_url, mine, SERVICES[0], mine=True)
    refresh(stack.database_url)
    with psycopg.connect(stack.database_url) as conn:  # both tenants' projections made wrong by hand
        for customer in (mine, theirs):
            conn.execute("DELETE FROM daily_domain_compliance WHERE customer_id = %s", (customer,))
            conn.execute("UPDATE source_summary SET messages = messages + 1 WHERE customer_id = %s", (customer,))
    stale = _mine(stack.database_url, theirs)

    result = rebuild(stack.database_url, [mine])
    assert result.slices == 2  # the customer's two days, not the warehouse's
    assert _mine(stack.database_url, theirs) == stale  # not read, not written
    domains = _mine(stack.database_url, mine)[0]
    assert sum(row[4] for row in domains) == _truth(stack.database_url, mine)
    by_customer = _mine(stack.database_url, mine)
    rebuild(stack.database_url)
    assert _mine(stack.database_url, mine) == by_customer
    assert _mine(stack.database_url, theirs) != stale  # the full rebuild mended the other one


def test_a_tombstone_empties_its_slice(stack, clients):
    s3, customer = clients("s3"), new_customer()
    key = put_and_load(stack, s3, customer, "gone.parquet", 30, seed=1, day="2026-09-09")
    refresh(stack.database_url)
    assert _mine(stack.database_url, customer)[0]
    delete_and_load(stack, s3, key, 2)
    refresh(stack.database_url)
    assert _mine(stack.database_url, customer) == tuple([] for _ in PROJECTION_TABLES)


def test_projection_assets_materialize_through_dagster(stack, clients):
    from dagster import AssetKey, materialize

    from pipeline.defs.reports.assets import warehouse_projections
    from pipeline.defs.resources import resource_defs

    s3, customer = clients("s3"), new_customer()
    put_and_load(stack, s3, customer, "dagster.parquet", 25, seed=3, day="2026-09-10")
    result = materialize([warehouse_projections], resources=resource_defs())
    assert result.success
    events = {m.asset_key: m for m in result.asset_materializations_for_node("warehouse_projections")}
    for key in ("daily_domain_compliance", "daily_source_summary"):
        metadata = events[AssetKey(key)].metadata
        assert metadata["slices_refreshed"].value >= 1
    assert _mine(stack.database_url, customer)[0]


def _ledger(conn, key: str) -> int:
    """A load of ``key`` in the ledger, for events written directly."""
    conn.execute("SELECT ensure_event_partitions('2026-01-01', '2026-12-31')")  # these tests write SQL, not loads
    return conn.execute(
        "INSERT INTO load_ledger (event, bucket, object_key, object_version) VALUES ('loaded', 'b', %s, 'v') "
        "RETURNING ledger_id",
        (key,),
    ).fetchone()[0]


def _events(conn, customer: str, tag: str, count: int, messages: int) -> None:
    ledger_id = _ledger(conn, f"marker-{customer}-{tag}")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, message_count) "
            "VALUES (md5(%s)::uuid, %s, %s, '2026-08-08', 'example.com', %s)",
            [(f"{customer}-{tag}-{n}", ledger_id, customer, messages) for n in range(count)],
        )


def test_a_refresh_never_consumes_the_marker_of_an_import_still_in_flight(stack):
    """An import marks its slice; a refresh running while the import is uncommitted must either
    wait for it or leave the marker for the next refresh: never recompute the slice without the
    import's rows and drop its marker."""
    import threading

    customer = new_customer()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # the slice is marked already
        _events(conn, customer, "first", 2, 5)
    importer = psycopg.connect(stack.database_url)  # one connection: the import, left uncommitted
    _events(importer, customer, "second", 3, 7)
    refreshed = threading.Event()
    thread = threading.Thread(target=lambda: (refresh(stack.database_url), refreshed.set()))
    thread.start()
    time.sleep(1.0)  # the refresh runs while the import is in flight
    importer.commit()
    importer.close()
    thread.join(30)
    assert refreshed.is_set()
    with psycopg.connect(stack.database_url) as conn:
        projected = conn.execute(
            "SELECT coalesce(sum(messages), 0) FROM daily_domain_compliance WHERE customer_id = %s", (customer,)
        ).fetchone()[0]
        marked = conn.execute("SELECT count(*) FROM projection_dirty WHERE customer_id = %s", (customer,)).fetchone()[0]
    assert projected == 2 * 5 + 3 * 7 or marked == 1  # up to date, or still marked for the next refresh
    refresh(stack.database_url)
    assert _mine(stack.database_url, customer)[0][0][4] == 2 * 5 + 3 * 7


def test_an_import_runs_refresh_gives_way_to_a_refresh_in_progress(stack):
    """The import run's own refresh (so that pages follow the import) never waits on another:
    while one holds the lock it returns None at once, and the markers stay for that one."""
    from pipeline.warehouse import projections

    customer = new_customer()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        _events(conn, customer, "held", 2, 5)
    holder = psycopg.connect(stack.database_url)
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (projections._LOCK,))
    try:
        started = time.monotonic()
        assert refresh(stack.database_url, wait=False) is None
        assert time.monotonic() - started < 5
    finally:
        holder.rollback()
        holder.close()
    assert refresh(stack.database_url, wait=False).slices >= 1
    assert _mine(stack.database_url, customer)[0][0][4] == 2 * 5


def _day_of_sources(conn, customer: str, day: str, sources: dict[str, int], asn: int = 64500) -> None:
    """One load of ``day``'s events: per source IP, its messages, every source of one AS."""
    ledger_id = _ledger(conn, f"rollup-{customer}-{day}-{'-'.join(sources)}-{asn}")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry_events (event_id, ledger_id, customer_id, day, policy_domain, source_ip, asn, "
            "as_org, trust_score, policy_dkim, policy_spf, dmarc_pass, message_count) "
            "VALUES (md5(%s)::uuid, %s, %s, %s, 'example.com', %s, %s, 'Example Networks', 0.8, 'pass', 'fail', "
            "true, %s)",
            [(f"{customer}-{day}-{ip}-{asn}", ledger_id, customer, day, ip, asn, n) for ip, n in sources.items()],
        )


def test_a_new_day_updates_the_all_days_rollups_without_reading_the_history(stack):
    """One more day of the same sources adds to their all-days rows (no source read again from
    its daily rows); a new source, a source that left a day and a changed attribute are read
    again; and the result is what a full rebuild computes."""
    customer = new_customer()
    sources = {"192.0.2.1": 10, "192.0.2.2": 20, "192.0.2.3": 30}
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for day in range(1, 8):  # a week of history
            _day_of_sources(conn, customer, f"2026-07-0{day}", sources)
    first = refresh(stack.database_url)
    assert first.sources_touched >= 3 and first.sources_recomputed >= 3  # new to the rollup

    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        _day_of_sources(conn, customer, "2026-07-08", sources)
    one_more = refresh(stack.database_url)
    assert (one_more.sources_touched, one_more.sources_recomputed) == (3, 0), one_more

    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        _day_of_sources(conn, customer, "2026-07-09", {"192.0.2.1": 1, "198.51.100.7": 5})  # one source is new
    assert (lambda r: (r.sources_touched, r.sources_recomputed))(refresh(stack.database_url)) == (2, 1)

    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # a tombstone: the day's rows go
        conn.execute(
            "DELETE FROM telemetry_events WHERE customer_id = %s AND day = '2026-07-08' AND source_ip = '192.0.2.3'",
            (customer,),
        )
        _day_of_sources(conn, customer, "2026-07-10", {"192.0.2.2": 2}, asn=64999)  # re-enriched: another AS
    changed = refresh(stack.database_url)
    # the 8th's three sources are touched; only the one that left it is read again (a new day of
    # another AS can only raise the largest ASN: added like the messages)
    assert (changed.sources_touched, changed.sources_recomputed) == (3, 1), changed

    with psycopg.connect(stack.database_url, autocommit=True) as conn:  # a day's attributes change
        conn.execute(
            "UPDATE telemetry_events SET asn = 64400 WHERE customer_id = %s AND day = '2026-07-10'", (customer,)
        )
        conn.execute("INSERT INTO projection_dirty VALUES (%s, '2026-07-10') ON CONFLICT DO NOTHING", (customer,))
    lowered = refresh(stack.database_url)
    assert (lowered.sources_touched, lowered.sources_recomputed) == (1, 1), lowered  # a maximum may fall

    incremental = _mine(stack.database_url, customer)
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "SELECT messages, first_day, last_day, asn FROM source_summary WHERE customer_id = %s AND source_ip = %s",
            (customer, "192.0.2.2"),
        ).fetchone()
    assert row[0] == 20 * 8 + 2 and str(row[1]) == "2026-07-01" and str(row[2]) == "2026-07-10" and row[3] == 64500
    rebuild(stack.database_url, [customer])
    assert _mine(stack.database_url, customer) == incremental


def test_a_rebuild_in_parallel_sessions_equals_one_rebuild(stack, clients):
    """`pipeline projections rebuild --jobs N` (a large warehouse's recovery): customers rebuilt in
    concurrent sessions give the tables one rebuild gives, and a customer without events keeps no
    figures. In a warehouse of the test's own: a whole-warehouse rebuild."""
    from pipeline.bench.importer import scratch_warehouse
    from pipeline.warehouse.projections import rebuild_in_parallel

    s3 = clients("s3")
    with scratch_warehouse(stack) as own:
        customers = [new_customer() for _ in range(3)]
        for n, customer in enumerate(customers):
            for day in range(n + 1):
                put_and_load(own, s3, customer, f"p{day}.parquet", 20 + day, seed=n * 10 + day, day=f"2026-10-1{day}")
        mark_service(own.database_url, customers[0], SERVICES[1], mine=True)
        rebuild(own.database_url)
        whole = [_mine(own.database_url, c) for c in customers]
        with psycopg.connect(own.database_url) as conn:  # wrong figures, and a customer with no events
            conn.execute("DELETE FROM source_summary WHERE customer_id = %s", (customers[1],))
            conn.execute("INSERT INTO customer_summary (customer_id, sources, categories) VALUES ('ghost', 3, '{}')")
        result = rebuild_in_parallel(own.database_url, jobs=2)
        assert result.slices == 1 + 2 + 3
        assert [_mine(own.database_url, c) for c in customers] == whole
        assert _mine(own.database_url, "ghost") == tuple([] for _ in PROJECTION_TABLES)
