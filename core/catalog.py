"""Every configuration and prompt, loaded and cross-checked once at start-up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import LoadedConfig, list_config_names, load_config
from core.errors import ConfigError, NotFound
from core.prompts import Prompt, list_prompt_names, load_prompt


@dataclass(frozen=True)
class Catalog:
    """Validated configurations and prompts by name."""

    configs: dict[str, LoadedConfig]
    prompts: dict[str, Prompt]
    default_config: str
    loaded_at: int = field(default_factory=lambda: int(time.time()))  # Unix time, shown as models' "created"

    @classmethod
    def load(cls, configs_dir: Path, prompts_dir: Path, default_config: str) -> Catalog:
        """Load and validate every file; the first bad one raises :class:`ConfigError`."""
        prompts = {name: load_prompt(name, prompts_dir) for name in list_prompt_names(prompts_dir)}
        configs = {name: load_config(name, configs_dir) for name in list_config_names(configs_dir)}
        for config in configs.values():
            prompt = config.config.generation.prompt
            if prompt not in prompts:
                raise ConfigError(
                    f"{config.path}: generation.prompt: unknown prompt {prompt!r} "
                    f"(known: {', '.join(sorted(prompts)) or 'none'})"
                )
        if default_config not in configs:
            raise ConfigError(
                f"default configuration {default_config!r} not found in {configs_dir} "
                f"(known: {', '.join(sorted(configs)) or 'none'})"
            )
        return cls(configs=configs, prompts=prompts, default_config=default_config)

    def config(self, name: str | None) -> LoadedConfig:
        """A configuration by name (None = the default); :class:`NotFound` otherwise."""
        key = name or self.default_config
        if key not in self.configs:
            raise NotFound(f"unknown configuration {key!r} (known: {', '.join(sorted(self.configs))})")
        return self.configs[key]

    def prompt_for(self, config: LoadedConfig) -> Prompt:
        """The prompt a configuration names (checked to exist at load)."""
        return self.prompts[config.config.generation.prompt]
