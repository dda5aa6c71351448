"""``ragops tune``: fit hybrid retrieval to one collection from questions its own chunks pose.

No labelled questions are needed and no model is downloaded. A pseudo-query is one sentence of a
chunk; the chunks it should find are its neighbours: the other chunks of its document, or, for a
document of one chunk, the other chunks under the same title. The chunk the sentence came from is
left out of every ranking, so the sentence cannot simply find itself by its own words (which would
favour keyword search far beyond what real questions do). With the team's eval set
(``evals/datasets/*.jsonl`` rows naming their source documents), its questions join the fit.

The queries are split in two: settings are fitted on one half and reported on the other. On the
fit half a setting is ranked by its gain over the configuration on the worse of that half's two
halves (shrinkage: a gain must hold on both, not be the luck of one draw). It replaces the
configuration's own only when it also beats it on the held-out half by more than ``MIN_GAIN``;
otherwise the configuration is kept as it is (tuning never makes it worse on what it
can see). The result is a new configuration file, for review and the eval gate like any change.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml
from psycopg import sql

from app import search_sql
from app.fusion import fuse, keyword_bound
from app.retrieval import bm25_of, fusion_of
from app.search_sql import ChunkHit
from core.config import LoadedConfig, RetrievalSettings, load_config
from core.embedding import Embedder
from core.errors import ConfigError, NotFound
from evals.metrics import ndcg_at_k, unique_in_order
from ingest.sentences import split_sentences
from ingest.versions import IndexVersion

MIN_GAIN = 0.005  # held-out nDCG@10 a setting must add before it replaces the configuration's
POOL = 30  # chunks per ranking before folding to documents (as the BEIR harness does)
GROUP_LIMIT = 50  # a title shared by more chunks than this says little about any of them
BM25_GRID = {"bm25_k1": (0.9, 1.5), "bm25_b": (0.0, 0.2, 0.4, 0.75), "bm25_title_weight": (1.0, 2.0)}
FUSION_GRID: tuple[dict[str, Any], ...] = (
    *({"fusion": "rrf", "rrf_k": k, "keyword_weight": w} for k in (10, 60) for w in (0.1, 0.3, 0.5, 1.0)),
    *(
        {"fusion": "convex", "fusion_normalization": n, "keyword_weight": w}
        for n in ("bound", "minmax")
        for w in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    ),
)
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class PseudoQuery:
    """A question with the chunks that answer it (as group keys: documents or titles)."""

    text: str
    relevant: frozenset[str]  # chunk ids, or document sources for eval-set questions
    exclude_chunk: int | None = None  # the chunk the text was taken from
    by_source: bool = False

    def key(self, hit: ChunkHit) -> str:
        """What a hit counts as for this query: its chunk, or its document."""
        return hit.source if self.by_source else str(hit.chunk_id)


@dataclass
class TuneResult:
    """What ``ragops tune`` found."""

    queries: int
    fit_queries: int
    held_out_queries: int
    before: float  # held-out nDCG@10 of the configuration as it is
    after: float  # held-out nDCG@10 of the chosen settings
    chosen: dict[str, Any]  # retrieval fields that change (empty: keep the configuration)
    ranking: list[dict[str, Any]] = field(default_factory=list)  # top settings on the fit half (gain on both halves)


def pseudo_queries(
    conn: psycopg.Connection, version: IndexVersion, collection: str, *, limit: int, seed: int = 0
) -> list[PseudoQuery]:
    """Up to ``limit`` sentence queries from ``collection``'s chunks, reproducibly (``seed``)."""
    rows = conn.execute(
        sql.SQL("SELECT c.id, c.document_id, c.title, c.text FROM {} c WHERE c.collection = %s ORDER BY c.id").format(
            version.table
        ),
        (collection,),
    ).fetchall()
    by_document: dict[int, list[int]] = {}
    by_title: dict[str, list[int]] = {}
    for chunk_id, document_id, title, _ in rows:
        by_document.setdefault(document_id, []).append(chunk_id)
        if title.strip():
            by_title.setdefault(title.strip().lower(), []).append(chunk_id)
    rng = random.Random(seed)
    order = list(rows)
    rng.shuffle(order)
    queries: list[PseudoQuery] = []
    for chunk_id, document_id, title, text in order:
        if len(queries) >= limit:
            break
        neighbours = [c for c in by_document[document_id] if c != chunk_id]
        if not neighbours:
            group = by_title.get(title.strip().lower(), [])
            neighbours = [c for c in group if c != chunk_id] if len(group) <= GROUP_LIMIT else []
        sentences = [s for s in split_sentences(text) if 6 <= len(_WORDS.findall(s)) <= 40]
        if not neighbours or not sentences:
            continue
        queries.append(PseudoQuery(rng.choice(sentences), frozenset(map(str, neighbours)), chunk_id))
    return queries


