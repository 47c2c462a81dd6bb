-- Cheaper rows to write (the writer's inserts were most of history's cost in PostgreSQL):
-- - attempt logs and event headers as `json`: PostgreSQL checks the text and keeps it as it came,
--   where `jsonb` parsed it into its binary form, and nothing queries inside them;
-- - ids, endpoint names and states compared byte by byte (COLLATE "C"): ULIDs sort the same either
--   way, and the keys and indexes on them no longer go through the locale's collation.
-- This rewrites the existing partitions once, at the first start of this version.
ALTER TABLE sluice_deliveries
    ALTER COLUMN attempts TYPE json USING attempts::json,
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C",
    ALTER COLUMN endpoint TYPE text COLLATE "C",
    ALTER COLUMN state TYPE text COLLATE "C";
ALTER TABLE sluice_events
    ALTER COLUMN headers TYPE json USING headers::json,
    ALTER COLUMN id TYPE text COLLATE "C";
