"""The FastAPI application: services built in the lifespan, errors mapped to statuses in one place."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.accounting import Accountant, LedgerEntry
from app.api import admin, openai_compat, query, system, usage
from app.api.limits import BodyLimitMiddleware
from app.metering import Meter
from app.metrics import Metrics
from app.pricing import load_pricing
from app.rag import RagPipeline
from core.catalog import Catalog
from core.db import Database
from core.embedding import get_embedder
from core.errors import (
    BudgetExceeded,
    GenerationError,
    GeneratorUnavailable,
    PiiBlocked,
    PiiUnavailable,
    RagopsError,
    RateLimited,
    http_status,
)
from core.migrations import migrate
from core.settings import Settings, get_settings
from ingest.worker import Worker

log = logging.getLogger("ragops")
METERED_PREFIX = "/v1/"
DB_RETRY_AFTER_S = 2
HTTP_ERROR_KINDS = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def _meter(request: Request) -> Meter | None:
    return getattr(request.state, "meter", None)


class RequestContext:
    """Request id, the request's meter, and its ledger row once the response is out.

    Plain ASGI: Starlette's ``@app.middleware("http")`` wrapper cost about a millisecond a request.
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
        if self.metering and accountant is not None and scope["path"].startswith(METERED_PREFIX):
            meter = Meter(accountant, self.metrics, LedgerEntry(request_id=request_id, route=scope["path"][:200]))
            state["meter"] = meter
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if meter is not None and not meter.streaming:
                # The response is out: the client does not wait for the ledger.
                await run_in_threadpool(meter.close, status)


def _start_worker(database: Database, settings: Settings) -> Worker | None:
    """The in-process job worker: on with the embedded database unless turned off (production runs `ragops worker`)."""
    enabled = settings.worker_in_process
    if enabled is None:
        enabled = settings.database_url is None
    if not enabled:
        return None
    worker = Worker(database, settings)
    worker.start()
    log.info("in-process job worker %s started", worker.worker_id)
    return worker


def create_app(settings: Settings | None = None, *, metering: bool = True) -> FastAPI:
    """Build the application; nothing is started until the lifespan runs.

    ``metering=False`` (benchmarks only) skips keys, budgets and the ledger, to measure their cost.
    """
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
        pricing = load_pricing(settings.configs_dir)
        if not settings.auth_enabled:
            log.warning("authentication is OFF (RAGOPS_AUTH_ENABLED=false): every /v1 route is open")
        # Load the embedding model first: a bad model path stops start-up with its own message.
        get_embedder(catalog.config(None).config.index.embedding)
        database = Database.from_settings(settings)
        try:
            with database.connect() as conn:
                if settings.migrate_on_start:
                    migrate(conn)
            pool = database.pool(settings.db_pool_max, async_commit=True, timeout_s=settings.db_pool_timeout_s)
            try:
                pipeline = RagPipeline(settings, catalog, pool)
                for config in catalog.configs.values():  # every model a config can answer with has a price
                    pricing.model(pipeline.generator(config).model_for_config(config))
                pipeline.embedder(catalog.config(None))  # load the models now, not on the first request
                for config in catalog.configs.values():
                    pipeline.pii_engine(config)
                app.state.pipeline = pipeline
                app.state.accountant = Accountant(
                    pool, pricing, auth_enabled=settings.auth_enabled and metering,
                    key_cache_ttl_s=settings.auth_cache_ttl_s,
                )  # fmt: skip
                app.state.metrics = metrics
                worker = _start_worker(database, settings)
                try:
                    yield
                finally:
                    if worker is not None:
                        worker.stop()
            finally:
                pool.close()
        finally:
            database.close()

    app = FastAPI(
        title="ragops",
        version="0.1.0",
        summary="Grounded answers from your documents, with citations, usage, cost and versions.",
        lifespan=lifespan,
    )
    app.include_router(system.router)
    app.include_router(query.router)
    app.include_router(openai_compat.router)
    app.include_router(usage.router)
    app.include_router(admin.router)
    uploads = {f"{admin.router.prefix}/documents": settings.upload_body_max_bytes}
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, routes=uploads)

    app.add_middleware(RequestContext, metrics=metrics, metering=metering)

    def failed(request: Request, exc: BaseException, status: int) -> None:
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        failed(request, exc, 422)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(422, message, "invalid_request", field)

    @app.exception_handler(RagopsError)
    async def ragops_error(request: Request, exc: RagopsError) -> JSONResponse:
        status = http_status(exc)
        failed(request, exc, status)
        response = error_response(status, str(exc), type(exc).__name__, getattr(exc, "field", None))
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(exc, GeneratorUnavailable | BudgetExceeded | RateLimited | PiiUnavailable) and retry_after:
            response.headers["Retry-After"] = str(retry_after)
        elif status == 503:  # database or index unavailable: worth retrying shortly
            response.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        failed(request, exc, 503)
        log.warning("database unavailable: %s", type(exc).__name__)
        response = error_response(503, "database unavailable; retry shortly", "DatabaseError")
        response.headers["Retry-After"] = str(DB_RETRY_AFTER_S)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The framework's own errors (unknown route, wrong method, unparsable or oversized body), in our shape."""
        failed(request, exc, exc.status_code)
        kind = HTTP_ERROR_KINDS.get(exc.status_code, "invalid_request")
        response = error_response(exc.status_code, str(exc.detail), kind)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        failed(request, exc, 500)
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "?"))
        return error_response(500, "internal error", "InternalError")

    return app
