-- Sentence vectors: each chunk may carry one vector per quotable sentence (ingest/sentences.py), pooled
-- from the forward pass that embedded the chunk, so extractive answers embed only the question. They
-- live in the chunk's own row (float32, little-endian, sentence after sentence), so every delete,
-- re-ingest, rebuild and drop of a chunk or version takes them along. NULL: none stored (a version
-- built before this migration, or with index.sentence_vectors off); the generator then embeds them.
-- New versions get the column from sql/chunks_table.sql.tmpl.
DO $$
DECLARE
    version bigint;
BEGIN
    FOR version IN SELECT id FROM index_versions WHERE to_regclass(format('chunks_v%s', id)) IS NOT NULL LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS sentence_vectors bytea', format('chunks_v%s', version));
    END LOOP;
END
$$;
