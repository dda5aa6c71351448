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

from app.api import openai_compat, query, system
from app.catalog import Catalog
from app.errors import (
    BadRequest,
    GenerationError,
    GeneratorUnavailable,
    NoActiveIndex,
    NotFound,
    PromptTooLong,
)
from app.rag import RagPipeline
from ingest.db import Database
from ingest.errors import ConfigError, DatabaseError, RagopsError
from ingest.migrations import migrate
from ingest.settings import Settings, get_settings

log = logging.getLogger("ragops")

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[Exception], int]] = [
    (PromptTooLong, 422),
    (GeneratorUnavailable, 503),
    (GenerationError, 502),
    (BadRequest, 422),
    (NotFound, 404),
    (ConfigError, 404),
    (NoActiveIndex, 503),
    (DatabaseError, 503),
    (RagopsError, 400),
]


def error_response(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """The one error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing is started until the lifespan runs."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = Catalog.load(settings.configs_dir, settings.prompts_dir, settings.config)
        database = Database.from_settings(settings)
        try:
            with database.connect() as conn:
                if settings.migrate_on_start:
                    migrate(conn)
            pool = database.pool(settings.db_pool_max)
            try:
                pipeline = RagPipeline(settings, catalog, pool)
                pipeline.embedder(catalog.config(None))  # load the model now, not on the first request
                app.state.pipeline = pipeline
                yield
            finally:
                pool.close()
        finally:
            database.close()

    app = FastAPI(
        title="ragops",
        version="0.1.0",
        summary="Grounded answers from your documents, with citations, usage and versions.",
        lifespan=lifespan,
    )
    app.include_router(system.router)
    app.include_router(query.router)
    app.include_router(openai_compat.router)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(422, message, "invalid_request", field)

    @app.exception_handler(RagopsError)
    async def ragops_error(request: Request, exc: RagopsError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        response = error_response(status, str(exc), type(exc).__name__, getattr(exc, "field", None))
        if isinstance(exc, GeneratorUnavailable):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        response = error_response(503, "database unavailable; retry shortly", "DatabaseError")
        response.headers["Retry-After"] = "2"
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "?"))
        return error_response(500, "internal error", "InternalError")

    return app
