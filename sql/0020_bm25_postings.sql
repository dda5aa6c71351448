-- BM25 postings: one row per (chunk, lexeme) of each index version, in a table of that version
-- (chunks_v<id>_postings), kept exact by the statement-level triggers of 0008 in the writer's
-- transaction. Its primary key holds everything BM25 reads (term frequency, the part of it in the
-- title or headings, the chunk's length), so a term's postings are an index-only scan: keyword
-- search never detoasts a chunk's tsvector to score it. A second index orders them by chunk, for
-- looking up a candidate's other terms.

-- The postings of one version's chunk table, created and filled from the rows already there.
CREATE FUNCTION ragops_bm25_postings_install(version bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    postings text := format('chunks_v%s_postings', version);
BEGIN
    EXECUTE format('CREATE TABLE %I ('
                   '    collection text COLLATE "C" NOT NULL,'  -- byte order: cheaper comparisons, same equality
                   '    lexeme     text COLLATE "C" NOT NULL,'
                   '    chunk_id   bigint NOT NULL,'
                   '    tf         smallint NOT NULL,'  -- positions of the lexeme (tsvector keeps at most 256)
                   '    title_tf   smallint NOT NULL,'  -- of which in the title or headings (weight A)
                   '    dl         integer NOT NULL,'   -- the chunk''s bm25_length
                   '    PRIMARY KEY (collection, lexeme, chunk_id) INCLUDE (tf, title_tf, dl))', postings);
    EXECUTE format('INSERT INTO %I (collection, lexeme, chunk_id, tf, title_tf, dl) '
                   'SELECT c.collection, u.lexeme, c.id, cardinality(u.positions), '
                   '       cardinality(array_positions(u.weights, ''A'')), c.bm25_length '
                   'FROM %I c, unnest(c.tsv) u ORDER BY 1, 2, 3', postings, format('chunks_v%s', version));
    -- Each chunk's postings side by side: a candidate's other terms are one index descent away.
    EXECUTE format('CREATE INDEX %I ON %I (chunk_id, lexeme) INCLUDE (tf, title_tf, dl)', postings || '_chunk', postings);
END $$;

-- 0008's maintenance, plus the postings; they are inserted in key order, as the statistics are.
CREATE OR REPLACE FUNCTION ragops_bm25_maintain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    version bigint := TG_ARGV[0]::bigint;
    postings text := format('chunks_v%s_postings', TG_ARGV[0]::bigint);
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE bm25_terms t SET df = t.df - x.n
        FROM (SELECT r.collection, u.lexeme, count(*) AS n FROM removed r, unnest(r.tsv) u GROUP BY 1, 2) x
        WHERE t.index_version_id = version AND t.collection = x.collection AND t.lexeme = x.lexeme;
        -- A term no chunk holds any more goes (a deleted document's names and addresses must not stay).
        DELETE FROM bm25_terms t
        USING (SELECT DISTINCT r.collection, u.lexeme FROM removed r, unnest(r.tsv) u) x
        WHERE t.index_version_id = version AND t.collection = x.collection AND t.lexeme = x.lexeme AND t.df <= 0;
        UPDATE bm25_collections s SET chunks = s.chunks - x.chunks, tokens = s.tokens - x.tokens
        FROM (SELECT r.collection, count(*) AS chunks, sum(r.bm25_length) AS tokens FROM removed r GROUP BY 1) x
        WHERE s.index_version_id = version AND s.collection = x.collection;
        -- Transition tables are visible to the function's dynamic statements too. A chunk's
        -- postings sit side by side in the by-chunk index: one descent each.
        EXECUTE format('DELETE FROM %I p WHERE p.chunk_id IN (SELECT r.id FROM removed r)', postings);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO bm25_terms AS t (index_version_id, collection, lexeme, df)
        SELECT version, a.collection, u.lexeme, count(*) FROM added a, unnest(a.tsv) u
        GROUP BY a.collection, u.lexeme ORDER BY a.collection, u.lexeme
        ON CONFLICT (index_version_id, collection, lexeme) DO UPDATE SET df = t.df + excluded.df;
        INSERT INTO bm25_collections AS s (index_version_id, collection, chunks, tokens)
        SELECT version, a.collection, count(*), sum(a.bm25_length) FROM added a
        GROUP BY a.collection ORDER BY a.collection
        ON CONFLICT (index_version_id, collection) DO UPDATE
            SET chunks = s.chunks + excluded.chunks, tokens = s.tokens + excluded.tokens;
        EXECUTE format('INSERT INTO %I (collection, lexeme, chunk_id, tf, title_tf, dl) '
                       'SELECT a.collection, u.lexeme, a.id, cardinality(u.positions), '
                       '       cardinality(array_positions(u.weights, ''A'')), a.bm25_length '
                       'FROM added a, unnest(a.tsv) u ORDER BY 1, 2, 3', postings);
    END IF;
    RETURN NULL;
END $$;

SELECT ragops_bm25_postings_install(id) FROM index_versions WHERE to_regclass(format('chunks_v%s', id)) IS NOT NULL;
