"""`pipeline web`: Starlette (the framework under the Dagster webserver), Jinja2 pages, JSON API.

Handlers that query the database are plain functions: Starlette runs them in its thread pool,
so blocking psycopg calls never stall the event loop.

Sign-in: a customer's API token (``pipeline web-token --customer ID``), either in the sign-in
form (a signed session cookie follows) or as ``Authorization: Bearer <token>`` on the API. A
request only ever reads as its own tenant (row-level security); asking for anything else gives
404, and errors never echo the input back.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import secrets
import threading
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import psycopg_pool
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline import config
from pipeline.web import alerts, charts, dmarc, queries, tenants
from pipeline.web.window import PARAMS as WINDOW_PARAMS
from pipeline.web.window import Window, WindowError

log = logging.getLogger("pipeline.web")
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
# A path segment from a report's own values (a report id, an address): every character that is
# not unreserved is quoted, "/" and "." included, so "../../api/export" stays one segment.
TEMPLATES.filters["segment"] = lambda value: quote(str(value), safe="")


def _customer(request: Request) -> str | None:
    """The request's tenant (bearer token, else the session), looked up once per request. A
    session stays signed in only while its token generation is the tenant's current one:
    rotating or revoking the token ends every session signed in with the old one."""
    if "customer" not in request.state._state:
        customer = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            with request.app.state.warehouse.service() as conn:
                customer = tenants.token_customer(conn, header[7:].strip())
        elif request.session.get("sid"):
            with request.app.state.warehouse.service() as conn:
                customer = tenants.session_customer(conn, request.session["sid"])
            if customer is None:
                request.session.clear()
        request.state.customer = customer
    return request.state.customer


def _csrf_token(request: Request) -> str:
    if not request.session.get("csrf"):
        request.session["csrf"] = secrets.token_urlsafe(24)
    return request.session["csrf"]


def _check_csrf(request: Request, form) -> None:
    """Forms carry the session's CSRF token: a cross-site page cannot read it, so it cannot post."""
    expected = request.session.get("csrf") or ""
    if not expected or not hmac.compare_digest(str(form.get("csrf", "")), expected):
        raise HTTPException(403, "the form expired")


