-- Dead letters that outlive their records in Redis: listed and replayed from here.
-- A delivery's own headers and body (a plugin's output for its route), so a replay from history
-- sends what the first attempts sent.
ALTER TABLE sluice_deliveries ADD COLUMN own_headers text, ADD COLUMN own_payload bytea;

-- Dead letters newest first, all or by endpoint (the dead-letter listing and replay-all). Partial:
-- only dead rows are indexed, a small share of all.
CREATE INDEX sluice_dead_letters ON sluice_deliveries (finished_at DESC, id DESC) WHERE state = 'dead';
CREATE INDEX sluice_dead_letters_by_endpoint ON sluice_deliveries (endpoint, finished_at DESC, id DESC)
    WHERE state = 'dead';
