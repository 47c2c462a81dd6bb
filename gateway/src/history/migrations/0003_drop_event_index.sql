-- An event's deliveries are found without an index of their own: they share the event's time
-- (`created_at`, the time in their ULIDs), so the primary key (created_at, id) narrows a lookup to
-- the rows of that millisecond, and `event_id` picks among those. The index cost every insert.
DROP INDEX IF EXISTS sluice_deliveries_by_event;
