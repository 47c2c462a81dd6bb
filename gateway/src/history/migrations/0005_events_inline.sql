-- An event with one delivery (most of them) is kept in its delivery's row instead of a row of its
-- own in `sluice_events`: one row and two index entries per event instead of two rows and three,
-- and no check for an event row a sibling delivery wrote first (an event with one delivery has
-- none). `sluice_events` keeps the events with several deliveries, which share one row. The new
-- columns are NULL on every other row; adding them rewrites nothing.
ALTER TABLE sluice_deliveries
    ADD COLUMN event_source text,
    ADD COLUMN event_type text,
    ADD COLUMN event_headers json,
    ADD COLUMN event_payload bytea;
-- Every event history holds, wherever it is kept, for whoever queries history with SQL.
CREATE VIEW sluice_events_all AS
    SELECT id, received_at, source, type, headers, payload FROM sluice_events
    UNION ALL
    SELECT event_id, created_at, event_source, event_type, event_headers, event_payload
    FROM sluice_deliveries WHERE event_source IS NOT NULL;
