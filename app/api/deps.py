"""Dependencies handed to routes: built once in the app's lifespan, never at import time."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from app.accounting import Accountant, LedgerEntry, check_rate
from app.keys import ApiKey
from app.metering import Meter
from app.rag import RagPipeline
from core.access import EVERYTHING, Grant
from core.catalog import Catalog
from core.errors import AuthError
from core.settings import Settings
from core.tracing import NO_TRACING, Tracing, annotate, stage


def get_pipeline(request: Request) -> RagPipeline:
    """The process's RAG pipeline."""
    pipeline: RagPipeline = request.app.state.pipeline
    return pipeline


def get_pool(request: Request) -> ConnectionPool:
    """The process's database pool."""
    pool: ConnectionPool = request.app.state.pool
    return pool


def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_catalog(request: Request) -> Catalog:
    """The configurations and prompts this process serves."""
    catalog: Catalog = request.app.state.catalog
    return catalog


def get_accountant(request: Request) -> Accountant:
    """The process's accountant (pool, prices, auth switch)."""
    accountant: Accountant = request.app.state.accountant
    return accountant


def get_meter(request: Request) -> Meter:
    """This request's accounting (created by the middleware; a detached one when metering is off)."""
    meter: Meter | None = getattr(request.state, "meter", None)
    if meter is None:
        meter = Meter(get_accountant(request), request.app.state.metrics, LedgerEntry(request.state.request_id, ""))
        meter.closed = True  # nothing is written
        request.state.meter = meter
    return meter


def tracing_of(request: Request) -> Tracing:
    """The app's tracing (off when the app was built without it)."""
    tracing: Tracing = getattr(request.app.state, "tracing", NO_TRACING)
    return tracing


def get_request_id(request: Request) -> str:
    """The id of the current request (also in the X-Request-Id header)."""
    return str(request.state.request_id)


def authenticate(request: Request, scope: str) -> ApiKey | None:
    """The bearer key, checked for ``scope`` and rate limits; None when auth is switched off."""
    accountant = get_accountant(request)
    if not accountant.auth_enabled:
        return None
    meter = get_meter(request)
    if meter.key is not None:  # already verified for this request, before its body (app/api/key_first.py)
        meter.key.require(scope)
        return meter.key
    with stage("ragops.auth"):
        started = time.perf_counter()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        key = accountant.keys.verify(accountant.pool.connection, token.strip())
        return admit(request, key, scope, started)


def admit(request: Request, key: ApiKey, scope: str, started: float) -> ApiKey:
    """Let a verified key in: recorded on the meter, checked for ``scope``, given a concurrency slot, rate-limited."""
    accountant = get_accountant(request)
    meter = get_meter(request)
    meter.key = key
    meter.entry.key_id, meter.entry.key_name = key.id, key.name
    key.require(scope)
    meter.slot = accountant.inflight.acquire(key)
    if key.rpm is not None or key.tpm is not None:
        with accountant.pool.connection() as conn:
            check_rate(conn, key)
    meter.entry.latency_ms["auth"] = (time.perf_counter() - started) * 1000
    annotate({"ragops.key.id": key.id})
    return key


def require_query(request: Request) -> ApiKey | None:
    """A key with the ``query`` scope."""
    return authenticate(request, "query")


def require_admin(request: Request) -> ApiKey | None:
    """A key with the ``admin`` scope."""
    return authenticate(request, "admin")


def grant_of(request: Request, key: ApiKey | None) -> Grant:
    """What ``key`` may use (everything when auth is off)."""
    return EVERYTHING if key is None else key.grant(get_catalog(request).default_config)


def query_grant(request: Request, key: Annotated[ApiKey | None, Depends(require_query)]) -> Grant:
    """The collections and configurations a ``query`` key may use."""
    return grant_of(request, key)


def admin_grant(request: Request, key: Annotated[ApiKey | None, Depends(require_admin)]) -> Grant:
    """The collections an ``admin`` key administers (a global admin: all of them)."""
    return grant_of(request, key)


Pipeline = Annotated[RagPipeline, Depends(get_pipeline)]
DbPool = Annotated[ConnectionPool, Depends(get_pool)]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
Configs = Annotated[Catalog, Depends(get_catalog)]
RequestId = Annotated[str, Depends(get_request_id)]
CurrentMeter = Annotated[Meter, Depends(get_meter)]
QueryKey = Annotated[ApiKey | None, Depends(require_query)]
AdminKey = Annotated[ApiKey | None, Depends(require_admin)]
QueryGrant = Annotated[Grant, Depends(query_grant)]
AdminGrant = Annotated[Grant, Depends(admin_grant)]
Accounts = Annotated[Accountant, Depends(get_accountant)]
