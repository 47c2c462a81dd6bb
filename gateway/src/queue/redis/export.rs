//! Finished deliveries on their way to history (`[history]`): the `done` index of each shard (ids
//! by time finished, written by the settle script), read in batches with each delivery's record
//! and its event, and marked once PostgreSQL holds them (`scripts/exported.lua`). One gateway at a
//! time reads a shard (a lease, `scripts/writer.lua`): the others skip it until the lease runs out.

use std::time::Duration;

use bytes::Bytes;

use super::view::attempts_of;
use super::{record, RedisQueue, DONE};
use crate::id;
use crate::queue::{DeliveryView, EventView, Finished, Own, QueueError};

/// One finished delivery as `scripts/finished.lua` returns it: id, endpoint (none: its hash is
/// gone), status, attempts, updated, last error, lapsed leases, attempt log, this version's event
/// record, the event id an older version's hash names, its own headers and payload.
type Row = (
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

/// How long a shard stays with the gateway that last wrote it: past this without a round, another
/// gateway's writer takes it over.
const WRITER_LEASE: Duration = Duration::from_secs(30);

impl RedisQueue {
    /// See [`crate::queue::Queue::finished`].
    pub(super) async fn finished_in(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut conn = self.core.conn.clone();
        let held: i64 = self
            .core
            .writer
            .key(format!("{prefix}{DONE}:writer"))
            .arg(&self.core.writer_id)
            .arg(WRITER_LEASE.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if held == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<Row> = self
            .core
            .finished
            .key(format!("{prefix}{DONE}"))
            .arg(&prefix)
            .arg(limit.max(1))
            .invoke_async(&mut conn)
            .await?;
        let mut finished = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (text, endpoint, state, attempts_made, updated, last_error, lapsed, log, record, older, headers, payload) in
            rows
        {
            let (Some(delivery), Some(endpoint)) = (id::parse_delivery(&text), endpoint) else {
                // Expired before PostgreSQL took it (history was away for `queue.retention`), or
                // not a delivery id: it can never be written.
                tracing::error!(delivery_id = %text,
                    "A finished delivery expired from Redis before history held it; it is missing from history.");
                gone.push(text);
                continue;
            };
            if state != "succeeded" && state != "dead" {
                // Replayed meanwhile: the replay takes it out of the index.
                continue;
            }
            let event = id::event_of(delivery);
            let event_view = match (record, older) {
                (Some(record), _) => {
                    let record = record::decode(&record)?;
                    Some(EventView {
                        id: id::format_event(event),
                        source: record.source,
                        event_type: record.event_type,
                        received_at: Some(event.timestamp_ms()),
                        headers: record.headers,
                        payload: Bytes::from(record.body),
                        deliveries: Vec::new(),
                    })
                }
                // An older version's event hash: read as the admin API reads it.
                (None, Some(_)) => self.view_event(event).await?,
                (None, None) => None,
            };
            let view = DeliveryView {
                id: text,
                event_id: id::format_event(event),
                endpoint,
                state,
                attempts_made: attempts_made.parse().unwrap_or(0),
                lapsed_leases: lapsed.parse().unwrap_or(0),
                created_at: Some(delivery.timestamp_ms()),
                updated_at: updated.parse().ok(),
                next_attempt_at: None,
                last_error: Some(last_error).filter(|e| !e.is_empty()),
                attempts: attempts_of(&log)?,
            };
            finished.push(Finished {
                delivery: view,
                event: event_view,
                own: Own { headers, payload: payload.map(Bytes::from) },
            });
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("ZREM").arg(format!("{prefix}{DONE}")).arg(&gone).query_async(&mut conn).await?;
        }
        Ok(finished)
    }

    /// See [`crate::queue::Queue::mark_exported`].
    pub(super) async fn exported_in(&self, shard: u32, done: &[Finished], keep: Duration) -> Result<u64, QueueError> {
        if done.is_empty() {
            return Ok(0);
        }
        let prefix = self.core.shard_prefix(shard);
        let mut call = self.core.exported.key(format!("{prefix}{DONE}"));
        call.arg(&prefix).arg(keep.as_secs().max(1));
        for f in done {
            call.arg(&f.delivery.id).arg(f.delivery.updated_at.map(|u| u.to_string()).unwrap_or_default());
        }
        let mut conn = self.core.conn.clone();
        Ok(call.invoke_async(&mut conn).await?)
    }

    /// Finished deliveries not yet in history, over every shard.
    pub(super) async fn history_backlog(&self) -> Result<u64, QueueError> {
        let counts = (0..self.core.shards).map(|shard| {
            let mut conn = self.core.conn.clone();
            let key = format!("{}{DONE}", self.core.shard_prefix(shard));
            async move { redis::cmd("ZCARD").arg(key).query_async::<u64>(&mut conn).await }
        });
        Ok(futures_util::future::try_join_all(counts).await?.into_iter().sum())
    }
}
