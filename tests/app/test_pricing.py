"""The cost model: per-token and GPU-time prices, cached tokens, a strict pricing file."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.pricing import ModelPrice, load_pricing
from core.errors import ConfigError
from tests.conftest import REPO


def test_per_token_price_with_cached_prompt_tokens() -> None:
    price = ModelPrice(prompt_usd_per_million=2.0, cached_prompt_usd_per_million=0.5, completion_usd_per_million=8.0)
    # 1000 prompt tokens of which 400 cached, 100 completion tokens
    assert price.cost(1000, 100, cached_tokens=400) == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)


def test_cached_tokens_cost_the_prompt_price_when_no_cached_price() -> None:
    price = ModelPrice(prompt_usd_per_million=2.0, completion_usd_per_million=8.0)
    assert price.cost(1000, 0, cached_tokens=400) == pytest.approx(1000 * 2.0 / 1e6)


def test_gpu_mode_turns_tokens_into_gpu_seconds() -> None:
    price = ModelPrice(gpu_usd_per_hour=3.6, prompt_tokens_per_s=10_000, completion_tokens_per_s=1_000)
    # 5000 prompt tokens = 0.5 s, 200 completion tokens = 0.2 s -> 0.7 GPU-seconds at $0.001/s
    assert price.cost(5000, 200) == pytest.approx(0.0007)
    assert price.cost(1, 1) > 0  # a self-hosted request is never free unless priced so


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"prompt_usd_per_million": 1.0},
        {"prompt_usd_per_million": 1.0, "completion_usd_per_million": 1.0, "gpu_usd_per_hour": 1.0,
         "prompt_tokens_per_s": 1.0, "completion_tokens_per_s": 1.0},
    ],
)  # fmt: skip
def test_a_price_needs_exactly_one_mode(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="give either"):
        ModelPrice(**fields)


def test_repository_pricing_prices_the_default_models() -> None:
    pricing = load_pricing(REPO / "configs")
    assert pricing.version.startswith("pricing@")
    assert pricing.model("extractive").cost(1000, 100) == 0
    assert pricing.model("ragops-llm").cost(1000, 100) > 0
    with pytest.raises(ConfigError, match="no price for model 'gpt-99'"):
        pricing.model("gpt-99")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  m:\n    prompt_usd_per_million: -1\n    completion_usd_per_million: 1\n", "greater than or equal"),
        ("models:\n  m:\n    price: 1\n", "Extra inputs are not permitted"),
        ("modles: {}\n", "modles: Extra inputs"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_bad_pricing_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pricing.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pricing(tmp_path)
    assert message in str(info.value) and "pricing.yaml" in str(info.value)


def test_missing_pricing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        load_pricing(tmp_path)