SECURITY_HEADERS = [
    # no script runs on these pages (there is none); styles are the page's own
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Every response, pages, API, CSV and errors alike, carries the security headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        return await self.app(scope, receive, with_headers)


class Refresher:
    """Projection refreshes after a customer's choice, outside the request: one at a time; a
    kick while one runs makes one more run after it (every choice is applied, none waits on
    the request, and a flood of choices costs two refreshes, not one each)."""

    def __init__(self, database_url: str):
        self.database_url, self.lock, self.again, self.running = database_url, threading.Lock(), False, False

    def kick(self) -> None:
        with self.lock:
            if self.running:
                self.again = True
                return
            self.running = True
        threading.Thread(target=self._run, name="projection-refresh", daemon=True).start()

    def _run(self) -> None:
        from pipeline.warehouse.projections import refresh

        while True:
            try:
                refresh(self.database_url)
            except Exception:
                log.exception("web: projection refresh after a customer's choice failed (retried at the next one)")
            with self.lock:
                if not self.again:
                    self.running = False
                    return
                self.again = False

    def wait(self, timeout: float = 60.0) -> None:
        """Until no refresh runs (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.running:
                    return
            time.sleep(0.05)


def _data_through(request: Request, customer: str | None) -> dict | None:
    """Every signed-in page's "data through" stamp; a page that cannot read it (the warehouse is
    what failed) is still shown, without it."""
    if customer is None:
        return None
    try:
        with request.app.state.warehouse.tenant(customer) as conn:
            return queries.data_through(conn, customer)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        log.warning("web data-through stamp unavailable for %s: %s", customer, exc)
        return None


def _page(request: Request, template: str, status: int = 200, stamp: bool = True, **context) -> HTMLResponse:
    """A page for the signed-in customer; ``stamp=False`` for pages outside the data (sign-in,
    errors, rendered on the event loop: no query there)."""
    customer = _customer(request)
    html = TEMPLATES.get_template(template).render(
        request=request,
        customer=customer,
        csrf=_csrf_token(request),
        through=_data_through(request, customer) if stamp else None,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _require(request: Request, api: bool) -> str:
    customer = _customer(request)
    if customer is None:
        if api:
            raise HTTPException(401, "sign in with an API token (Authorization: Bearer <token>)")
        raise HTTPException(303, "sign in")
    return customer


async def login(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    if request.method == "GET":
        return _page(request, "login.html", stamp=False)
    form = await request.form()
    if not request.session.get("csrf") or not hmac.compare_digest(
        str(form.get("csrf", "")), request.session.get("csrf", "")
    ):
        log.info("web sign-in without a valid form token from %s", request.client.host if request.client else "?")
        return _page(
            request, "login.html", stamp=False, status=403, error="The sign-in form expired: please sign in again."
        )

    def sign_in():
        with request.app.state.warehouse.service() as conn:
            return tenants.sign_in(conn, str(form.get("token", "")).strip())

    signed = await run_in_threadpool(sign_in)
    if signed is None:
        log.info("web sign-in refused from %s", request.client.host if request.client else "?")
        return _page(request, "login.html", stamp=False, status=401, error="That token is not valid.")
    request.session.clear()
    request.session["sid"] = signed[1]
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    from starlette.concurrency import run_in_threadpool

    _check_csrf(request, await request.form())

    def end() -> None:  # on the server: the cookie, copied or not, signs nobody in again
        with request.app.state.warehouse.service() as conn:
            tenants.end_session(conn, request.session.get("sid"))

    await run_in_threadpool(end)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _window(request: Request, api: bool) -> Window:
    """The window the request names (``?window=``, ``?from=``/``?to=``); a page without one
    shows the window its session chose last (API routes and exports name theirs every time)."""
    params = {k: request.query_params[k] for k in WINDOW_PARAMS if k in request.query_params}
    if not params:
        if api:
            return Window()
        try:
            return Window.parse(dict(request.session.get("window") or {}))
        except WindowError:  # a window stored by an older version of the application: all time
            request.session.pop("window", None)
            return Window()
    try:
        window = Window.parse(params)
    except WindowError as exc:
        raise HTTPException(400, str(exc)) from None
    if not api:
        request.session["window"] = params  # presets stay relative: 7d is the last 7 days tomorrow too
    return window


def _overview(request: Request, customer: str, window: Window) -> dict:
    with request.app.state.warehouse.tenant(customer) as conn:
        data = queries.overview(conn, customer, window)
        data["recent_reports"] = queries.recent_reports(conn, customer, window=window)
        data["service_classes"] = dmarc.service_classes(conn, customer, window)
        data["readiness"] = [
            {k: r[k] for k in ("domain", "current_policy", "next_policy", "next_pct", "ready")}
            for r in dmarc.readiness(conn, customer)
        ]
    return data


def overview_page(request: Request) -> Response:
    customer = _require(request, api=False)
    window = _window(request, api=False)
    data = _overview(request, customer, window)
    return _page(
        request,
        "overview.html",
        data=data,
        window=window,
        trend_chart=charts.compliance_trend(data["trend"]),
        domain_chart=charts.pass_fail_bars(data["domains"], "domain"),
    )


def overview_api(request: Request) -> Response:
    customer = _require(request, api=True)
    data = _overview(request, customer, _window(request, api=True))
    for row in data["recent_reports"]:
        row["report_end"] = row["report_end"].isoformat() if row["report_end"] else None
        row["messages"] = int(row["messages"] or 0)
    return JSONResponse(data)


def domains_page(request: Request) -> Response:
    customer = _require(request, api=False)
    window = _window(request, api=False)
    with request.app.state.warehouse.tenant(customer) as conn:
        rows = queries.domains(conn, customer, window)
    return _page(
        request, "domains.html", domains=rows, chart=charts.pass_fail_bars(rows, "domain", limit=20), window=window
    )


def domains_api(request: Request) -> Response:
    customer = _require(request, api=True)
    window = _window(request, api=True)
    with request.app.state.warehouse.tenant(customer) as conn:
        return JSONResponse({"window": window.as_dict(), "domains": queries.domains(conn, customer, window)})


def _domain(request: Request, api: bool) -> tuple[Window, dict]:
    customer = _require(request, api)
    window = _window(request, api)
    with request.app.state.warehouse.tenant(customer) as conn:
        detail = dmarc.domain_detail(conn, customer, request.path_params["domain"], window)
    if detail is None:  # no report names it for this customer (another tenant's is not visible)
        raise HTTPException(404, "no such domain")
    return window, detail


def domain_page(request: Request) -> Response:
    window, detail = _domain(request, api=False)
    return _page(
        request,
        "domain.html",
        d=detail,
        window=window,
        trend_chart=charts.compliance_trend(detail["trend"]),
        service_chart=charts.pass_fail_bars(
            [{**s, "name": s["service"]} for s in detail["services"]], "name", limit=10
        ),
    )


def domain_api(request: Request) -> Response:
    return JSONResponse(jsonable([_domain(request, api=True)[1]])[0])


def _source_query(request: Request, api: bool) -> queries.SourceQuery:
    return dataclasses.replace(queries.SourceQuery.parse(request.query_params), window=_window(request, api))


def _sources(request: Request, customer: str, api: bool) -> tuple[queries.SourceQuery, dict]:
    query = _source_query(request, api)
    with request.app.state.warehouse.tenant(customer) as conn:
        return query, queries.sources(conn, customer, query)


def sources_page(request: Request) -> Response:
    query, data = _sources(request, _require(request, api=False), api=False)
    return _page(
        request,
        "sources.html",
        query=query,
        data=data,
        chart=charts.pass_fail_bars(data["items"], "source_ip"),
        window=query.window,
    )


def sources_api(request: Request) -> Response:
    query, data = _sources(request, _require(request, api=True), api=True)
    order = "desc" if query.descending else "asc"
    return JSONResponse({**data, "sort": query.sort, "order": order, "window": query.window.as_dict()})


def _report(request: Request, customer: str) -> dict:
    with request.app.state.warehouse.tenant(customer) as conn:
        data = queries.report(conn, customer, request.path_params["report_id"])
    if data is None:
        raise HTTPException(404, "no such report")
    return data


def report_page(request: Request) -> Response:
    return _page(request, "report.html", report=_report(request, _require(request, api=False)))


def report_api(request: Request) -> Response:
    return JSONResponse(_report(request, _require(request, api=True)))


# -- the DMARC product: services, readiness, details, alerts, export ----------------------------


def _tenant(request: Request, api: bool, fn, *args):
    customer = _require(request, api=api)
    with request.app.state.warehouse.tenant(customer) as conn:
        return customer, fn(conn, customer, *args)


def services_page(request: Request) -> Response:
    classification = request.query_params.get("classification", "")
    window = _window(request, api=False)
    _, rows = _tenant(request, False, dmarc.services, classification, window)
    return _page(
        request,
        "services.html",
        services=rows,
        classification=classification,
        classifications=queries.CLASSIFICATIONS,
        window=window,
    )


def services_api(request: Request) -> Response:
    window = _window(request, api=True)
    _, rows = _tenant(request, True, dmarc.services, request.query_params.get("classification", ""), window)
    return JSONResponse({"window": window.as_dict(), "services": rows})


async def mark_service(request: Request) -> Response:
    """The customer marks a service as theirs (or not): an event, applied by a projection refresh."""
    from starlette.concurrency import run_in_threadpool

    _require(request, api=False)
    form = await request.form()
    _check_csrf(request, form)
    await run_in_threadpool(
        _tenant, request, False, dmarc.record_mark, str(form.get("service", "")), form.get("mine") == "1"
    )
    # the projections are refreshed outside the request, one refresh at a time for all marks
    return RedirectResponse("/services", status_code=303, background=BackgroundTask(request.app.state.refresher.kick))


RULE = {
    "aligned": round(100 * dmarc.READY_ALIGNED_RATE),
    "window": dmarc.READY_WINDOW_DAYS,
    "quiet": dmarc.READY_QUIET_DAYS,
    "min_days": dmarc.READY_MIN_DAYS,
}


def readiness_page(request: Request) -> Response:
    _, rows = _tenant(request, False, dmarc.readiness)
    return _page(request, "readiness.html", domains=rows, rule=RULE)


def readiness_api(request: Request) -> Response:
    _, rows = _tenant(request, True, dmarc.readiness)
    return JSONResponse({"readiness": rows, "rule": RULE})


def source_page(request: Request) -> Response:
    _, detail = _tenant(request, False, dmarc.source_detail, request.path_params["ip"])
    if detail is None:
        raise HTTPException(404, "no such source")
    return _page(request, "source.html", detail=detail)


def source_api(request: Request) -> Response:
    _, detail = _tenant(request, True, dmarc.source_detail, request.path_params["ip"])
    if detail is None:
        raise HTTPException(404, "no such source")
    return JSONResponse(detail)


def _alerts(conn, customer: str) -> dict:
    return {"alerts": alerts.recent(conn, customer), "rules": alerts.rules_for(conn, customer)}


def _alerts_and_notifications(conn, customer: str) -> dict:
    webhook, email = tenants.notifications(conn)
    return {**_alerts(conn, customer), "notify": {"webhook_url": webhook, "digest_email": email}}


def alerts_page(request: Request, secret_once: str | None = None) -> Response:
    _, data = _tenant(request, False, _alerts_and_notifications)
    message = request.session.pop("flash", None)
    return _page(request, "alerts.html", secret_once=secret_once, flash=message, **data)


async def alerts_rule(request: Request) -> Response:
    """The customer sets one of their alert rules (a customer event)."""
    from starlette.concurrency import run_in_threadpool

    _require(request, api=False)
    form = await request.form()
    _check_csrf(request, form)
    try:
        threshold = float(str(form.get("threshold", "")).strip() or "nan")
        if not threshold >= 0:
            raise ValueError
    except ValueError:
        request.session["flash"] = "The threshold must be a number, 0 or more."
        return RedirectResponse("/alerts", status_code=303)
    rule = str(form.get("rule", ""))
    try:
        await run_in_threadpool(
            _tenant, request, False, alerts.record_rule, rule, threshold, form.get("enabled") == "1"
        )
    except ValueError:
        request.session["flash"] = "No such rule."
        return RedirectResponse("/alerts", status_code=303)
    request.session["flash"] = f"Rule {rule} saved."
    return RedirectResponse("/alerts", status_code=303)


async def alerts_notify(request: Request) -> Response:
    """The customer sets their webhook and digest address; a new webhook's secret is shown once."""
    from starlette.concurrency import run_in_threadpool

    _require(request, api=False)
    form = await request.form()
    _check_csrf(request, form)

    def save(conn, customer: str):
        return tenants.set_notifications(
            conn, str(form.get("webhook", "")).strip()[:500], str(form.get("email", "")).strip()[:300]
        )

    try:
        _, secret = await run_in_threadpool(_tenant, request, False, save)
    except ValueError as exc:  # about the customer's own input: the URL or address they typed
        request.session["flash"] = f"Not saved: {exc}."
        return RedirectResponse("/alerts", status_code=303)
    request.session["flash"] = "Notifications saved."
    if secret:  # shown in this response only: never in the session cookie, which is signed, not encrypted
        return await run_in_threadpool(alerts_page, request, secret)
    return RedirectResponse("/alerts", status_code=303)


