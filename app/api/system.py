"""Health, readiness and the configuration listing."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import AppSettings, Configs, DbPool, Pipeline, QueryGrant
from app.api.schemas import ConfigOut, ConfigsResponse
from app.retrieval import active_version
from core.errors import RagopsError

router = APIRouter(tags=["system"])


@router.get("/metrics", response_class=Response)
def read_metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/healthz")
def read_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: the failing check says why."}})
def read_readiness(pipeline: Pipeline, pool: DbPool, settings: AppSettings) -> JSONResponse:
    """The database answers, an index is active, and the generator really answers in time."""
    checks: dict[str, str] = {}
    timeout = settings.readiness_timeout_s
    try:
        with pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1")
            checks["index"] = active_version(conn).name
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["database"] = f"error: {exc}"
    try:
        config = pipeline.catalog.config(None)
        generator = pipeline.generator(config)
        generator.check_ready(timeout)
        checks["generator"] = f"ok ({generator.name})"
    except (RagopsError, OSError) as exc:
        checks["generator"] = f"error: {exc}"
    ready = all(not v.startswith("error") for v in checks.values()) and "index" in checks
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
