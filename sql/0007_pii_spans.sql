-- Entity spans of retrieved text (chunk texts, titles, sections, sources), found once and read on
-- every query that retrieves it, by every process: keyed by the analysis that found them (model,
-- entity types, recognizers) and the sha256 of the text. Offsets, types and scores only: no values.
-- Actions, thresholds and allow-lists are applied at query time, so changing them needs no re-analysis.
CREATE TABLE pii_spans (
    analysis    text NOT NULL,
    text_sha256 bytea NOT NULL,
    spans       jsonb NOT NULL,   -- [[entity type, start, end, score], ...]
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (analysis, text_sha256)
);