def alerts_api(request: Request) -> Response:
    _, data = _tenant(request, True, _alerts)
    return JSONResponse(data)


def more_page(request: Request) -> Response:
    _require(request, api=False)
    return _page(request, "more.html")


# The simple tables: (title, columns (key, label, kind), fetch(conn, customer, params), empty text).
# params[WINDOWED] is the request's window; the views in WINDOWED_VIEWS show it (the others are
# all-time figures, and their pages say so).
WINDOWED = "_window"
WINDOWED_VIEWS = frozenset({"reports", "reporters", "domains", "countries", "disagreements"})


def _domains_table(conn, customer, params):
    return queries.domains(conn, customer, params[WINDOWED])


def _detail(part: str):
    def fetch(conn, customer, params):
        detail = dmarc.source_detail(conn, customer, params.get("ip", ""))
        return detail[part] if detail else []

    return fetch


TABLES = {
    "reports": (
        "Reports",
        [
            ("report_id", "Report", "report"),
            ("report_org", "Reporter", ""),
            ("policy_domain", "Domain", ""),
            ("policy_p", "Policy", ""),
            ("report_begin", "Begins", ""),
            ("report_end", "Ends", ""),
            ("messages", "Messages", "num"),
            ("dmarc_pass", "DMARC pass", "num"),
            ("aligned_pass", "Aligned", "num"),
        ],
        lambda conn, customer, params: dmarc.report_list(conn, customer, window=params[WINDOWED]),
        "No reports yet.",
    ),
    "reporters": (
        "Reporting organisations",
        [
            ("report_org", "Organisation", ""),
            ("reports", "Reports", "num"),
            ("messages", "Messages", "num"),
            ("pass_rate", "DMARC pass", "pct"),
            ("last_report", "Last report", ""),
        ],
        lambda conn, customer, params: dmarc.reporters(conn, customer, params[WINDOWED]),
        "No reports yet.",
    ),
    "countries": (
        "Countries",
        [
            ("country", "Country", ""),
            ("sources", "Sources", "num"),
            ("messages", "Messages", "num"),
            ("pass_rate", "DMARC pass", "pct"),
        ],
        lambda conn, customer, params: dmarc.countries(conn, customer, params[WINDOWED]),
        "No sources yet.",
    ),
    "disagreements": (
        "Verdict disagreements",
        [
            ("day", "Day", ""),
            ("report_id", "Report", "report"),
            ("source_ip", "Source", "source"),
            ("message_count", "Messages", "num"),
            ("dmarc_pass", "Receiver: DMARC pass", "bool"),
            ("aligned_pass", "Recomputed: aligned", "bool"),
            ("policy_dkim", "Receiver DKIM", ""),
            ("policy_spf", "Receiver SPF", ""),
            ("dkim_domain", "DKIM domain", ""),
            ("dkim_result", "DKIM result", ""),
            ("spf_domain", "SPF domain", ""),
            ("spf_result", "SPF result", ""),
            ("override_reasons", "Override", ""),
        ],
        lambda conn, customer, params: dmarc.disagreements(conn, customer, 1000, params[WINDOWED]),
        "None: every receiver's verdict matches the alignment recomputed from its authentication results.",
    ),
}
INTROS = {
    "disagreements": "Figures count the receivers' verdict (policy_evaluated), which decided what happened to the "
    "mail. These records are where it differs from the alignment recomputed from the reported DKIM and SPF results "
    "(a forwarder's override, a receiver's local policy, or a result the report does not show).",
}
EXPORTS = {
    **{name: fetch for name, (_, _, fetch, _) in TABLES.items()},
    "domains": _domains_table,
    "sources": None,  # streamed: _stream_sources
    "services": lambda conn, customer, params: dmarc.services(
        conn, customer, params.get("classification", ""), params[WINDOWED]
    ),
    "readiness": lambda conn, customer, params: [
        {**{k: v for k, v in d.items() if k != "blockers"}, "blockers": "; ".join(b["detail"] for b in d["blockers"])}
        for d in dmarc.readiness(conn, customer)
    ],
    "alerts": lambda conn, customer, params: alerts.recent(conn, customer, 10_000),
    "dkim": _detail("dkim"),
    "spf": _detail("spf"),
}


