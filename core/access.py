"""What a caller may use: which collections and which configurations.

A :class:`Grant` travels with every question into the pipeline and every admin action into the
store, so a route that forgot to check still cannot read outside the caller's collections. In-process
callers that act for the operator (the CLI, the eval harness) pass :data:`EVERYTHING` explicitly.

Refusals say the same thing whether the named collection or configuration exists or not, so a
key learns nothing about names outside its grant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import AccessDenied

DEFAULT_COLLECTION = "default"
ALL = "*"  # in a key's stored list: every collection (or every configuration)


@dataclass(frozen=True)
class Grant:
    """Collections and configurations a caller may use; None means all of them."""

    collections: frozenset[str] | None
    configs: frozenset[str] | None

    @classmethod
    def of(cls, collections: Iterable[str], configs: Iterable[str]) -> Grant:
        """From a key's stored lists, where ``*`` stands for all."""
        cols, cfgs = frozenset(collections), frozenset(configs)
        return cls(None if ALL in cols else cols, None if ALL in cfgs else cfgs)

    @property
    def all_collections(self) -> bool:
        """Whether every collection, present and future, is granted (a global admin has this)."""
        return self.collections is None

    def may_use(self, collection: str) -> bool:
        """Whether ``collection`` is granted."""
        return self.collections is None or collection in self.collections

    def collection(self, name: str | None) -> str:
        """The collection a request reads or writes, checked; unset = ``default``, or the key's only one."""
        if name is None:
            if self.collections is None or DEFAULT_COLLECTION in self.collections:
                return DEFAULT_COLLECTION
            if len(self.collections) == 1:
                return next(iter(self.collections))
            raise AccessDenied(
                f"this key may use the collections {', '.join(sorted(self.collections)) or '(none)'}: "
                "name one with 'collection'",
                field="collection",
            )
        if not self.may_use(name):
            raise AccessDenied(f"this key may not use the collection {name!r}", field="collection")
        return name

    def config(self, name: str | None, default: str) -> str:
        """The configuration a request names, checked; unset = the service's default, or the key's only one."""
        chosen = name or default
        if name is None and self.configs is not None and chosen not in self.configs and len(self.configs) == 1:
            return next(iter(self.configs))
        if self.configs is not None and chosen not in self.configs:
            raise AccessDenied(f"this key may not use the configuration {chosen!r}", field="config")
        return chosen

    def configs_of(self, names: Iterable[str]) -> list[str]:
        """The granted ones among ``names``, sorted (what a key is shown)."""
        return sorted(n for n in names if self.configs is None or n in self.configs)

    def require_all_collections(self, action: str) -> None:
        """Refuse ``action`` unless every collection is granted (actions that affect them all)."""
        if self.collections is not None:
            raise AccessDenied(f"{action} needs a key granted every collection (a global admin)")


EVERYTHING = Grant(None, None)
