"""`pipeline web`: Starlette (the framework under the Dagster webserver), Jinja2 pages, JSON API.

Handlers that query the database are plain functions: Starlette runs them in its thread pool,
so blocking psycopg calls never stall the event loop.

Sign-in: a customer's API token (``pipeline web-token --customer ID``), either in the sign-in
form (a signed session cookie follows) or as ``Authorization: Bearer <token>`` on the API. A
request only ever reads as its own tenant (row-level security); asking for anything else gives
404, and errors never echo the input back.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline import config
from pipeline.web import charts, queries
from pipeline.web.tenants import customer_for

log = logging.getLogger("pipeline.web")
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)


def _customer(request: Request) -> str | None:
    """The request's tenant (bearer token, else the session), looked up once per request."""
    if "customer" not in request.state._state:
        customer = request.session.get("customer")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            with request.app.state.warehouse.service() as conn:
                customer = customer_for(conn, header[7:].strip())
        request.state.customer = customer
    return request.state.customer


def _page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(request=request, customer=_customer(request), **context)
    return HTMLResponse(html, status_code=status)


def _require(request: Request, api: bool) -> str:
    customer = _customer(request)
    if customer is None:
        if api:
            raise HTTPException(401, "sign in with an API token (Authorization: Bearer <token>)")
        raise HTTPException(303, "sign in")
    return customer


async def login(request: Request) -> Response:
    if request.method == "GET":
        return _page(request, "login.html")
    form = await request.form()
    with request.app.state.warehouse.service() as conn:
        customer = customer_for(conn, str(form.get("token", "")).strip())
    if customer is None:
        log.info("web sign-in refused from %s", request.client.host if request.client else "?")
        return _page(request, "login.html", status=401, error="That token is not valid.")
    request.session.clear()
    request.session["customer"] = customer
    return RedirectResponse("/", status_code=303)


def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _overview(request: Request, customer: str) -> dict:
    with request.app.state.warehouse.tenant(customer) as conn:
        data = queries.overview(conn, customer)
        data["recent_reports"] = queries.recent_reports(conn, customer)
    return data


def overview_page(request: Request) -> Response:
    customer = _require(request, api=False)
    data = _overview(request, customer)
    return _page(
        request,
        "overview.html",
        data=data,
        trend_chart=charts.compliance_trend(data["trend"]),
        domain_chart=charts.pass_fail_bars(data["domains"], "domain"),
    )


def overview_api(request: Request) -> Response:
    data = _overview(request, _require(request, api=True))
    for row in data["recent_reports"]:
        row["report_end"] = row["report_end"].isoformat() if row["report_end"] else None
        row["messages"] = int(row["messages"] or 0)
    return JSONResponse(data)


def domains_page(request: Request) -> Response:
    customer = _require(request, api=False)
    with request.app.state.warehouse.tenant(customer) as conn:
        rows = queries.domains(conn, customer)
    return _page(request, "domains.html", domains=rows, chart=charts.pass_fail_bars(rows, "domain", limit=20))


def domains_api(request: Request) -> Response:
    customer = _require(request, api=True)
    with request.app.state.warehouse.tenant(customer) as conn:
        return JSONResponse({"domains": queries.domains(conn, customer)})


def _sources(request: Request, customer: str) -> tuple[queries.SourceQuery, dict]:
    query = queries.SourceQuery.parse(request.query_params)
    with request.app.state.warehouse.tenant(customer) as conn:
        return query, queries.sources(conn, customer, query)


def sources_page(request: Request) -> Response:
    query, data = _sources(request, _require(request, api=False))
    return _page(
        request, "sources.html", query=query, data=data, chart=charts.pass_fail_bars(data["items"], "source_ip")
    )


def sources_api(request: Request) -> Response:
    query, data = _sources(request, _require(request, api=True))
    return JSONResponse({**data, "sort": query.sort, "order": "desc" if query.descending else "asc"})


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
    with request.app.state.warehouse.service() as conn:
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
    messages = {401: "Sign in first.", 403: "Not yours.", 404: "Not found."}
    message = messages.get(exc.status_code, "That did not work.")
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=exc.status_code)
    return _page(request, "error.html", status=exc.status_code, message=message)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("web error on %s", request.url.path)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "internal error"}, status_code=500)
    return HTMLResponse("<h1>Something went wrong</h1><p>It is logged; try again later.</p>", status_code=500)


def create_app(settings, secret: str | None = None) -> Starlette:
    from pipeline.aws import client

    routes = [
        Route("/", overview_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST", "GET"]),
        Route("/domains", domains_page),
        Route("/sources", sources_page),
        Route("/reports/{report_id:path}", report_page),
        Route("/health", health_page),
        Route("/api/overview", overview_api),
        Route("/api/domains", domains_api),
        Route("/api/sources", sources_api),
        Route("/api/reports/{report_id:path}", report_api),
        Route("/api/health", health_api),
    ]
    secret = secret or config.get("PIPELINE_WEB_SECRET") or secrets.token_urlsafe(32)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SessionMiddleware, secret_key=secret, same_site="strict", https_only=False)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.settings = settings
    app.state.warehouse = queries.Warehouse(settings.database_url)
    app.state.sqs = client(settings, "sqs")
    app.state.queue_depths = None
    app.state.queue_depths_lock = threading.Lock()
    return app