def _params(request: Request, api: bool) -> dict:
    """A table's parameters: the query's, and the window under ``WINDOWED``."""
    return {**request.query_params, WINDOWED: _window(request, api)}


def table_page(request: Request) -> Response:
    view = request.url.path.strip("/")
    title, columns, fetch, empty = TABLES[view]
    params = _params(request, api=False)
    _, rows = _tenant(request, False, fetch, params)
    # the export link carries the page's filters and its window (which may be the session's)
    kept = [urlencode({k: v}) for k, v in request.query_params.multi_items() if k not in WINDOW_PARAMS]
    if view in WINDOWED_VIEWS and params[WINDOWED].query:
        kept.append(params[WINDOWED].query)
    query = f"?{'&'.join(kept)}" if kept else ""
    return _page(
        request,
        "table.html",
        title=title,
        columns=columns,
        rows=rows,
        view=view,
        empty=empty,
        intro=INTROS.get(view),
        query_string=query,
        window=params[WINDOWED] if view in WINDOWED_VIEWS else None,
    )


def table_api(request: Request) -> Response:
    view = request.url.path.rsplit("/", 1)[-1]
    params = _params(request, api=True)
    _, rows = _tenant(request, True, TABLES[view][2], params)
    body = {view: jsonable(rows)}
    if view in WINDOWED_VIEWS:
        body["window"] = params[WINDOWED].as_dict()
    return JSONResponse(body)


