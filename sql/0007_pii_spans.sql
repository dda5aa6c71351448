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

-- Words a collection uses as its own names (products, features, places) that the NER model tags as
-- PERSON now and then: learned after each ingest from the stored spans, used as an allow-list for
-- that collection (reviewable with `ragops config pii --collection`, vetoed by pii.never_allow).
CREATE TABLE pii_learned_terms (
    collection    text NOT NULL,
    analysis      text NOT NULL,
    term          text NOT NULL,
    occurrences   integer NOT NULL,
    documents     integer NOT NULL,
    tagged_person integer NOT NULL,
    learned_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, analysis, term)
);
