-- Finished deliveries and their events, partitioned by day so retention drops a partition instead
-- of deleting rows. Partitions are made by the writer as rows need them (see schema.rs). Times are
-- those of the ids (ULIDs): a delivery's `created_at` is its event's `received_at`, so a lookup by
-- id names its partition.
CREATE TABLE sluice_events (
    id text NOT NULL,
    received_at timestamptz NOT NULL,
    source text NOT NULL,
    type text NOT NULL,
    headers jsonb NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (received_at, id)
) PARTITION BY RANGE (received_at);

CREATE TABLE sluice_deliveries (
    id text NOT NULL,
    created_at timestamptz NOT NULL,
    event_id text NOT NULL,
    endpoint text NOT NULL,
    state text NOT NULL,
    attempts_made integer NOT NULL,
    lapsed_leases integer NOT NULL,
    finished_at timestamptz,
    last_error text,
    attempts jsonb NOT NULL,
    PRIMARY KEY (created_at, id)
) PARTITION BY RANGE (created_at);

-- Deliveries by endpoint and state over a time range, newest first (the admin query).
CREATE INDEX sluice_deliveries_by_endpoint ON sluice_deliveries (endpoint, state, created_at DESC, id DESC);
-- An event's deliveries.
CREATE INDEX sluice_deliveries_by_event ON sluice_deliveries (event_id);
