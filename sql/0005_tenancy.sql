-- Tenancy: keys granted collections and configurations, and an active index version per collection.

-- What a key may use. '*' grants all (present and future). Keys made before grants existed keep
-- working with everything; keys made from now on get nothing unless their creator names it
-- (an empty configs list means the service's default configuration only).
ALTER TABLE api_keys ADD COLUMN collections text[] NOT NULL DEFAULT '{*}';
ALTER TABLE api_keys ADD COLUMN configs text[] NOT NULL DEFAULT '{*}';
ALTER TABLE api_keys ALTER COLUMN collections SET DEFAULT '{}';
ALTER TABLE api_keys ALTER COLUMN configs SET DEFAULT '{}';

-- A collection answered from a version other than the service's default (index_versions.is_active).
-- Collections without a row follow the default; a row equal to the default is never kept.
CREATE TABLE collection_indexes (
    collection       text PRIMARY KEY,
    index_version_id integer NOT NULL REFERENCES index_versions(id) ON DELETE RESTRICT,
    activated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX collection_indexes_version ON collection_indexes (index_version_id);
