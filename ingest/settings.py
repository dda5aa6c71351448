"""Process settings: one class, read once from ``RAGOPS_*`` variables and an optional ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where ragops keeps its data and which services it talks to.

    Per-deployment facts live here; per-pipeline behaviour (chunking, retrieval, generation)
    lives in the RAG configuration files under ``configs/``.
    """

    model_config = SettingsConfigDict(env_prefix="RAGOPS_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAGOPS_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL with pgvector; unset = embedded PostgreSQL under data_dir.",
    )
    data_dir: Path = Field(default=Path(".ragops"), description="Project-local state (embedded database).")
    configs_dir: Path = Path("configs")
    prompts_dir: Path = Path("prompts")
    config: str = Field(default="default", description="RAG configuration used when a request names none.")
    migrate_on_start: bool = True
    db_pool_max: int = Field(default=8, ge=1, le=256)
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    vllm_url: str | None = Field(
        default=None, description="vLLM's OpenAI-compatible base URL, e.g. http://gpu:8000/v1; unset = extractive."
    )
    vllm_api_key: SecretStr | None = None
    vllm_connect_timeout_s: float = Field(default=3.0, gt=0)
    vllm_read_timeout_s: float = Field(default=60.0, gt=0)
    readiness_timeout_s: float = Field(default=5.0, gt=0)
    judge_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL of the eval judge (ragas Faithfulness, AnswerRelevancy); unset = none.",
    )
    judge_model: str | None = Field(default=None, description="Judge model name; unset = the config's model.")
    judge_api_key: SecretStr | None = None
    judge_timeout_s: float = Field(default=60.0, gt=0)
    judge_max_tokens: int = Field(default=1024, ge=16, description="Completion budget of one judge call.")
    auth_enabled: bool = Field(
        default=True, description="Require 'Authorization: Bearer <key>' on /v1 routes; off only on purpose."
    )

    @property
    def pgdata(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.data_dir / "pgdata"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
