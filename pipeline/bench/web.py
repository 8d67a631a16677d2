"""`pipeline bench web`: page and API latency with concurrent clients over a million events,
beside the time of the same queries run directly against PostgreSQL.

Method: a scratch warehouse (its own database) gets ``events`` rows for ``customers`` customers
over 30 days through the real importer, projections are rebuilt, the web application is served
by uvicorn in this process, and ``clients`` threads each sign in with their customer's token and
request pages and API routes in turn. The SQL-alone figures run the same query functions with
the same concurrency through the same pool, without HTTP, templates or JSON, and then from one
client alone (the queries' own cost, without queueing for the two cores). The floor is the
cheapest authenticated route (``/api/ping``: the session check, no customer data) requested by
the same clients in the same rounds: ``page_p95_vs_floor`` is what a page costs beyond the
server's own per-request cost under that load; the pages include the windowed ones (the overview,
a domain's page, services and sources over the history's last week). Sources page 1 and page 500
(a cursor) are timed alike: keyset paging makes them cost the same.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import psycopg
from tqdm import tqdm

from pipeline.aws import client
from pipeline.bench import verdicts
from pipeline.bench.importer import scratch_warehouse
from pipeline.enrich.synthetic import parquet_bytes, synthetic_enriched_table
from pipeline.importer.events import ObjectVersion
from pipeline.importer.load import load_object
from pipeline.local.ports import free_port
from pipeline.settings import Settings
from pipeline.warehouse.projections import rebuild
from pipeline.web.window import Window

PAGES = ["/?window=all", "/domains", "/services", "/readiness", "/sources?sort=pass_rate&order=asc", "/health"]
# The same pages over the history's last week (a window a page's session then keeps), and a
# domain's page: timed with the pages. The history is ``days`` days to 2026-10-30 (load_events).
WEEK = "from=2026-10-24&to=2026-10-30"
WINDOWED_PAGES = [f"/?{WEEK}", "/domains/{domain}", "/services", "/sources?sort=pass_rate&order=asc"]
APIS = ["/api/overview", "/api/domains", "/api/services", "/api/sources?page=3&per_page=50", "/api/sources?q=amazon"]
FLOOR = "/api/ping"  # the cheapest authenticated route: session lookup, no query of the customer's data
DEEP_PAGE = 500
TARGETS = {"page_p95_vs_floor": ("<=", 3.0), "deep_page_vs_first": ("<=", 1.5)}
VERSUS_TARGETS = {**TARGETS, "web_p95_vs_1m": ("<=", 1.2), "web_p95_vs_baseline": ("<=", 1.2)}


def _percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "n": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1), "n": len(ordered)}


LAST_DAY = dt.date(2026, 10, 30)  # the history's last day, whatever its length: WEEK is its last week
PER_OBJECT = 20_000


def per_object(events: int, customers: int, days: int) -> int:
    """Rows per object: 20,000, fewer when the history has more (customer, day) slices than that
    fills (each object is one customer's day, and every slice gets one), never under 500."""
    return max(500, min(PER_OBJECT, events // max(1, customers * days)))


def load_events(settings: Settings, events: int, customers: int, progress: bool, days: int = 30) -> list[str]:
    s3 = client(settings, "s3")
    rows = per_object(events, customers, days)
    objects = max(1, events // rows)
    names = [f"bench-web-{i:02d}" for i in range(customers)]
    start = LAST_DAY - dt.timedelta(days=days - 1)
    tag = uuid.uuid4().hex[:6]

    def one(i: int) -> int:
        customer, day = names[i % customers], start + dt.timedelta(days=(i // customers) % days)
        key = f"{settings.enriched_prefix}customer={customer}/dt={day}/bench-{tag}-{i:05d}.parquet"
        table = synthetic_enriched_table(rows, seed=i, customer_id=customer, day=day, report_id=f"{key}-r")
        etag = s3.put_object(Bucket=settings.enriched_bucket, Key=key, Body=parquet_bytes(table))["ETag"].strip('"')
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            return load_object(conn, s3, ObjectVersion(settings.enriched_bucket, key, etag, etag=etag)).rows

    with ThreadPoolExecutor(2) as pool:
        loaded = sum(tqdm(pool.map(one, range(objects)), total=objects, desc="load events", disable=not progress))
    assert loaded == objects * rows, loaded
    return names


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    return server, thread


def run(
    settings: Settings,
    events: int = 1_000_000,
    customers: int = 5,
    clients: int = 50,
    rounds: int = 6,
    progress: bool = True,
    days: int = 30,
) -> dict:
    import httpx

    from pipeline.web import queries
    from pipeline.web.app import create_app
    from pipeline.web.tenants import issue_token

    with scratch_warehouse(settings) as bench:
        names = load_events(bench, events, customers, progress, days)
        started = time.perf_counter()
        rebuild(bench.database_url)
        rebuild_s = time.perf_counter() - started
        tokens = {name: issue_token(bench.database_url, name) for name in names}
        app = create_app(bench, secret="bench")
        app.state.warehouse.close()
        app.state.warehouse = queries.Warehouse(queries.web_database_url(bench.database_url), pool_size=20)
        port = free_port(8700)
        server, thread = _serve(app, port)
        page_times: list[float] = []
        api_times: list[float] = []
        floor_times: list[float] = []
        first_times: list[float] = []
        deep_times: list[float] = []
        lock = threading.Lock()
        deep = {name: _deep_cursor(bench.database_url, name) for name in names}
        with psycopg.connect(bench.database_url) as conn:
            sources_per_customer = conn.execute("SELECT avg(sources) FROM customer_summary").fetchone()[0]
            domains = dict(
                conn.execute(
                    "SELECT DISTINCT ON (customer_id) customer_id, policy_domain FROM daily_domain_compliance "
                    "ORDER BY customer_id, messages DESC"
                ).fetchall()
            )
        windowed_times: list[float] = []

        def client_run(index: int) -> None:
            name = names[index % len(names)]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
                csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
                http.post("/login", data={"token": tokens[name], "csrf": csrf})
                headers = {"Authorization": f"Bearer {tokens[name]}"}
                timed = [
                    *[(path, page_times) for path in PAGES],
                    (FLOOR, floor_times),
                    ("/sources", first_times),
                    (f"/sources?page={DEEP_PAGE}&after={deep[name]}", deep_times),
                    *[(path.format(domain=quote(domains[name])), windowed_times) for path in WINDOWED_PAGES],
                ]
                for _ in range(rounds):
                    for path, into in timed:
                        t = time.perf_counter()
                        assert http.get(path).status_code == 200, path
                        with lock:
                            into.append(time.perf_counter() - t)
                    for path in APIS:
                        t = time.perf_counter()
                        assert http.get(path, headers=headers).status_code == 200, path
                        with lock:
                            api_times.append(time.perf_counter() - t)

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(tqdm(pool.map(client_run, range(clients)), total=clients, desc="web clients", disable=not progress))
        http_s = time.perf_counter() - started
        server.should_exit = True
        thread.join(timeout=10)

        sql_times: list[float] = []
        week = Window.parse(dict(part.split("=") for part in WEEK.split("&")))

        def sql_run(index: int) -> None:
            name = names[index % len(names)]
            for _ in range(rounds):
                for call in (
                    lambda c: queries.overview(c, name),
                    lambda c: queries.domains(c, name),
                    lambda c: queries.sources(c, name, queries.SourceQuery(page=2)),
                    lambda c: queries.sources(c, name, queries.SourceQuery(sort="pass_rate", descending=False)),
                    lambda c: queries.sources(c, name, queries.SourceQuery(search="amazon")),
                    lambda c: queries.overview(c, name, week),
                    lambda c: queries.sources(c, name, queries.SourceQuery(window=week)),
                ):
                    t = time.perf_counter()
                    with app.state.warehouse.tenant(name) as conn:
                        call(conn)
                    with lock:
                        sql_times.append(time.perf_counter() - t)

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(sql_run, range(clients)))
        concurrent_sql = sql_times[:]
        sql_times.clear()
        for index in range(len(names)):  # the same queries, one client: their cost without queueing
            sql_run(index)
        app.state.warehouse.close()

    windowed = _percentiles(windowed_times)
    page, api = _percentiles(page_times + windowed_times), _percentiles(api_times)
    floor, first, deep_page = _percentiles(floor_times), _percentiles(first_times), _percentiles(deep_times)
    sql_alone, sql_single = _percentiles(concurrent_sql), _percentiles(sql_times)
    requests = page["n"] + api["n"] + floor["n"] + first["n"] + deep_page["n"]
    figures = {
        "events": (events // per_object(events, customers, days)) * per_object(events, customers, days),
        "customers": customers,
        "days": days,
        "clients": clients,
        "projection_rebuild_s": round(rebuild_s, 2),
        "page_p50_ms": page["p50_ms"],
        "page_p95_ms": page["p95_ms"],
        "api_p50_ms": api["p50_ms"],
        "api_p95_ms": api["p95_ms"],
        "sql_p50_ms": sql_alone["p50_ms"],
        "sql_p95_ms": sql_alone["p95_ms"],
        "sql_one_client_p50_ms": sql_single["p50_ms"],
        "sql_one_client_p95_ms": sql_single["p95_ms"],
        "floor_p50_ms": floor["p50_ms"],
        "floor_p95_ms": floor["p95_ms"],
        "windowed_page_p50_ms": windowed["p50_ms"],
        "windowed_page_p95_ms": windowed["p95_ms"],
        "page_p95_vs_floor": round(page["p95_ms"] / floor["p95_ms"], 2) if floor["p95_ms"] else None,
        "sources_page1_p95_ms": first["p95_ms"],
        f"sources_page{DEEP_PAGE}_p95_ms": deep_page["p95_ms"],
        "deep_page_vs_first": round(deep_page["p95_ms"] / first["p95_ms"], 2) if first["p95_ms"] else None,
        "sources_per_customer": int(sources_per_customer or 0),
        "requests": requests,
        "requests_per_s": round(requests / http_s, 1),
    }
    figures["targets_met"] = verdicts(figures, TARGETS)
    return figures


def versus(settings: Settings, events: int, baseline: int, progress: bool = True, **shape) -> dict:
    """The same benchmark at ``events`` and at ``baseline`` events, the same shape otherwise (customers,
    days, clients, rounds): how the pages' p95 grows with the history (issue #26's ``web_p95_vs_1m``
    when the baseline is 1,000,000)."""
    small = run(settings, baseline, progress=progress, **shape)
    figures = run(settings, events, progress=progress, **shape)
    key = "web_p95_vs_1m" if baseline == 1_000_000 else "web_p95_vs_baseline"
    figures["baseline"] = {k: small[k] for k in ("events", "page_p50_ms", "page_p95_ms", "floor_p95_ms", "api_p95_ms")}
    figures[key] = round(figures["page_p95_ms"] / small["page_p95_ms"], 2)
    figures["windowed_p95_vs_baseline"] = round(figures["windowed_page_p95_ms"] / small["windowed_page_p95_ms"], 2)
    figures["targets_met"] = verdicts(figures, {k: v for k, v in VERSUS_TARGETS.items() if k in figures})
    return figures


def _deep_cursor(database_url: str, customer: str) -> str:
    """The cursor that opens page DEEP_PAGE of the sources (25 a page, most messages first)."""
    from pipeline.web.queries import encode_cursor

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT messages, source_ip FROM source_summary WHERE customer_id = %s "
            "ORDER BY messages DESC, source_ip DESC OFFSET %s LIMIT 1",
            (customer, (DEEP_PAGE - 1) * 25 - 1),
        ).fetchone()
        if row is None:  # a small history (the tests'): fewer pages than that; its last source's cursor
            row = conn.execute(
                "SELECT messages, source_ip FROM source_summary WHERE customer_id = %s "
                "ORDER BY messages, source_ip LIMIT 1",
                (customer,),
            ).fetchone()
    return encode_cursor(int(row[0]), row[1])