def jsonable(rows: list[dict]) -> list[dict]:
    import datetime as dt
    from decimal import Decimal

    def value(v):
        if isinstance(v, dt.date | dt.datetime):
            return v.isoformat()
        if isinstance(v, Decimal):
            return float(v)
        return v

    return [{k: value(v) for k, v in row.items()} for row in rows]


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A cell as a spreadsheet can open it safely: text that a spreadsheet would run as a formula
    (=, +, -, @, a tab or a CR first: a report's org name of =HYPERLINK(...)) is prefixed with
    an apostrophe, shown as text; numbers are left as they are."""
    if isinstance(value, dict | list):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def export_csv(request: Request) -> Response:
    """``/api/export/<view>.csv``: every table as CSV, with the page's filters, as the tenant."""
    import csv
    import io

    view = request.path_params["view"]
    if view not in EXPORTS:
        raise HTTPException(404, "no such view")
    customer = _require(request, api=True)
    headers = {"Content-Disposition": f'attachment; filename="{customer}-{view}.csv"'}
    if view == "sources":  # up to 200,000 rows: streamed a batch at a time, never held whole
        return StreamingResponse(
            _stream_sources(request.app.state.warehouse, customer, _source_query(request, api=True)),
            media_type="text/csv; charset=utf-8",
            headers=headers,
        )
    params = _params(request, api=True)
    with request.app.state.warehouse.tenant(customer) as conn:
        rows = jsonable(EXPORTS[view](conn, customer, params))
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def _stream_sources(warehouse, customer: str, query, batch: int = 5_000):
    """CSV of every source matching the query, in its order, read by keyset cursor."""
    import csv
    import io

    header = True
    while True:
        # a pooled connection per batch, given back before the batch is sent: a slow download
        # never holds one of the pool's connections for its whole length
        with warehouse.tenant(customer) as conn:
            rows = queries.source_rows(conn, customer, query, limit=batch)
        if not rows:
            return
        last = rows[-1]
        key = float(last["sort_key"]) if isinstance(last["sort_key"], Decimal) else last["sort_key"]
        query = dataclasses.replace(query, after=(key, last["source_ip"]))
        out = io.StringIO()
        fields = [k for k in rows[0] if k not in {"sort_key", "window_sources"}]  # the query's own, not the export's
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        if header:
            writer.writeheader()
            header = False
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
        yield out.getvalue()
        if len(rows) < batch:
            return


def ping_api(request: Request) -> Response:
    """The cheapest authenticated route: what the benchmark measures as the server's floor."""
    return JSONResponse({"customer": _require(request, api=True)})


QUEUE_DEPTH_TTL_S = 5.0


def _queue_depths(app) -> dict:
    """Backlog and dead letters, cached for a few seconds: every health view needs them, SQS
    does not need to be asked for each one."""

    cached = app.state.queue_depths
    if cached and time.monotonic() - cached[0] < QUEUE_DEPTH_TTL_S:
        return cached[1]
    if cached and not app.state.queue_depths_lock.acquire(blocking=False):
        return cached[1]  # another request is asking SQS right now: the last answer will do
    try:
        return _ask_queue_depths(app)
    finally:
        if cached:
            app.state.queue_depths_lock.release()


def _ask_queue_depths(app) -> dict:
    from pipeline.importer.queue import queue_depth

    settings = app.state.settings
    try:
        visible, in_flight = queue_depth(app.state.sqs, settings.queue_url)
        dead, dead_in_flight = queue_depth(app.state.sqs, settings.dead_letter_queue_url)
        depths = {"backlog": visible + in_flight, "dead_letter": dead + dead_in_flight, "queue_error": None}
    except Exception as exc:  # the queue being down is itself health information
        log.warning("web health: queue not reachable: %s", exc)
        depths = {"backlog": None, "dead_letter": None, "queue_error": "the import queue did not answer"}
    app.state.queue_depths = (time.monotonic(), depths)
    return depths


def _health(request: Request, customer: str) -> dict:
    settings = request.app.state.settings
    with request.app.state.warehouse.tenant(customer) as conn:
        data = queries.health(conn, customer, settings.enriched_prefix)
    data.update(_queue_depths(request.app))
    return data


def health_page(request: Request) -> Response:
    return _page(request, "health.html", health=_health(request, _require(request, api=False)))


def health_api(request: Request) -> Response:
    data = _health(request, _require(request, api=True))
    for row in data["recent_loads"]:
        row["recorded_at"] = row["recorded_at"].isoformat()
    for row in data["failures"]:
        row["last_failed"] = row["last_failed"].isoformat()
    return JSONResponse(data)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 303:
        return RedirectResponse("/login", status_code=303)
    messages = {401: "Sign in first.", 403: "That form expired: reload the page and try again.", 404: "Not found."}
    message = messages.get(exc.status_code, "That did not work.")
    if exc.status_code == 400 and exc.detail:  # a parameter the request got wrong: say which and how
        message = str(exc.detail)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=exc.status_code)
    return _page(request, "error.html", stamp=False, status=exc.status_code, message=message)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("web error on %s", request.url.path)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "internal error"}, status_code=500)
    return HTMLResponse("<h1>Something went wrong</h1><p>It is logged; try again later.</p>", status_code=500)


