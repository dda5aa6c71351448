"""The FastAPI application: services built in the lifespan, errors mapped to statuses in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from wsgiref.simple_server import WSGIServer

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import start_http_server
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.accounting import Accountant, LedgerEntry, release_stale_holds
from app.api import admin, collections, console, drift, feedback, openai_compat, query, rollouts, system, usage
from app.api.errors import error_body, error_of, error_response
from app.api.limits import BodyLimitMiddleware
from app.console.sessions import SessionStore
from app.feedback import CHORES
from app.metering import UNMATCHED_ROUTE, Meter
from app.metrics import Metrics, QualityGauges, SentenceVectorCounters
from app.online_eval import online_evaluator, today_figures
from app.online_judge import OnlineJudges, judge_model
from app.pricing import load_pricing
from app.rag import RagPipeline
from app.rollouts.routing import RolloutRouter
from app.rollouts.shadow import ShadowWorker
from app.usage import USAGE_ROLLUP
from core.catalog import Catalog
from core.db import Database
from core.embedding import get_embedder
from core.errors import (
    BudgetExceeded,
    DatabaseError,
    GenerationError,
    PiiBlocked,
    PiiUnavailable,
    RagopsError,
    RateLimited,
)
from core.migrations import migrate
from core.settings import Settings, get_settings
from core.tracing import NO_TRACING, Tracing, span_id_of, trace_id_of
from ingest.worker import Chore, Worker

log = logging.getLogger("ragops")
METERED_PREFIXES = ("/v1/", "/ui/api/")  # the console's actions cost what their /v1 twins do
HTTP_ERROR_KINDS = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}
NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def _meter(request: Request) -> Meter | None:
    return getattr(request.state, "meter", None)


class RequestContext:
    """Request id, and the request's meter from before the route runs until after the response is over.

    The one owner of the meter's lifetime: it is closed here for every outcome (a whole answer, a
    stream read to its end, an error, a client that hung up mid-stream or before the stream began).
    Requests that matched no route or were refused before a key was verified are only counted
    (``ragops_rejected_requests_total``), so anonymous traffic writes no ledger rows.
    Plain ASGI: Starlette's ``@app.middleware("http")`` wrapper costs more per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, metering: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.metering = metering

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        meter = None
        accountant = getattr(scope["app"].state, "accountant", None)
        if self.metering and accountant is not None and scope["path"].startswith(METERED_PREFIXES):
            meter = Meter(accountant, self.metrics, LedgerEntry(request_id=request_id, route=scope["path"][:200]))
            state["meter"] = meter
        status: int | None = None  # None until a response starts: a client gone before it is a 499
        tracing: Tracing = getattr(scope["app"].state, "tracing", NO_TRACING)
        traced = tracing.enabled and scope["path"].startswith(METERED_PREFIXES)
        with tracing.request("ragops.request", _headers(scope)) if traced else NO_SPAN as span:
            trace_id = trace_id_of(span) if span is not None else None
            if meter is not None and span is not None:
                meter.entry.trace_id, meter.entry.span_id = trace_id, span_id_of(span)

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = MutableHeaders(scope=message)
                    headers.append("X-Request-Id", request_id)
                    if trace_id is not None:
                        headers.append("X-Trace-Id", trace_id)
                await send(message)

            watcher = DisconnectWatcher(receive, meter.gone) if meter is not None else None
            try:
                await self.app(scope, watcher.receive if watcher is not None else receive, send_with_id)
            finally:
                if watcher is not None:
                    watcher.stop()
                route = getattr(scope.get("route"), "path", None)  # the template, e.g. /v1/admin/jobs/{job_id}
                refused = _refusal(meter, route, status)
                if span is not None:
                    span.update_name(f"{scope['method']} {route or UNMATCHED_ROUTE}")
                if refused is not None:  # counted, never ledgered: anonymous traffic must not cost a row
                    self.metrics.rejected.labels(refused).inc()
                elif meter is not None:
                    # The response is over (or abandoned): the client does not wait for the ledger.
                    await run_in_threadpool(meter.close, status, route)


