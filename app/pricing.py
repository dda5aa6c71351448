"""The cost model: ``configs/pricing.yaml`` turns recorded token usage into dollars."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.config import format_validation_error
from core.errors import ConfigError

PRICING_FILE = "pricing.yaml"


class ModelPrice(BaseModel):
    """Either per-token prices (USD per million) or a GPU price with measured throughput."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_usd_per_million: float | None = Field(default=None, ge=0)
    cached_prompt_usd_per_million: float | None = Field(default=None, ge=0)
    completion_usd_per_million: float | None = Field(default=None, ge=0)
    gpu_usd_per_hour: float | None = Field(default=None, ge=0)
    prompt_tokens_per_s: float | None = Field(default=None, gt=0)
    completion_tokens_per_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_mode(self) -> ModelPrice:
        per_token = self.prompt_usd_per_million is not None and self.completion_usd_per_million is not None
        gpu = None not in (self.gpu_usd_per_hour, self.prompt_tokens_per_s, self.completion_tokens_per_s)
        if per_token == gpu:
            raise ValueError(
                "give either prompt_usd_per_million + completion_usd_per_million, "
                "or gpu_usd_per_hour + prompt_tokens_per_s + completion_tokens_per_s"
            )
        return self

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one request's tokens."""
        if self.gpu_usd_per_hour is not None:
            assert self.prompt_tokens_per_s and self.completion_tokens_per_s
            gpu_seconds = prompt_tokens / self.prompt_tokens_per_s + completion_tokens / self.completion_tokens_per_s
            return gpu_seconds * self.gpu_usd_per_hour / 3600
        assert self.prompt_usd_per_million is not None and self.completion_usd_per_million is not None
        cached = min(cached_tokens, prompt_tokens)
        cached_price = (
            self.cached_prompt_usd_per_million
            if self.cached_prompt_usd_per_million is not None
            else self.prompt_usd_per_million
        )
        return (
            (prompt_tokens - cached) * self.prompt_usd_per_million
            + cached * cached_price
            + completion_tokens * self.completion_usd_per_million
        ) / 1_000_000


class EmbeddingPrice(BaseModel):
    """USD per million embedded tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    usd_per_million: float = Field(ge=0)


class Pricing(BaseModel):
    """The whole pricing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelPrice]
    embeddings: dict[str, EmbeddingPrice] = Field(default_factory=dict)
    version: str = ""

    def model(self, name: str) -> ModelPrice:
        """The price of a generation model; unknown models are a configuration error."""
        if name not in self.models:
            raise ConfigError(f"{PRICING_FILE}: no price for model {name!r}; add it under 'models'")
        return self.models[name]

    def request_cost(
        self, model: str, embedding_model: str, prompt: int, completion: int, cached: int = 0, embedding: int = 0
    ) -> float:
        """Generation plus embedding cost of one request."""
        cost = self.model(model).cost(prompt, completion, cached)
        if embedding and embedding_model in self.embeddings:
            cost += embedding * self.embeddings[embedding_model].usd_per_million / 1_000_000
        return cost


def load_pricing(configs_dir: Path) -> Pricing:
    """Load and validate ``configs_dir/pricing.yaml`` (versioned by its sha256)."""
    path = configs_dir / PRICING_FILE
    if not path.is_file():
        raise ConfigError(f"missing {path}: every model needs a price (see README, 'Cost model')")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        pricing = Pricing.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    return pricing.model_copy(update={"version": f"pricing@{hashlib.sha256(raw).hexdigest()[:12]}"})