class Rankings:
    """Vector and BM25 candidates per query, searched once per BM25 setting and fused in memory."""

    def __init__(
        self,
        conn: psycopg.Connection,
        version: IndexVersion,
        collection: str,
        queries: list[PseudoQuery],
        embedder: Embedder,
        candidates: int,
        ef_search: int,
    ) -> None:
        self.conn, self.version, self.collection, self.queries = conn, version, collection, queries
        self.candidates = candidates + 1  # one more: the query's own chunk is dropped
        vectors = list(embedder.embed_batch([q.text for q in queries])) if queries else []
        self.vector = [
            self._drop(
                q,
                search_sql.search_vector(conn, version, v, self.candidates, collection=collection, ef_search=ef_search),
            )
            for q, v in zip(queries, vectors, strict=True)
        ]
        self._keyword: dict[tuple[float, float, float], list[list[ChunkHit]]] = {}
        self.stats = [search_sql.term_statistics(conn, version, q.text, collection=collection) for q in queries]

    @staticmethod
    def _drop(query: PseudoQuery, hits: list[ChunkHit]) -> list[ChunkHit]:
        return [h for h in hits if h.chunk_id != query.exclude_chunk]

    def keyword(self, settings: RetrievalSettings) -> list[list[ChunkHit]]:
        key = (settings.bm25_k1, settings.bm25_b, settings.bm25_title_weight)
        if key not in self._keyword:
            bm25 = bm25_of(settings)
            self._keyword[key] = [
                self._drop(
                    q,
                    search_sql.search_keyword(
                        self.conn, self.version, q.text, self.candidates, collection=self.collection, bm25=bm25
                    ),
                )
                for q in self.queries
            ]
        return self._keyword[key]

    def ndcg(self, settings: RetrievalSettings, which: Iterable[int]) -> float:
        """Mean nDCG@10 of ``settings`` over the queries numbered ``which``."""
        scores = self.ndcg_each(settings, which)
        return float(np.mean(scores)) if scores else 0.0

    def ndcg_each(self, settings: RetrievalSettings, which: Iterable[int]) -> list[float]:
        """nDCG@10 of ``settings`` on each of the queries numbered ``which``."""
        keyword = self.keyword(settings) if settings.mode != "vector" else []
        fusion, bm25 = fusion_of(settings), bm25_of(settings)
        scores = []
        for i in which:
            if settings.mode == "vector":
                hits = self.vector[i][:POOL]
            elif settings.mode == "keyword":
                hits = keyword[i][:POOL]
            else:
                vector, matched = self.vector[i][: self.candidates - 1], keyword[i][: self.candidates - 1]
                hits = fuse(vector, matched, POOL, fusion, keyword_bound(self.stats[i], bm25))
            query = self.queries[i]
            ranked = unique_in_order([query.key(h) for h in hits])
            scores.append(ndcg_at_k(ranked, dict.fromkeys(query.relevant, 1), 10))
        return scores


