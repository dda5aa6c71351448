"""Starting, advancing, promoting and aborting rollouts: the rules shared by the CLI and the admin routes."""

from __future__ import annotations

from typing import Any

import psycopg

from app.rollouts import store
from app.rollouts.measures import degradation
from app.rollouts.sequential import Decision, decide
from app.rollouts.store import Rollout, Versions
from core.catalog import Catalog
from core.config import LoadedConfig
from core.errors import BadRequest, Conflict, IndexVersionError, NotFound
from ingest import versions


def questions_filtered(config: LoadedConfig) -> bool:
    """Whether the configuration's PII policy filters questions (shadow stores only filtered questions)."""
    pii = config.config.pii
    return pii.enabled and pii.apply_to.question


def live_versions(conn: psycopg.Connection, catalog: Catalog, collection: str, config: str | None) -> Versions:
    """What answers ``collection`` now with ``config`` (None: the default): the config, its prompt, the active index."""
    loaded = catalog.config(config)
    index = versions.active_index_version(conn, collection)
    if index is None:
        raise BadRequest(f"collection {collection!r} has no active index version: ingest documents first")
    return Versions(loaded.name, loaded.config.generation.prompt, index.id)


def candidate_versions(
    conn: psycopg.Connection, catalog: Catalog, live: Versions, config: str | None, prompt: str | None,
    index_version: int | None,
) -> Versions:  # fmt: skip
    """The candidate: the live versions with the named ones replaced, each checked to exist and to fit."""
    loaded = catalog.config(config or live.config)  # NotFound for an unknown configuration
    chosen_prompt = prompt or (loaded.config.generation.prompt if config else live.prompt)
    if chosen_prompt not in catalog.prompts:
        known = ", ".join(sorted(catalog.prompts))
        raise NotFound(f"unknown prompt {chosen_prompt!r} (known: {known})", field="prompt")
    index_id = index_version if index_version is not None else _index_for(conn, loaded, live)
    try:
        index = versions.get_index_version(conn, index_id)
    except IndexVersionError:
        raise NotFound(f"no index version {index_id}", field="index_version") from None
    if index.status != "ready":
        raise BadRequest(f"index version {index.name} is {index.status}; only a ready version can be a candidate")
    versions.check_embedding_model(index, loaded)
    candidate = Versions(loaded.name, chosen_prompt, index.id)
    if candidate == live:
        raise BadRequest("the candidate is the live version: name a configuration, prompt or index version to try")
    return candidate


def _index_for(conn: psycopg.Connection, config: LoadedConfig, live: Versions) -> int:
    """The live index version when the candidate configuration builds the same; else its own ready version."""
    wanted = config.config.index.version_hash()
    if versions.get_index_version(conn, live.index_version).settings_hash == wanted:
        return live.index_version
    own = versions.find_index_version(conn, config.config.index)
    if own is None or own.status != "ready":
        raise BadRequest(
            f"configuration {config.name!r} has other index settings than the live index, and no ready version of "
            f"them exists: build one beside the live one first (a full reindex with --config {config.name}, "
            "not activated), or name an index version",
            field="index_version",
        )
    return own.id


def check_gate(conn: psycopg.Connection, gate_id: int, candidate: Versions) -> store.Gate:
    """The recorded gate run a rollout starts from: it must exist, have passed, and have judged this candidate."""
    gate = store.get_gate(conn, gate_id)
    if gate is None:
        raise NotFound(f"no gate run {gate_id}: run `ragops rollout gate` first", field="gate_id")
    if not gate.passed:
        raise Conflict(f"gate run {gate_id} did not pass ({gate.verdict}): the rollout does not start")
    judged = {k: v for k, v in gate.candidate.items() if v is not None}
    if any(candidate.as_dict().get(k) != v for k, v in judged.items()):
        raise Conflict(f"gate run {gate_id} judged another candidate ({judged}), not {candidate.as_dict()}")
    return gate


def start_rollout(
    conn: psycopg.Connection,
    catalog: Catalog,
    collection: str,
    *,
    gate_id: int,
    config: str | None = None,
    prompt: str | None = None,
    index_version: int | None = None,
    live_config: str | None = None,
    created_by: str,
) -> Rollout:
    """Start a rollout in shadow for ``collection``, from a passed gate run; 409 when one is active already."""
    live = live_versions(conn, catalog, collection, live_config)
    guarded = catalog.config(live.config)
    if not questions_filtered(guarded):
        raise BadRequest(
            f"shadow cannot run: configuration {live.config!r} does not filter questions for PII "
            "(pii.enabled and pii.apply_to.question), and shadow keeps only filtered questions"
        )
    candidate = candidate_versions(conn, catalog, live, config, prompt, index_version)
    gate = check_gate(conn, gate_id, candidate)
    try:
        with conn.transaction():
            return store.insert_rollout(conn, collection, live, candidate, guarded.config.rollout, gate.id, created_by)
    except psycopg.errors.UniqueViolation:
        active = store.active_rollout(conn, collection)
        which = f" (rollout {active.id}, {active.status})" if active else ""
        raise Conflict(f"collection {collection!r} already has an active rollout{which}") from None


