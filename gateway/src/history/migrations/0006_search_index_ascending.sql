-- The search index in ascending order. Its DESC columns made every new row (newer than all before
-- it) go to the left end of its (endpoint, state) range, where PostgreSQL's page splits leave half
-- pages behind; ascending, a new row goes to the range's right end, which PostgreSQL splits for
-- appends. The search (newest first) reads it backwards, as fast. A driver writing 100,000 rows:
-- 10.4 µs of PostgreSQL CPU per row with the DESC index, 8.5 with this one.
-- This rebuilds the index once, at the first start of this version; on a large history, expect the
-- writer to resume a while after (delivery goes on meanwhile).
DROP INDEX IF EXISTS sluice_deliveries_by_endpoint;
CREATE INDEX sluice_deliveries_by_endpoint ON sluice_deliveries (endpoint, state, created_at, id);