def create_app(settings, secret: str | None = None, secure_cookie: bool | None = None) -> Starlette:
    from pipeline.aws import client

    routes = [
        Route("/", overview_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/domains", domains_page),
        Route("/domains/{domain:path}", domain_page),
        Route("/sources", sources_page),
        Route("/reports/{report_id:path}", report_page),
        Route("/health", health_page),
        Route("/api/overview", overview_api),
        Route("/api/domains", domains_api),
        Route("/api/domains/{domain:path}", domain_api),
        Route("/api/sources", sources_api),
        Route("/api/reports/{report_id:path}", report_api),
        Route("/api/health", health_api),
        Route("/services", services_page),
        Route("/services/mark", mark_service, methods=["POST"]),
        Route("/readiness", readiness_page),
        Route("/sources/{ip}", source_page),
        Route("/alerts", alerts_page),
        Route("/alerts/rules", alerts_rule, methods=["POST"]),
        Route("/alerts/notify", alerts_notify, methods=["POST"]),
        Route("/more", more_page),
        *[Route(f"/{view}", table_page) for view in TABLES],
        *[Route(f"/api/{view}", table_api) for view in TABLES],
        Route("/api/services", services_api),
        Route("/api/readiness", readiness_api),
        Route("/api/sources/{ip}", source_api),
        Route("/api/alerts", alerts_api),
        Route("/api/export/{view}.csv", export_csv),
        Route("/api/ping", ping_api),
    ]
    secret = secret or config.get("PIPELINE_WEB_SECRET") or secrets.token_urlsafe(32)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                same_site="strict",
                https_only=bool(config.get("PIPELINE_WEB_SECURE_COOKIE")) if secure_cookie is None else secure_cookie,
            ),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.settings = settings
    # the application's own login role: row-level security applies to everything it reads
    app.state.warehouse = queries.Warehouse(queries.web_database_url(settings.database_url))
    app.state.refresher = Refresher(settings.database_url)
    app.state.sqs = client(settings, "sqs")
    app.state.queue_depths = None
    app.state.queue_depths_lock = threading.Lock()
    return app
