"""The scheduled drift job: judge every finished window of every monitored (collection, config).

Windows are aligned to multiples of ``drift.window`` since the epoch. A window is judged once it
ended ``GRACE_S`` ago (its answers' ledger rows are written when their responses close), all its
signals in one transaction; the primary key (collection, config, signal, window_start) makes a
worker that died half-way, or two workers at once, store each window exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

from core.config import DriftSettings, LoadedConfig, list_config_names, load_config
from core.drift import store
from core.drift.measures import AnswerMeasures, CorpusSamples, default_measures
from core.drift.signals import SIGNALS, Judgement, judge
from core.drift.stats import State, consecutive_alarm
from core.errors import ConfigError

log = logging.getLogger(__name__)

GRACE_S = 60  # a window is judged this long after it ended
MAX_WINDOWS_PER_RUN = 500  # catching up after a long stop happens over several runs


@dataclass(frozen=True)
class RunReport:
    """What one run of the job did."""

    windows: int = 0  # (collection, config, window) triples judged now
    deleted: int = 0  # recorded answers past their retention


def window_floor(at: datetime, window_s: int) -> datetime:
    """The start of the window ``at`` falls in."""
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_s, UTC)


def monitored_configs(configs_dir: Path) -> list[LoadedConfig]:
    """Configurations whose drift section is enabled (a broken file is skipped and logged, not fatal)."""
    out = []
    for name in list_config_names(configs_dir):
        try:
            loaded = load_config(name, configs_dir)
        except ConfigError as exc:
            log.warning("drift: skipping configuration %s: %s", name, exc)
            continue
        if loaded.config.drift.enabled:
            out.append(loaded)
    return out


def run_due(
    conn: psycopg.Connection,
    configs_dir: Path,
    *,
    now: datetime | None = None,
    measures: AnswerMeasures | None = None,
    corpus: CorpusSamples | None = None,
) -> RunReport:
    """Delete expired answers and judge every window that is due, for every monitored configuration.

    ``corpus``: where newly ingested chunks are read for the corpus signal (the worker passes the index's).
    """
    now = now or datetime.now(UTC)
    measures = measures or default_measures()
    windows = deleted = 0
    for loaded in monitored_configs(configs_dir):
        settings = loaded.config.drift
        deleted += store.delete_expired(conn, loaded.name, settings.retention_days)
        for collection in store.monitored_pairs(conn, loaded.name):
            if not settings.monitors(collection):
                continue
            try:
                windows += judge_due(conn, collection, loaded.name, settings, now=now, measures=measures, corpus=corpus)
            except (ValueError, ArithmeticError) as exc:  # one pair's bad data must not stop the others' windows
                log.warning("drift: %s / %s: %s: %s", collection, loaded.name, type(exc).__name__, exc)
    return RunReport(windows=windows, deleted=deleted)


def due_windows(
    conn: psycopg.Connection, collection: str, config: str, settings: DriftSettings, now: datetime
) -> list[datetime]:
    """Starts of the finished, not yet judged windows, oldest first (at most MAX_WINDOWS_PER_RUN)."""
    size = settings.window_s
    last = store.last_window_start(conn, collection, config)
    if last is not None:
        start = last + timedelta(seconds=size)
    else:
        first = store.first_observation(conn, collection, config)
        if first is None:
            return []
        start = window_floor(first, size)
    starts: list[datetime] = []
    while start + timedelta(seconds=size + GRACE_S) <= now and len(starts) < MAX_WINDOWS_PER_RUN:
        starts.append(start)
        start += timedelta(seconds=size)
    return starts


def judge_due(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    settings: DriftSettings,
    *,
    now: datetime,
    measures: AnswerMeasures,
    corpus: CorpusSamples | None = None,
) -> int:
    """Judge and store the due windows of one (collection, config); returns how many were stored."""
    stored = 0
    for start in due_windows(conn, collection, config, settings, now):
        with conn.transaction():
            if judge_window(conn, collection, config, settings, start, measures, corpus):
                stored += 1
    return stored


def window_samples(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    start: datetime,
    end: datetime,
    measures: AnswerMeasures,
) -> dict[str, np.ndarray]:
    """Every signal's sample in ``[start, end)``: question vectors, retrieval scores, answer measures."""
    samples: dict[str, np.ndarray] = {"question_embedding": store.window_vectors(conn, collection, config, start, end)}
    samples.update(store.window_retrieval(conn, collection, config, start, end))
    samples.update(measures.window(conn, collection, config, start, end))
    return samples


def judge_window(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    settings: DriftSettings,
    start: datetime,
    measures: AnswerMeasures,
    corpus: CorpusSamples | None = None,
) -> bool:
    """Judge one window's signals against the newest reference and store them; False if already stored.

    The corpus signal's reference is the index itself: chunks of documents ingested before the window.
    """
    end = start + timedelta(seconds=settings.window_s)
    reference = store.latest_reference(conn, collection, config)
    samples = window_samples(conn, collection, config, start, end, measures)
    references: dict[str, np.ndarray | None] = {
        name: None if reference is None else reference.vectors if SIGNALS[name].kind == "embedding"
        else reference.values.get(name)
        for name in samples
    }  # fmt: skip
    if corpus is not None:
        added, indexed = corpus.window(conn, collection, start, end, settings.max_questions)
        samples["corpus_embedding"], references["corpus_embedding"] = added, indexed
    seed = int(start.timestamp()) % (2**31)  # the same window always draws the same sample and permutations
    new = False
    for name, sample in samples.items():
        signal = SIGNALS[name]
        verdict = judge(signal, references[name], sample, settings, seed=seed)
        previous = store.recent_states(conn, collection, config, name, start, settings.consecutive - 1)
        new |= store.insert_window(conn, _row(collection, config, name, start, end, verdict, previous, settings,
                                               reference.id if reference is not None else None))  # fmt: skip
    return new


def _row(
    collection: str,
    config: str,
    signal: str,
    start: datetime,
    end: datetime,
    verdict: Judgement,
    previous: list[State],
    settings: DriftSettings,
    reference_id: int | None,
) -> store.WindowRow:
    test = verdict.test
    return store.WindowRow(
        collection=collection,
        config=config,
        signal=signal,
        window_start=start,
        window_end=end,
        state=verdict.state,
        alarm=consecutive_alarm([*previous, verdict.state], settings.consecutive),
        n=verdict.n,
        reference_n=verdict.reference_n,
        statistic=test.statistic if test else None,
        p_value=test.p_value if test else None,
        psi=test.psi if test else None,
        reference_value=test.reference_value if test else None,
        window_value=test.window_value if test else None,
        reference_id=reference_id,
    )


def reference_from_window(
    conn: psycopg.Connection,
    collection: str,
    config: str,
    start: datetime,
    end: datetime,
    measures: AnswerMeasures | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The samples of a live window, as a reference: its vectors and every scalar signal's values."""
    samples = window_samples(conn, collection, config, start, end, measures or default_measures())
    vectors = samples.pop("question_embedding")
    return vectors, samples
