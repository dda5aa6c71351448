"""The FastAPI application: services built in the lifespan, errors mapped to statuses in one place."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.background import BackgroundTask

from app.accounting import Accountant, BudgetExceeded, LedgerEntry, RateLimited
from app.api import admin, openai_compat, query, system, usage
from app.catalog import Catalog
from app.errors import GenerationError, GeneratorUnavailable, http_status
from app.metering import Meter
from app.metrics import Metrics
from app.pricing import load_pricing
from app.rag import RagPipeline
from ingest.db import Database
from ingest.errors import RagopsError
from ingest.jobs import Worker
from ingest.migrations import migrate
from ingest.settings import Settings, get_settings

log = logging.getLogger("ragops")
METERED_PREFIX = "/v1/"


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def _meter(request: Request) -> Meter | None:
    return getattr(request.state, "meter", None)


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
        database = Database.from_settings(settings)
        try:
            with database.connect() as conn:
                if settings.migrate_on_start:
                    migrate(conn)
            pool = database.pool(settings.db_pool_max, async_commit=True)
            try:
                pipeline = RagPipeline(settings, catalog, pool)
                for config in catalog.configs.values():  # every model a config can answer with has a price
                    pricing.model(pipeline.generator(config).model_for_config(config))
                pipeline.embedder(catalog.config(None))  # load the model now, not on the first request
                app.state.pipeline = pipeline
                app.state.accountant = Accountant(pool, pricing, auth_enabled=settings.auth_enabled and metering)
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

    @app.middleware("http")
    async def request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = uuid.uuid4().hex
        meter = None
        if metering and request.url.path.startswith(METERED_PREFIX) and hasattr(request.app.state, "accountant"):
            entry = LedgerEntry(request_id=request.state.request_id, route=request.url.path[:200])
            meter = Meter(request.app.state.accountant, metrics, entry)
            request.state.meter = meter
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        if meter is not None and not meter.streaming:
            # Written once the response is sent: the client does not wait for the ledger.
            response.background = BackgroundTask(meter.close, response.status_code)
        return response

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
        if isinstance(exc, GeneratorUnavailable | BudgetExceeded | RateLimited) and retry_after:
            response.headers["Retry-After"] = str(retry_after)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        failed(request, exc, 503)
        log.warning("database unavailable: %s", type(exc).__name__)
        response = error_response(503, "database unavailable; retry shortly", "DatabaseError")
        response.headers["Retry-After"] = "2"
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        failed(request, exc, 500)
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "?"))
        return error_response(500, "internal error", "InternalError")

    return app
