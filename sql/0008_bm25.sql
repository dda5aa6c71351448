-- BM25 term statistics, exact and transactional with the chunks: per index version and collection,
-- how many chunks contain each lexeme (df), and how many chunks and tokens there are (for avgdl).
-- Maintained by statement-level triggers on each chunk table (COPY, deletes, cascades from
-- documents and updates all fire them), so every path that changes chunks keeps them exact, in
-- the same transaction, whichever process writes. Queries read them to weight terms by rarity.
CREATE TABLE bm25_terms (
    index_version_id bigint NOT NULL REFERENCES index_versions(id) ON DELETE CASCADE,
    collection       text NOT NULL,
    lexeme           text NOT NULL,
    df               integer NOT NULL CHECK (df >= 0),  -- 0 only between the trigger's two statements
    PRIMARY KEY (index_version_id, collection, lexeme)
);

CREATE TABLE bm25_collections (
    index_version_id bigint NOT NULL REFERENCES index_versions(id) ON DELETE CASCADE,
    collection       text NOT NULL,
    chunks           bigint NOT NULL CHECK (chunks >= 0),
    tokens           bigint NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (index_version_id, collection)
);

-- A chunk's length in BM25's sense: its tokens (lexeme positions), title and headings included.
CREATE FUNCTION ragops_tsv_length(tsvector) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT coalesce(sum(cardinality(positions)), 0)::bigint FROM unnest($1) $$;

-- Transition tables are visible only inside the trigger function itself, so it reads them directly.
-- Statistics rows are visited in key order, so that concurrent writers lock them in the same order.
CREATE FUNCTION ragops_bm25_maintain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    version bigint := TG_ARGV[0]::bigint;
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
    END IF;
    RETURN NULL;
END $$;

-- Triggers on one version's chunk table (named chunks_v<id>, as ingest/versions.py names them),
-- and its statistics computed from the rows already there.
CREATE FUNCTION ragops_bm25_install(version bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    chunk_table text := format('chunks_v%s', version);
    tsv_expression text;
BEGIN
    -- Each chunk's BM25 length, stored: summing it from the tsvector on every query would cost more
    -- than the scoring. Computed from the tsv column's own expression, so the two cannot disagree.
    SELECT pg_get_expr(d.adbin, d.adrelid) INTO STRICT tsv_expression
    FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
    WHERE d.adrelid = chunk_table::regclass AND a.attname = 'tsv';
    EXECUTE format('ALTER TABLE %I ADD COLUMN bm25_length integer NOT NULL GENERATED ALWAYS AS '
                   '(ragops_tsv_length(%s)::integer) STORED', chunk_table, tsv_expression);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS added '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ragops_bm25_maintain(%s)', chunk_table || '_bm25_insert', chunk_table, version);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS removed '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ragops_bm25_maintain(%s)', chunk_table || '_bm25_delete', chunk_table, version);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS removed NEW TABLE AS added '
                   'FOR EACH STATEMENT EXECUTE FUNCTION ragops_bm25_maintain(%s)', chunk_table || '_bm25_update', chunk_table, version);
    DELETE FROM bm25_terms WHERE index_version_id = version;
    DELETE FROM bm25_collections WHERE index_version_id = version;
    EXECUTE format('INSERT INTO bm25_terms (index_version_id, collection, lexeme, df) '
                   'SELECT %s, c.collection, u.lexeme, count(*) FROM %I c, unnest(c.tsv) u GROUP BY 2, 3', version, chunk_table);
    EXECUTE format('INSERT INTO bm25_collections (index_version_id, collection, chunks, tokens) '
                   'SELECT %s, c.collection, count(*), sum(c.bm25_length) FROM %I c GROUP BY 2', version, chunk_table);
END $$;

SELECT ragops_bm25_install(id) FROM index_versions WHERE to_regclass(format('chunks_v%s', id)) IS NOT NULL;