def tune(
    conn: psycopg.Connection,
    version: IndexVersion,
    collection: str,
    config: LoadedConfig,
    embedder: Embedder,
    *,
    limit: int = 400,
    seed: int = 0,
    extra: list[PseudoQuery] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Grid-search BM25 and fusion settings on half the pseudo-queries; report the other half."""
    base = config.config.retrieval
    queries = pseudo_queries(conn, version, collection, limit=limit, seed=seed) + list(extra or [])
    if len(queries) < 20:
        raise NotFound(
            f"collection {collection!r} gives only {len(queries)} pseudo-queries (20 needed): it needs documents "
            "of several chunks, or titles shared by several chunks",
            field="collection",
        )
    say = on_progress or (lambda _: None)
    say(f"{len(queries)} pseudo-queries; searching")
    rankings = Rankings(conn, version, collection, queries, embedder, max(base.candidates, POOL), base.ef_search)
    order = list(range(len(queries)))
    random.Random(seed + 1).shuffle(order)
    fit, held_out = order[: len(order) // 2], order[len(order) // 2 :]
    halves = (fit[0::2], fit[1::2])
    base_halves = [rankings.ndcg(base, half) for half in halves]
    candidates: list[dict[str, Any]] = []
    bm25_settings = [dict(zip(BM25_GRID, v, strict=True)) for v in itertools.product(*BM25_GRID.values())]
    for n, (bm25, fusion) in enumerate(itertools.product(bm25_settings, FUSION_GRID)):
        if n % len(FUSION_GRID) == 0:
            say(f"BM25 setting {n // len(FUSION_GRID) + 1} of {len(bm25_settings)}")
        update = {"mode": "hybrid", **bm25, **fusion}
        settings = base.model_copy(update=update)
        each = [rankings.ndcg(settings, half) for half in halves]
        gains = [score - before for score, before in zip(each, base_halves, strict=True)]
        candidates.append({**update, "fit": float(np.mean(each)), "worse_half_gain": min(gains)})
    candidates.sort(key=lambda c: (-c["worse_half_gain"], -c["fit"]))
    best = consistent_best(candidates)
    before = rankings.ndcg(base, held_out)
    after = rankings.ndcg(base.model_copy(update=best), held_out) if best else before
    current = base.model_dump()
    chosen = {k: v for k, v in (best or {}).items() if current.get(k) != v} if after - before > MIN_GAIN else {}
    return TuneResult(
        queries=len(queries),
        fit_queries=len(fit),
        held_out_queries=len(held_out),
        before=round(before, 4),
        after=round(after if chosen else before, 4),
        chosen=chosen,
        ranking=[
            {**c, "fit": round(c["fit"], 4), "worse_half_gain": round(c["worse_half_gain"], 4)} for c in candidates[:5]
        ],
    )


def consistent_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The setting whose gain over the configuration is largest on the worse of the two fit halves,
    if that gain is positive (shrinkage: the best mean is as often a lucky draw on one half)."""
    best = max(rows, key=lambda r: (r["worse_half_gain"], r["fit"]), default=None)
    if best is None or best["worse_half_gain"] <= 0:
        return None
    return {k: v for k, v in best.items() if k not in ("fit", "worse_half_gain")}


def eval_set_queries(path: Path) -> list[PseudoQuery]:
    """The questions of a team's eval set that name the documents answering them."""
    from evals.dataset import load_dataset

    return [
        PseudoQuery(q.question, frozenset(q.sources), by_source=True) for q in load_dataset(path).questions if q.sources
    ]


def write_tuned_config(config: LoadedConfig, configs_dir: Path, name: str, result: TuneResult, collection: str) -> Path:
    """A copy of ``config`` with the chosen retrieval settings, validated before it is written."""
    path = configs_dir / f"{name}.yaml"
    if path.exists():
        raise ConfigError(f"{path} exists: choose another --name or remove it")
    data = yaml.safe_load(config.path.read_text(encoding="utf-8")) if config.path.exists() else {}
    data = data or {}
    data.setdefault("retrieval", {}).update(result.chosen)
    data["description"] = f"{config.name} tuned by `ragops tune --collection {collection}`"
    header = (
        f"# Written by `ragops tune --collection {collection}` from {config.name} ({config.version}):\n"
        f"# held-out pseudo-query nDCG@10 {result.before:.4f} -> {result.after:.4f} "
        f"over {result.held_out_queries} queries. Review, then run the eval gate like any change.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    try:
        load_config(name, configs_dir)
    except ConfigError:
        path.unlink()
        raise
    return path
