"""Process settings: one class, read once from ``RAGOPS_*`` variables and an optional ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where ragops keeps its data and which services it talks to.

    Per-deployment facts live here; per-pipeline behaviour (chunking, retrieval, generation)
    lives in the RAG configuration files under ``configs/``.
    """

    model_config = SettingsConfigDict(env_prefix="RAGOPS_", env_file=".env", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAGOPS_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL with pgvector; unset = embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(default=Path(".ragops"), description="Project-local state (embedded database).")
    pg_shared_buffers_mb: int | None = Field(
        default=None,
        ge=16,
        description="Page cache of the embedded PostgreSQL (MB); unset = an eighth of the memory, 128 MB to 2 GB.",
    )
    models_dir: Path | None = Field(
        default=None, description="Where ONNX exports of embedding models are kept; unset = data_dir/models."
    )
    configs_dir: Path = Path("configs")
    prompts_dir: Path = Path("prompts")
    config: str = Field(default="default", description="RAG configuration used when a request names none.")
    migrate_on_start: bool = True
    db_pool_max: int = Field(default=8, ge=1, le=256)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Lowest level `ragops serve` and `ragops worker` log (any case)."
    )
    log_text: bool = Field(
        default=False,
        description="Log each answered request's question and answer after PII filtering (logger "
        "ragops.transcript), for debugging answers; never for a configuration that does not filter both.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    vllm_url: str | None = Field(
        default=None, description="vLLM's OpenAI-compatible base URL, e.g. http://gpu:8000/v1; unset = extractive."
    )
    vllm_api_key: SecretStr | None = None
    vllm_connect_timeout_s: float = Field(default=3.0, gt=0)
    vllm_read_timeout_s: float = Field(default=60.0, gt=0)
    readiness_timeout_s: float = Field(default=5.0, gt=0)
    readiness_cache_s: float = Field(
        default=2.0, ge=0, le=60, description="/readyz reuses its last probe this long; 0 = probe every time."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Serve /metrics on this port (same host) instead of the API's; unset = on the API's port.",
    )  # fmt: skip
    db_pool_timeout_s: float = Field(
        default=5.0, gt=0, description="Wait this long for a database connection, then answer 503."
    )
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413.")
    judge_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL of the eval judge (ragas Faithfulness, AnswerRelevancy); unset = none.",
    )
    judge_model: str | None = Field(default=None, description="Judge model name; unset = the config's model.")
    judge_api_key: SecretStr | None = None
    judge_timeout_s: float = Field(default=60.0, gt=0)
    judge_max_tokens: int = Field(default=1024, ge=16, description="Completion budget of one judge call.")
    auth_cache_ttl_s: float = Field(
        default=2.0, ge=0, le=300,
        description="Reuse a verified API key this long (revocation takes effect within it); 0 = verify every time.",
    )  # fmt: skip
    budget_hold_max_age_s: float = Field(
        default=900.0, ge=60,
        description="A budget hold older than this was left by a request whose process died: it is released.",
    )  # fmt: skip
    key_max_concurrent: int | None = Field(
        default=8, ge=0,
        description="Requests one API key may have in flight in this process (429 beyond); 0 or unset = no limit.",
    )  # fmt: skip
    auth_enabled: bool = Field(
        default=True, description="Require 'Authorization: Bearer <key>' on /v1 routes; off only on purpose."
    )
    # Admin API and background jobs.
    source_roots: list[Path] = Field(
        default_factory=list, description="Folders reindex sources must lie under; empty = samples/ and the uploads."
    )
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest accepted uploaded file.")
    upload_max_files: int = Field(default=20, ge=1, description="Most files in one upload request.")
    upload_types: list[str] = Field(
        default=[".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"], description="Accepted file suffixes."
    )
    worker_in_process: bool | None = Field(
        default=None, description="Run jobs in a thread of the API process; unset = only with the embedded database."
    )
    job_stale_after_s: float = Field(default=30.0, gt=0, description="A running job silent this long is recovered.")
    job_max_attempts: int = Field(default=3, ge=1, description="Runs of a job before a crash marks it failed.")
    # Web console (/ui).
    console_session_ttl_s: float = Field(
        default=8 * 3600, gt=0, le=30 * 86400, description="A console login lasts this long (sessions live in memory)."
    )
    eval_reports_dir: Path | None = Field(
        default=None,
        description="Folder whose `ragops eval compare --html` reports the console lists; unset = data_dir/eval.",
    )
    drift_interval_s: float = Field(
        default=60.0, gt=0, description="How often the worker judges finished drift windows (configs with drift on)."
    )
    activation_checks: bool = Field(
        default=True,
        description="Run the installed activation checks (the eval gate) before a full reindex activates its build.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def pgdata(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.data_dir / "pgdata"

    @property
    def model_cache_dir(self) -> Path:
        """Where exported embedding models are cached, one folder per weights hash."""
        return self.models_dir or self.data_dir / "models"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded documents are kept, one folder per collection."""
        return self.data_dir / "uploads"

    @property
    def eval_reports_folder(self) -> Path:
        """Where the console looks for eval gate reports (HTML files written by ``ragops eval compare --html``)."""
        return self.eval_reports_dir or self.data_dir / "eval"

    @property
    def quarantine_dir(self) -> Path:
        """Where uploaded files a job could not read are moved, one folder per collection."""
        return self.data_dir / "quarantine"

    @property
    def upload_body_max_bytes(self) -> int:
        """Body limit of the upload route: its most files at their largest, plus room for multipart framing."""
        return self.upload_max_files * self.upload_max_bytes + 64 * 1024

    @property
    def allowed_source_roots(self) -> list[Path]:
        """Folders a reindex may read: the configured ones, else samples/ and the uploads folder."""
        return list(self.source_roots) or [Path("samples"), self.uploads_dir]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
