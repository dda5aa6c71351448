"""Health, readiness and the configuration listing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool

from app.api.deps import AppSettings, Configs, DbPool, Pipeline, QueryGrant
from app.api.schemas import ConfigOut, ConfigsResponse
from app.rag import RagPipeline
from app.retrieval import active_version
from core.errors import RagopsError

log = logging.getLogger("ragops")
router = APIRouter(tags=["system"])
FAILING = "failing"


metrics_router = APIRouter(tags=["system"])  # left out when RAGOPS_METRICS_PORT serves /metrics elsewhere


@metrics_router.get("/metrics", response_class=Response)
def read_metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/healthz")
def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


class Readiness:
    """The last readiness probe, reused for ``ttl_s`` seconds: /readyz cannot be used to load the database or model.

    Concurrent callers wait for the one probe in progress instead of starting their own.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._expires = 0.0
        self._checks: dict[str, str] = {}

    def checks(self, probe: Callable[[], dict[str, str]]) -> dict[str, str]:
        """Each check's name and ``ok`` or ``failing``, probed at most once per ``ttl_s``."""
        with self._lock:
            if time.monotonic() >= self._expires:
                self._checks = probe()
                self._expires = time.monotonic() + self.ttl_s
            return self._checks


def _probe(pipeline: RagPipeline, pool: ConnectionPool, timeout: float) -> dict[str, str]:
    """Database, active index and generator; why one fails goes to the log, never into the response."""
    checks = dict.fromkeys(("database", "index", "generator"), FAILING)
    try:
        with pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1")
            checks["database"] = "ok"
            active_version(conn)
            checks["index"] = "ok"
    except Exception as exc:  # any failure means not ready
        log.warning("readiness: %s failing: %s", "index" if checks["database"] == "ok" else "database", exc)
    try:
        pipeline.generator(pipeline.catalog.config(None)).check_ready(timeout)
        checks["generator"] = "ok"
    except (RagopsError, OSError) as exc:
        log.warning("readiness: generator failing: %s", exc)
    return checks


@router.get("/readyz", responses={503: {"description": "Not ready: the failing check is named (details in the log)."}})
def read_readiness(request: Request, pipeline: Pipeline, pool: DbPool, settings: AppSettings) -> JSONResponse:
    """The database answers, an index is active, and the generator really answers in time."""
    readiness: Readiness = request.app.state.readiness
    checks = readiness.checks(lambda: _probe(pipeline, pool, settings.readiness_timeout_s))
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/v1/configs", response_model=ConfigsResponse)
def read_configs(catalog: Configs, grant: QueryGrant) -> ConfigsResponse:
    """The configurations this key may use, and prompt versions."""
    configs = []
    for name in grant.configs_of(catalog.configs):
        loaded = catalog.configs[name]
        prompt = catalog.prompt_for(loaded)
        configs.append(
            ConfigOut(
                name=name,
                version=loaded.version,
                description=loaded.config.description,
                prompt=prompt.name,
                prompt_version=prompt.version,
                retrieval_mode=loaded.config.retrieval.mode,
                generation_backend=loaded.config.generation.backend,
                git_commit=loaded.git_commit,
            )
        )
    return ConfigsResponse(
        default=catalog.default_config,
        configs=configs,
        prompts={name: p.version for name, p in sorted(catalog.prompts.items())},
    )