def stage_decision(conn: psycopg.Connection, rollout: Rollout) -> Decision:
    """The sequential test over the current stage's paired samples."""
    degradations: dict[str, list[float]] = {name: [] for name in rollout.guards.guards}
    for live, candidate in store.samples(conn, rollout.id, rollout.status):
        for name in degradations:
            value = degradation(name, live, candidate)
            if value is not None:
                degradations[name].append(value)
    return decide(degradations, rollout.guards)


def apply_decision(conn: psycopg.Connection, rollout_id: int) -> Rollout:
    """Re-run the test for the rollout's stage and act: roll back on a breach, advance on a pass; one transaction."""
    with conn.transaction():
        rollout = store.get_rollout(conn, rollout_id, lock=True)
        if rollout is None or not rollout.active:
            raise NotFound(f"no active rollout {rollout_id}")
        decision = stage_decision(conn, rollout)
        negative, rated = store.feedback_counts(conn, rollout.id)
        limit = rollout.guards.max_negative_feedback_share
        if rollout.status == "canary" and limit is not None and rated and negative / rated > limit:
            reason = f"{negative} of {rated} canary ratings negative (more than {limit:.0%})"
            return store.set_status(conn, rollout.id, "rolled_back", reason=reason, decision=decision.as_dict())
        if decision.verdict == "rollback":
            reason = f"{rollout.status}: {decision.reason}"
            return store.set_status(conn, rollout.id, "rolled_back", reason=reason, decision=decision.as_dict())
        if decision.verdict == "pass" and rollout.status == "shadow":
            return store.set_status(conn, rollout.id, "canary", decision=decision.as_dict())
        if decision.verdict == "pass" and rollout.guards.auto_promote:
            return _promote(conn, rollout, decision.as_dict())
        store.note_decision(conn, rollout.id, decision.as_dict())
        return store.get_rollout(conn, rollout.id) or rollout


def _promote(conn: psycopg.Connection, rollout: Rollout, decision: dict[str, Any] | None) -> Rollout:
    """Activate the candidate's index version for the collection (the usual atomic activation) and end the rollout."""
    if rollout.candidate.index_version != rollout.live.index_version:
        versions.activate_index_version(conn, rollout.candidate.index_version, rollout.collection)
    return store.set_status(conn, rollout.id, "promoted", reason=promotion_note(rollout), decision=decision)


def promotion_note(rollout: Rollout) -> str:
    """What promotion changed, and what it leaves to the operator (configurations and prompts live in git)."""
    done = []
    if rollout.candidate.index_version != rollout.live.index_version:
        done.append(f"index version {rollout.candidate.index_version} now answers {rollout.collection!r}")
    if rollout.candidate.config != rollout.live.config or rollout.candidate.prompt != rollout.live.prompt:
        done.append(
            f"configuration {rollout.candidate.config!r} with prompt {rollout.candidate.prompt!r} passed: make it "
            "the served default (RAGOPS_CONFIG, or merge it as configs/default.yaml)"
        )
    return "; ".join(done)


def promote_rollout(conn: psycopg.Connection, rollout_id: int) -> Rollout:
    """The operator promotes an active rollout (whatever the test says so far)."""
    with conn.transaction():
        rollout = store.get_rollout(conn, rollout_id, lock=True)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id}")
        if not rollout.active:
            raise Conflict(f"rollout {rollout_id} is already {rollout.status}")
        return _promote(conn, rollout, None)


def abort_rollout(conn: psycopg.Connection, rollout_id: int, reason: str = "aborted by an operator") -> Rollout:
    """End an active rollout: every answer is the live one again (nothing live was changed, so nothing to undo)."""
    with conn.transaction():
        rollout = store.get_rollout(conn, rollout_id, lock=True)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id}")
        if not rollout.active:
            raise Conflict(f"rollout {rollout_id} is already {rollout.status}")
        return store.set_status(conn, rollout.id, "aborted", reason=reason)
