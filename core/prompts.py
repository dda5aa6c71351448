"""Prompt files: ``prompts/<name>.md`` with YAML front matter and ``## system`` / ``## user`` parts.

The templates are rendered with langchain-core's ``ChatPromptTemplate``; each loaded prompt has
a version id (name + short sha256 of the file), recorded on every answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.config import NAME_PATTERN, format_validation_error
from core.errors import ConfigError
from core.git import git_commit

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.DOTALL)
_PART = re.compile(r"^##\s+(system|user)\s*$", re.MULTILINE | re.IGNORECASE)


class PromptMeta(BaseModel):
    """The front matter of a prompt file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    variables: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: its templates, where it came from and its version id."""

    meta: PromptMeta
    system: str
    user: str
    path: Path
    sha256: str
    git_commit: str | None

    @property
    def name(self) -> str:
        """The prompt's name (also its file name)."""
        return self.meta.name

    @property
    def version(self) -> str:
        """``name@sha12``: changes whenever the file's bytes change."""
        return f"{self.meta.name}@{self.sha256[:12]}"

    def template(self) -> ChatPromptTemplate:
        """The langchain-core template (system + user message)."""
        return ChatPromptTemplate.from_messages([("system", self.system), ("user", self.user)])

    def render(self, **values: str) -> list[dict[str, str]]:
        """OpenAI-style messages with ``values`` filled in (values are never parsed as templates)."""
        messages = self.template().format_messages(**values)
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        return [{"role": roles[m.type], "content": str(m.content)} for m in messages]


def parse_prompt(path: Path, raw: bytes) -> Prompt:
    """Validate one prompt file; :class:`ConfigError` names the file and the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    meta, body = _front_matter(path, text)
    parts = _PART.split(body)
    sections = {parts[i].lower(): parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    for role in ("system", "user"):
        if not sections.get(role):
            raise ConfigError(f"{path}: missing or empty '## {role}' part")
    prompt = Prompt(
        meta=meta,
        system=sections["system"],
        user=sections["user"],
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        git_commit=git_commit(path.parent.resolve()),
    )
    _check_variables(prompt)
    return prompt


def _front_matter(path: Path, text: str) -> tuple[PromptMeta, str]:
    """The validated YAML front matter of a prompt file, and the text after it."""
    match = _FRONT_MATTER.match(text)
    if not match:
        raise ConfigError(f"{path}: missing YAML front matter between '---' lines")
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: front matter is not valid YAML: {exc}") from None
    if not isinstance(front, dict):
        raise ConfigError(f"{path}: front matter must be a mapping")
    try:
        meta = PromptMeta.model_validate(front)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    if meta.name != path.stem:
        raise ConfigError(f"{path}: front matter name {meta.name!r} differs from the file name {path.stem!r}")
    return meta, match.group(2)


def _check_variables(prompt: Prompt) -> None:
    """The templates parse, use exactly the declared variables, and use the question and the context."""
    path = prompt.path
    try:
        used = set(prompt.template().input_variables)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: invalid template: {exc}") from None
    declared = set(prompt.meta.variables)
    if used != declared:
        raise ConfigError(
            f"{path}: variables declared {sorted(declared)} but the templates use {sorted(used)}"
            " (write a literal brace as '{{' or '}}')"
        )
    required = {"question", "context"}
    if not required <= used:
        raise ConfigError(f"{path}: the templates must use {sorted(required)}; missing {sorted(required - used)}")


def load_prompt(name: str, prompts_dir: Path) -> Prompt:
    """Load ``prompts_dir/<name>.md``."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"invalid prompt name {name!r}")
    path = prompts_dir / f"{name}.md"
    if not path.is_file():
        known = ", ".join(list_prompt_names(prompts_dir)) or "none"
        raise ConfigError(f"unknown prompt {name!r}: no file {path} (known: {known})")
    return parse_prompt(path, path.read_bytes())


def list_prompt_names(prompts_dir: Path) -> list[str]:
    """Names of the prompt files, sorted."""
    if not prompts_dir.is_dir():
        return []
    return sorted(p.stem for p in prompts_dir.glob("*.md") if NAME_PATTERN.match(p.stem))
