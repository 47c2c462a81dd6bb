//! Finished deliveries on their way to history (`[history]`): the `done` index of each shard (ids
//! by time finished, written by the settle script), read in batches with each delivery's record
//! and its event, and marked once PostgreSQL holds them (`scripts/exported.lua`). One gateway at a
//! time reads a shard (a lease, `scripts/writer.lua`): the others skip it until the lease runs out.

use std::collections::HashMap;
use std::time::Duration;

use super::{RedisQueue, DONE};
use crate::id;
use crate::queue::{DeliveryView, EventView, Finished, QueueError};

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
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}{DONE}"))
            .arg(0)
            .arg(limit.max(1) - 1)
            .query_async(&mut conn)
            .await?;
        // Read concurrently: the multiplexed connection pipelines the reads.
        let deliveries = futures_util::future::join_all(ids.into_iter().map(|text| self.read_finished(text))).await;
        let mut events: HashMap<ulid::Ulid, Option<EventView>> = HashMap::new();
        let mut finished = Vec::with_capacity(deliveries.len());
        let mut gone = Vec::new();
        for result in deliveries {
            let (text, view) = result?;
            let text = &text;
            let Some(view) = view else {
                // Expired before PostgreSQL took it (history was away for `queue.retention`), or
                // not a delivery id: it can never be written.
                tracing::error!(delivery_id = %text,
                    "A finished delivery expired from Redis before history held it; it is missing from history.");
                gone.push(text.clone());
                continue;
            };
            if view.state != "succeeded" && view.state != "dead" {
                // Replayed meanwhile: the replay takes it out of the index.
                continue;
            }
            let event = id::parse_delivery(text).map(id::event_of).unwrap_or_default();
            let event = match events.entry(event) {
                std::collections::hash_map::Entry::Occupied(known) => known.get().clone(),
                std::collections::hash_map::Entry::Vacant(slot) => slot.insert(self.view_event(event).await?).clone(),
            };
            finished.push(Finished { delivery: view, event });
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("ZREM").arg(format!("{prefix}{DONE}")).arg(&gone).query_async(&mut conn).await?;
        }
        Ok(finished)
    }

    /// A finished delivery's record, by its id as the index holds it.
    async fn read_finished(&self, text: String) -> Result<(String, Option<DeliveryView>), QueueError> {
        let view = match id::parse_delivery(&text) {
            Some(delivery) => self.view_delivery(delivery).await?,
            None => None,
        };
        Ok((text, view))
    }

    /// See [`crate::queue::Queue::mark_exported`].
    pub(super) async fn exported_in(&self, shard: u32, done: &[&Finished], keep: Duration) -> Result<u64, QueueError> {
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
