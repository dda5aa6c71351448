"""``/ui``: the web console, server-rendered pages over the same handlers and queries as the JSON API.

A key is exchanged once for a session cookie (HttpOnly, SameSite=Strict, path /ui); every form and
every script request carries the session's CSRF token. What a page shows follows the key's scopes
and collections: pages call the API's own route functions with the key's grant, so the console
can do nothing the key could not do over HTTP. Actions under ``/ui/api/`` are metered like their
``/v1`` twins (one ledger row each, budgets and rate limits apply); page views are not.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.accounting import budgets_left
from app.answers import Question
from app.api import admin
from app.api import drift as drift_api
from app.api import feedback as feedback_api
from app.api import rollouts as rollouts_api
from app.api.answering import complete, prepare
from app.api.deps import (
    AppSettings,
    Configs,
    CurrentMeter,
    DbPool,
    Pipeline,
    RequestId,
    admit,
    get_accountant,
    get_meter,
    get_pool,
)
from app.api.query import create_query
from app.api.schemas import NO_NUL, QueryRequest, QueryResponse, RowId
from app.console import charts
from app.console.sessions import Session, SessionStore
from app.keys import ApiKey, list_keys
from app.usage import usage_by
from core.access import Grant
from core.config import RetrievalMode
from core.errors import AuthError, NotFound, RagopsError, ScopeError
from core.money import format_usd
from ingest import documents

CONSOLE = Path(__file__).resolve().parent.parent / "console"
PREFIX = "/ui"
SESSION_COOKIE = "ragops_session"
LOGIN_COOKIE = "ragops_login"  # double-submit token of the login form (there is no session yet)
CSRF_HEADER = "x-csrf-token"
MODES: tuple[RetrievalMode, ...] = ("hybrid", "vector", "keyword")
# Pages in the navigation, each with the scope it needs: a page is one line here and one template.
NAV = (
    ("playground", "Playground", "query"),
    ("index", "Index", "admin"),
    ("usage", "Usage and cost", "admin"),
    ("feedback", "Feedback", "admin"),
    ("quality", "Quality", "admin"),
    ("drift", "Drift", "admin"),
    ("rollouts", "Rollouts", "admin"),
    ("evals", "Evals", "admin"),
)
# script-src 'self': no inline script, none from elsewhere; SVG charts are markup, styles a file.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
# An eval report is a self-contained page with an inline <style>: shown sandboxed, nothing runs.
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"

router = APIRouter(prefix=PREFIX, include_in_schema=False)
templates = Jinja2Templates(directory=str(CONSOLE / "templates"))
templates.env.filters["usd"] = format_usd


class ConsoleHeaders:
    """Security headers on every /ui response (a response that set its own CSP keeps it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                defaults = {
                    b"content-security-policy": CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"no-referrer",
                    b"x-frame-options": b"SAMEORIGIN",
                }
                if not scope["path"].startswith(f"{PREFIX}/static/"):
                    defaults[b"cache-control"] = b"no-store"  # pages hold a key's data and a CSRF token
                headers += [(k, v) for k, v in defaults.items() if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def sessions_of(request: Request) -> SessionStore:
    """The process's console sessions (made with the app: app/main.py)."""
    store: SessionStore = request.app.state.console_sessions
    return store


def wants_html(request: Request) -> bool:
    """Whether an error on this request is shown as a console page (forms, links) rather than JSON (scripts)."""
    path = request.url.path
    return path.startswith(PREFIX) and CSRF_HEADER not in request.headers and not path.startswith("/ui/static")


def error_page(request: Request, status: int, message: str) -> Response:
    """An error as a console page; a missing or expired login goes to the login page."""
    if status == 401:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)
    viewer = _viewer_or_none(request)
    return _render(request, "error.html", viewer, {"status": status, "message": message}, status=status)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the session, its key and what the key may use."""

    session: Session
    grant: Grant

    @property
    def key(self) -> ApiKey:
        """The logged-in key."""
        return self.session.key

    def nav(self) -> list[tuple[str, str]]:
        """The pages this key may open."""
        return [(name, label) for name, label, scope in NAV if scope in self.key.scopes]


def _session(request: Request) -> Session:
    session = sessions_of(request).get(request.cookies.get(SESSION_COOKIE), get_pool(request).connection)
    if session is None:
        raise AuthError("log in to the console")
    return session


def _viewer_or_none(request: Request) -> Viewer | None:
    try:
        return _viewer(request)
    except RagopsError:
        return None


def _viewer(request: Request) -> Viewer:
    session = _session(request)
    return Viewer(session, session.key.grant(request.app.state.catalog.default_config))


def _check_csrf(session: Session, presented: str | None) -> None:
    if not session.csrf_ok(presented):
        raise ScopeError("missing or wrong CSRF token: reload the page and try again")


def page_viewer(scope: str) -> Any:
    """A dependency: the logged-in viewer, whose key must have ``scope`` (403 page otherwise)."""

    def dependency(request: Request) -> Viewer:
        viewer = _viewer(request)
        viewer.key.require(scope)
        return viewer

    return Depends(dependency)


def action_viewer(scope: str) -> Any:
    """A dependency for /ui/api actions: viewer with ``scope``, CSRF checked (header or form), key admitted.

    Admitting records the key on the request's meter and applies its concurrency slot and rate
    limits, exactly as a bearer key on /v1 would.
    """

    async def dependency(request: Request) -> Viewer:
        started = time.perf_counter()
        presented = request.headers.get(CSRF_HEADER)
        if presented is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            presented = str((await request.form()).get("csrf") or "")
        return await run_in_threadpool(_admitted, request, scope, presented, started)

    return Depends(dependency)


def _admitted(request: Request, scope: str, csrf: str | None, started: float) -> Viewer:
    """The viewer, its CSRF token checked (except on reads), its key admitted like a bearer key (database work)."""
    viewer = _viewer(request)
    if request.method != "GET":
        _check_csrf(viewer.session, csrf)
    if get_meter(request).key is None:
        admit(request, viewer.key, scope, started)
    viewer.key.require(scope)
    return viewer


QueryViewer = Annotated[Viewer, page_viewer("query")]
AdminViewer = Annotated[Viewer, page_viewer("admin")]
QueryAction = Annotated[Viewer, action_viewer("query")]
AdminAction = Annotated[Viewer, action_viewer("admin")]


def _render(
    request: Request, template: str, viewer: Viewer | None, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    page = template.removesuffix(".html")
    base = {"viewer": viewer, "nav": viewer.nav() if viewer else [], "page": page, "prefix": PREFIX,
            "csrf": viewer.session.csrf if viewer else ""}  # fmt: skip
    return templates.TemplateResponse(request, template, {**base, **context}, status_code=status)


def _done(request: Request, to: str, payload: Any) -> Response:
    """After an action: JSON for scripts, back to the page for a plain form (post/redirect/get)."""
    if CSRF_HEADER in request.headers:
        return Response(payload.model_dump_json(), media_type="application/json")
    return RedirectResponse(f"{PREFIX}/{to}", status_code=303)


# Login and logout.


@router.get("")
def read_console(request: Request) -> RedirectResponse:
    """The console's front door: the playground, or the login page."""
    return RedirectResponse(f"{PREFIX}/playground" if _viewer_or_none(request) else f"{PREFIX}/login", 303)


@router.get("/login")
def read_login(request: Request, failed: str | None = None) -> HTMLResponse:
    """The login form (a key goes in the body of a POST, never in a URL)."""
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = _render(request, "login.html", None, {"login_token": token, "failed": failed is not None})
    _set_cookie(request, response, LOGIN_COOKIE, token, f"{PREFIX}/login", 600)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, path: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


@router.post("/login")
def create_session(
    request: Request, key: Annotated[str, Form(max_length=200)], csrf: Annotated[str, Form(max_length=100)] = ""
) -> Response:
    """Exchange an API key for a session cookie."""
    expected = request.cookies.get(LOGIN_COOKIE)
    if not expected or csrf != expected:
        raise ScopeError("missing or wrong CSRF token: reload the login page and try again")
    accountant = get_accountant(request)
    try:
        api_key = accountant.keys.verify(accountant.pool.connection, key.strip())
    except AuthError:
        return RedirectResponse(f"{PREFIX}/login?failed", status_code=303)
    session_id, _ = sessions_of(request).create(api_key)
    start = "playground" if "query" in api_key.scopes else "index"
    response = RedirectResponse(f"{PREFIX}/{start}", status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, session_id, PREFIX, int(sessions_of(request).ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


@router.post("/logout")
def delete_session(request: Request, csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    """End the session and clear its cookie."""
    session = _session(request)
    _check_csrf(session, csrf)
    sessions_of(request).end(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# Playground.


def _collections(pool: Any, grant: Grant) -> list[documents.CollectionSummary]:
    with pool.connection() as conn:
        return documents.list_collections(conn, grant.collections)


@router.get("/playground")
def read_playground(
    request: Request,
    viewer: QueryViewer,
    pool: DbPool,
    catalog: Configs,
    rated: Annotated[Literal["up", "down"] | None, Query()] = None,
) -> HTMLResponse:
    """Ask a question with a chosen collection, configuration and retrieval mode; compare two configurations."""
    context = {**_playground_context(pool, catalog, viewer), "rated": rated}
    return _render(request, "playground.html", viewer, context)


def _playground_context(pool: Any, catalog: Any, viewer: Viewer) -> dict[str, Any]:
    return {
        "collections": _collections(pool, viewer.grant),
        "configs": viewer.grant.configs_of(catalog.configs),
        "default_config": catalog.default_config,
        "modes": MODES,
    }


class AskRequest(QueryRequest):
    """A playground question (the query API's request, always streamed)."""

    stream: bool = True


@router.post("/api/ask")
def create_ask(
    body: AskRequest, viewer: QueryAction, pipeline: Pipeline, meter: CurrentMeter, request_id: RequestId
) -> object:
    """Answer as Server-Sent Events, exactly as POST /v1/query with stream: true."""
    return create_query(body.model_copy(update={"stream": True}), pipeline, meter, viewer.grant, request_id)


@router.post("/api/answer")
def create_answer(
    request: Request,
    viewer: QueryAction,
    pipeline: Pipeline,
    meter: CurrentMeter,
    request_id: RequestId,
    pool: DbPool,
    catalog: Configs,
    question: Annotated[str, Form(min_length=1, max_length=20_000)],
    collection: Annotated[str | None, Form(max_length=64)] = None,
    config: Annotated[str | None, Form(max_length=200)] = None,
    mode: Annotated[Literal["", "hybrid", "vector", "keyword"], Form()] = "",
) -> HTMLResponse:
    """The playground without JavaScript: the whole answer, rendered into the page."""
    asked = Question(text=question, config=config or None, collection=collection or None, mode=mode or None)
    answer = complete(pipeline, prepare(pipeline, meter, asked, viewer.grant), meter)
    result = QueryResponse.of(answer, request_id, meter.entry.cost_usd)
    context = {**_playground_context(pool, catalog, viewer), "result": result, "asked": asked}
    return _render(request, "playground.html", viewer, context)


# Index: collections, versions, jobs.


@router.get("/index")
def read_index(request: Request, viewer: AdminViewer, pool: DbPool, catalog: Configs) -> HTMLResponse:
    """Collections, index versions and reindex jobs; activate, roll back, reindex, upload."""
    indexes = admin.read_indexes(pool, viewer.grant).indexes
    visible = [i for i in indexes if viewer.grant.all_collections or i.collections]
    context = {
        "collections": _collections(pool, viewer.grant),
        "indexes": visible,
        "jobs": admin.read_jobs(pool, viewer.grant, None, 20).jobs,
        "configs": viewer.grant.configs_of(catalog.configs),
        "global_admin": viewer.grant.all_collections,
    }
    return _render(request, "index.html", viewer, context)


@router.get("/index/jobs")
def read_console_jobs(viewer: AdminViewer, pool: DbPool) -> admin.JobsResponse:
    """Jobs of the key's collections, for the live progress table (a read polled every second: not ledgered)."""
    return admin.read_jobs(pool, viewer.grant, None, 20)


@router.post("/api/reindex")
def create_console_reindex(
    request: Request,
    viewer: AdminAction,
    pool: DbPool,
    settings: AppSettings,
    catalog: Configs,
    collection: Annotated[str | None, Form(max_length=64)] = None,
    config: Annotated[str | None, Form(max_length=200)] = None,
    mode: Annotated[Literal["incremental", "full"], Form()] = "incremental",
    activate: Annotated[bool, Form()] = False,
) -> Response:
    """Queue a reindex of a collection's sources (POST /v1/admin/reindex)."""
    body = admin.ReindexRequest(collection=collection or None, config=config or None, mode=mode, activate=activate)
    return _done(request, "index", admin.create_reindex(body, pool, settings, catalog, viewer.grant))


@router.post("/api/indexes/{version_id}/activate")
def activate_console_index(
    request: Request,
    version_id: RowId,
    viewer: AdminAction,
    pool: DbPool,
    catalog: Configs,
    collection: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    """Switch to an index version (activating the previous one rolls back) (POST /v1/admin/indexes/{id}/activate)."""
    result = admin.activate_index(version_id, pool, catalog, viewer.grant, collection or None)
    return _done(request, "index", result)


class AdminSessionFirst(APIRoute):
    """A console route whose session (and its admin scope) is checked before the body is received (uploads)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def session_first(request: Request) -> Response:
            viewer = await run_in_threadpool(_viewer, request)
            viewer.key.require("admin")
            return await handler(request)

        return session_first


def create_console_documents(
    request: Request,
    viewer: AdminAction,
    pool: DbPool,
    settings: AppSettings,
    catalog: Configs,
    files: Annotated[list[UploadFile], File()],
    collection: Annotated[str | None, Form(max_length=64)] = None,
) -> Response:
    """Upload documents and queue their ingestion (POST /v1/admin/documents)."""
    accepted = admin.create_documents(pool, settings, catalog, viewer.grant, files, collection or None)
    return _done(request, "index", accepted)


router.add_api_route(
    "/api/documents", create_console_documents, methods=["POST"], route_class_override=AdminSessionFirst
)


# Usage and cost.


@router.get("/usage")
def read_console_usage(
    request: Request, viewer: AdminViewer, pool: DbPool, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> HTMLResponse:
    """Requests, tokens, cost, latency and errors per key, configuration and day; budgets and what is left.

    The period is whole UTC days, today's included: every bar is a day, and every day but today is read from
    the usage roll-up.
    """
    until = datetime.now(UTC) + timedelta(seconds=1)
    since = datetime.combine(until.date() - timedelta(days=days - 1), datetime.min.time(), UTC)
    own = None if viewer.grant.all_collections else viewer.key.id
    with pool.connection() as conn:
        groups = usage_by(conn, since, until, ["key", "config", "day"], key_id=own)
        keys = list_keys(conn) if own is None else [viewer.key]
        budgets = budgets_left(conn, [k for k in keys if k.revoked_at is None])
    daily = groups["day"]
    context = {
        "days": days,
        "groups": groups,
        "budgets": budgets,
        "charts": {
            "Requests per day": charts.bars([(r["group"][5:], r["requests"]) for r in daily], "requests per day"),
            "Cost per day (USD)": charts.bars([(r["group"][5:], float(r["cost_usd"])) for r in daily]),
            "Latency p95 per day (ms)": charts.bars([(r["group"][5:], r["latency_p95_ms"] or 0.0) for r in daily]),
            "Errors per day": charts.bars([(r["group"][5:], r["errors"]) for r in daily]),
        },
    }
    return _render(request, "usage.html", viewer, context)


# Feedback, online quality, drift and rollouts: the admin API's own handlers, with the key's grant.


def _chosen(pool: Any, viewer: Viewer, collection: str | None) -> tuple[str | None, list[str]]:
    """The collection a page shows (asked for, else the key's first) and the key's collections to choose from."""
    names = [c.name for c in _collections(pool, viewer.grant)]
    return collection or (names[0] if names else None), names


def _short(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%m-%d %H:%M")


Collection = Annotated[str | None, Query(max_length=64, pattern=NO_NUL)]
FEEDBACK_SHOWN = 500


@router.get("/feedback")
def read_console_feedback(
    request: Request,
    viewer: AdminViewer,
    pool: DbPool,
    collection: Collection = None,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
    negative: Annotated[Literal["", "true", "false"], Query()] = "",
) -> HTMLResponse:
    """Ratings of a collection the key administers, newest first, with the versions that produced each answer
    (GET /v1/feedback); the free text shown is the PII-filtered text stored."""
    chosen, names = _chosen(pool, viewer, collection)
    only = {"true": True, "false": False}.get(negative)
    items = feedback_api.read_feedback(pool, viewer.grant, chosen, f"{days}d", only, 0, FEEDBACK_SHOWN).items
    per_day: dict[str, list[int]] = {}
    for item in items:
        counts = per_day.setdefault(item.updated_at.astimezone(UTC).strftime("%m-%d"), [0, 0])
        counts[1 if item.negative else 0] += 1
    context = {
        "collection": chosen, "collections": names, "negative": negative, "days": days, "items": items[::-1],
        "limit": FEEDBACK_SHOWN,
        "charts": {
            "Good ratings per day": charts.bars([(d, c[0]) for d, c in sorted(per_day.items())], "good ratings"),
            "Poor ratings per day": charts.bars([(d, c[1]) for d, c in sorted(per_day.items())], "poor ratings"),
        },
    }  # fmt: skip
    return _render(request, "feedback.html", viewer, context)


@router.get("/quality")
def read_console_quality(
    request: Request,
    viewer: AdminViewer,
    pool: DbPool,
    collection: Collection = None,
    since: Annotated[str, Query(max_length=40, pattern=NO_NUL)] = "7d",
) -> HTMLResponse:
    """Online evaluation of sampled live answers per collection, configuration, versions and day
    (GET /v1/admin/quality)."""
    report = admin.read_quality(pool, viewer.grant, collection or None, since)
    rows = report.rows
    several = len({(r.collection, r.config_version) for r in rows}) > 1

    def label(r: admin.QualityRow) -> str:
        return r.day[5:] + (f" {r.collection}/{r.config_version.partition('@')[0]}" if several else "")

    context = {
        "report": report, "collection": collection or "", "since": since, "collections": _chosen(pool, viewer, None)[1],
        "charts": {
            "Answers evaluated": charts.bars([(label(r), r.answers) for r in rows], "answers evaluated"),
            "Support (mean share of supported sentences)": charts.bars([(label(r), r.support or 0.0) for r in rows]),
            "Refusal rate": charts.bars([(label(r), r.refusal_rate or 0.0) for r in rows], "refusal rate"),
            "Top retrieval score (mean)": charts.bars([(label(r), r.top_score or 0.0) for r in rows]),
        },
    }  # fmt: skip
    return _render(request, "quality.html", viewer, context)


@router.get("/drift")
def read_console_drift(
    request: Request,
    viewer: AdminViewer,
    pool: DbPool,
    catalog: Configs,
    collection: Collection = None,
    config: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
) -> HTMLResponse:
    """Drift windows of a collection and configuration, the newest verdict per signal, content gaps
    (GET /v1/admin/drift)."""
    chosen, names = _chosen(pool, viewer, collection)
    drift = drift_api.read_drift(pool, catalog, viewer.grant, chosen, config or None, None, 2000)
    by_signal: dict[str, list[tuple[str, float]]] = {}
    for w in drift.windows:
        value = w.window_value if w.window_value is not None else (w.statistic or 0.0)
        by_signal.setdefault(w.signal, []).append((_short(w.window_start), value))
    context = {
        "drift": drift, "collections": names, "configs": viewer.grant.configs_of(catalog.configs),
        "charts": {signal: charts.bars(points, signal) for signal, points in sorted(by_signal.items())},
    }  # fmt: skip
    return _render(request, "drift.html", viewer, context)


@router.get("/rollouts")
def read_console_rollouts(request: Request, viewer: AdminViewer, pool: DbPool) -> HTMLResponse:
    """Rollouts of the key's collections: stage, samples, the sequential test per guard; promote or abort
    (GET /v1/admin/rollouts)."""
    rollouts = rollouts_api.read_rollouts(pool, viewer.grant, 50).rollouts
    return _render(request, "rollouts.html", viewer, {"rollouts": rollouts})


@router.post("/api/rollouts/{rollout_id}/{action}")
def act_on_console_rollout(
    request: Request,
    rollout_id: RowId,
    action: Literal["promote", "abort"],
    viewer: AdminAction,
    pool: DbPool,
    pipeline: Pipeline,
) -> Response:
    """Promote or abort a rollout (POST /v1/admin/rollouts/{id}/promote or /abort)."""
    handler = rollouts_api.promote_rollout if action == "promote" else rollouts_api.abort_rollout
    return _done(request, "rollouts", handler(rollout_id, pool, viewer.grant, pipeline))


@router.post("/api/feedback")
def create_console_feedback(
    request: Request,
    viewer: QueryAction,
    pool: DbPool,
    pipeline: Pipeline,
    catalog: Configs,
    request_id: Annotated[str, Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    rating: Annotated[int, Form(ge=-1, le=1)],
) -> Response:
    """Thumbs up or down on a playground answer (POST /v1/feedback)."""
    body = feedback_api.FeedbackRequest(request_id=request_id, scale="thumbs", rating=rating)
    saved = feedback_api.create_feedback(request, body, pool, pipeline, catalog, viewer.key, viewer.grant)
    if CSRF_HEADER in request.headers:
        return Response(saved.model_dump_json(), media_type="application/json")
    return RedirectResponse(f"{PREFIX}/playground?rated={'up' if rating > 0 else 'down'}", status_code=303)


# Eval gate reports.


def _reports(folder: Path) -> list[tuple[str, datetime]]:
    if not folder.is_dir():
        return []
    found = [(p.name, datetime.fromtimestamp(p.stat().st_mtime, UTC)) for p in folder.glob("*.html") if p.is_file()]
    return sorted(found, key=lambda r: r[1], reverse=True)


@router.get("/evals")
def read_evals(request: Request, viewer: AdminViewer, settings: AppSettings, report: str | None = None) -> HTMLResponse:
    """Eval gate reports written by ``ragops eval compare --html`` into the reports folder, newest first."""
    reports = _reports(settings.eval_reports_folder)
    names = [name for name, _ in reports]
    if report is not None and report not in names:
        raise NotFound(f"no report {report!r}")
    chosen = report or (names[0] if names else None)
    context = {"reports": reports, "chosen": chosen, "folder": settings.eval_reports_folder}
    return _render(request, "evals.html", viewer, context)


@router.get("/evals/report/{name}")
def read_eval_report(name: str, viewer: AdminViewer, settings: AppSettings) -> FileResponse:
    """One report as the gate wrote it, sandboxed (no script runs, nothing is fetched)."""
    if name not in {n for n, _ in _reports(settings.eval_reports_folder)}:  # names from the folder only
        raise NotFound(f"no report {name!r}")
    path = settings.eval_reports_folder / name
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})