class DisconnectWatcher:
    """Tells a route running in a worker thread that its client hung up (``gone`` is set).

    Once the app has read the whole request body, nothing else listens to the connection until a
    streamed response does: a whole answer would be computed for a client long gone, holding its
    key's concurrency slot and the CPU other clients wait for. The watcher listens from then on.
    """

    def __init__(self, receive: Receive, gone: threading.Event) -> None:
        self._receive = receive
        self.gone = gone
        self._task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        """The app's receive: passes every message on, and starts listening once the body is complete."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone.set()
        elif message["type"] == "http.request" and not message.get("more_body", False) and self._task is None:
            self._task = asyncio.create_task(self._listen())
        return message

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    def stop(self) -> None:
        """The response is over: stop listening."""
        if self._task is not None:
            self._task.cancel()


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers, for the W3C trace context a caller may send (``traceparent``)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _refusal(meter: Meter | None, route: str | None, status: int | None) -> str | None:
    """Why a request is only counted, not ledgered: it matched no route, or no key was verified for it."""
    if route is None and status == 404:
        return "not_found"
    if meter is not None and meter.key is None and meter.accountant.auth_enabled:
        return "unauthenticated"
    return None


def worker_chores(catalog: Catalog, settings: Settings) -> tuple[Chore, ...]:
    """What the worker does between jobs for this layer: expired transcripts, usage roll-up, online evaluation
    (and its LLM judge when a configuration names one; a judge model without a price is a ConfigError here)."""
    judges = None
    if any(c.config.online_eval.judge.enabled for c in catalog.configs.values()):
        judges = OnlineJudges(catalog, settings, load_pricing(settings.configs_dir))
    return (*CHORES, USAGE_ROLLUP, Chore("online evaluation", 0.0, online_evaluator(catalog, judges).run_once))


def _start_worker(database: Database, settings: Settings, catalog: Catalog) -> Worker | None:
    """The in-process worker (jobs and online evaluations): on with the embedded database unless turned off
    (production runs `ragops worker`)."""
    enabled = settings.worker_in_process
    if enabled is None:
        enabled = settings.database_url is None
    if not enabled:
        return None
    worker = Worker(database, settings, chores=worker_chores(catalog, settings))
    worker.start()
    log.info("in-process job worker %s started", worker.worker_id)
    return worker


def _start_shadow_worker(app: FastAPI, in_process: bool) -> ShadowWorker | None:
    """The rollout worker, in this process whenever the job worker is (production runs `ragops rollout work`)."""
    if not in_process:
        return None
    shadow = ShadowWorker(app.state.pipeline, app.state.accountant)
    shadow.start()
    return shadow


def _start_metrics_server(metrics: Metrics, settings: Settings) -> WSGIServer | None:
    """/metrics on its own port (RAGOPS_METRICS_PORT), so it can stay internal while the API is public."""
    if settings.metrics_port is None:
        return None
    server, _ = start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    return server


def _open_services(app: FastAPI, settings: Settings, catalog: Catalog, pool: ConnectionPool, metering: bool) -> None:
    """Build what the routes use (prices, pipeline, accountant) and load every model now, not on a request."""
    pricing = load_pricing(settings.configs_dir)
    pipeline = RagPipeline(settings, catalog, pool)
    for config in catalog.configs.values():  # every model a config can answer (or be judged) with has a price
        pricing.model(pipeline.generator(config).model_for_config(config))
        if config.config.online_eval.judge.enabled:
            pricing.model(judge_model(config))
        pipeline.pii_engine(config)
    pipeline.embedder(catalog.config(None))
    app.state.settings, app.state.catalog, app.state.pool, app.state.pipeline = settings, catalog, pool, pipeline
    pipeline.rollouts = RolloutRouter(pool)
    app.state.accountant = Accountant(
        pool, pricing, auth_enabled=settings.auth_enabled and metering, key_cache_ttl_s=settings.auth_cache_ttl_s,
        hold_max_age_s=settings.budget_hold_max_age_s, max_concurrent_per_key=settings.key_max_concurrent,
    )  # fmt: skip
    with pool.connection() as conn:  # holds a crashed process left behind
        release_stale_holds(conn, settings.budget_hold_max_age_s)
    app.state.metrics.registry.register(QualityGauges(lambda: today_figures(pool)))
    app.state.metrics.registry.register(SentenceVectorCounters(pipeline.sentence_vector_counts))


def _lifespan(settings: Settings, metering: bool) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_enabled:
            log.warning("authentication is OFF (RAGOPS_AUTH_ENABLED=false): every /v1 route is open")
        # Load the embedding model first: a bad model path stops start-up with its own message.
        catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
        get_embedder(catalog.config(None).config.index.embedding)
        database = Database.from_settings(settings)
        try:
            with database.connect() as conn:
                if settings.migrate_on_start:
                    migrate(conn)
            pool = database.pool(settings.db_pool_max, async_commit=True, timeout_s=settings.db_pool_timeout_s)
            try:
                _open_services(app, settings, catalog, pool, metering)
                app.state.metrics.watch_drift(pool, catalog)
                worker = _start_worker(database, settings, catalog)
                shadow = _start_shadow_worker(app, worker is not None)
                metrics_server = _start_metrics_server(app.state.metrics, settings)
                try:
                    yield
                finally:
                    if metrics_server is not None:
                        metrics_server.shutdown()
                        metrics_server.server_close()
                    if shadow is not None:
                        shadow.stop()
                    if worker is not None:
                        worker.stop()
                    app.state.tracing.shutdown()
            finally:
                pool.close()
        finally:
            database.close()

    return lifespan


def _record_failure(metrics: Metrics, request: Request, exc: BaseException) -> None:
    """Tag the request's ledger row with the error and count it in the metrics."""
    meter = _meter(request)
    if meter is not None:
        meter.entry.error_kind = meter.entry.error_kind or type(exc).__name__
    if isinstance(exc, BudgetExceeded):
        metrics.budget_rejections.inc()
    elif isinstance(exc, RateLimited):
        metrics.rate_limited.inc()
    elif isinstance(exc, GenerationError):
        metrics.generator_errors.labels(type(exc).__name__).inc()
    elif isinstance(exc, PiiBlocked):
        metrics.pii_blocked.inc()
        if meter is not None:
            meter.entry.pii_counts = exc.counts
    elif isinstance(exc, PiiUnavailable) and (meter is None or meter.pii is None):
        metrics.pii_failures.inc()  # failed before the meter saw the request's PII session


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every error, ours or the framework's, answered in the one shape (app/api/errors.py)."""

    def respond(request: Request, exc: BaseException, body: dict[str, Any]) -> Response:
        _record_failure(metrics, request, exc)
        if console.wants_html(request):
            return console.error_page(request, body["error"]["code"], body["error"]["message"])
        headers = {}
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after:
            headers["Retry-After"] = str(retry_after)
        if body["error"]["code"] == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(body, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return respond(request, exc, error_body(422, message, "invalid_request", field))

    @app.exception_handler(RagopsError)
    async def ragops_error(request: Request, exc: RagopsError) -> Response:
        return respond(request, exc, error_of(exc, request.state.request_id))

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %s", type(exc).__name__)
        unavailable = DatabaseError("database unavailable; retry shortly")
        return respond(request, unavailable, error_of(unavailable, request.state.request_id))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """The framework's own errors (unknown route, wrong method, unparsable or oversized body), in our shape."""
        kind = HTTP_ERROR_KINDS.get(exc.status_code, "invalid_request")
        response = respond(request, exc, error_body(exc.status_code, str(exc.detail), kind))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        return respond(request, exc, error_of(exc, getattr(request.state, "request_id", "?")))


def create_app(settings: Settings | None = None, *, metering: bool = True, tracing: Tracing | None = None) -> FastAPI:
    """Build the application; nothing is started until the lifespan runs.

    ``metering=False`` (benchmarks only) skips keys, budgets and the ledger, to measure their cost, and with
    the ledger what answers leave behind (app/after_answer.py).
    ``tracing``: where spans go; by default from the standard ``OTEL_*`` variables (off without an endpoint).
    """
    settings = settings or get_settings()
    metrics = Metrics()
    app = FastAPI(
        title="ragops",
        version="0.1.0",
        summary="Grounded answers from your documents, with citations, usage, cost and versions.",
        lifespan=_lifespan(settings, metering),
    )
    app.state.metrics = metrics
    app.state.tracing = tracing if tracing is not None else Tracing.from_environment()
    app.state.readiness = system.Readiness(settings.readiness_cache_s)
    app.state.console_sessions = SessionStore(settings.console_session_ttl_s, recheck_s=settings.auth_cache_ttl_s)
    for api in (system, query, openai_compat, collections, usage, admin, feedback, drift, rollouts, console):
        app.include_router(api.router)
    app.mount(f"{console.PREFIX}/static", StaticFiles(directory=console.CONSOLE / "static"), name="console-static")
    if settings.metrics_port is None:
        app.include_router(system.metrics_router)
    uploads = {
        f"{admin.router.prefix}/documents": settings.upload_body_max_bytes,
        f"{console.PREFIX}/api/documents": settings.upload_body_max_bytes,
    }
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, routes=uploads)
    app.add_middleware(console.ConsoleHeaders)
    app.add_middleware(RequestContext, metrics=metrics, metering=metering)
    _install_error_handlers(app, metrics)
    return app
