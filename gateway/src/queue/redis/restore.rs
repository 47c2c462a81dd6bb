//! Dead letters coming back from history (`[history]`): whether Redis still holds a delivery, and
//! restoring one it no longer does (`scripts/restore.lua`): the delivery pending again, with its
//! attempt log and own headers and body, and its event record stored again when it is gone.

use std::time::Duration;

use ulid::Ulid;

use super::batch::by_shard;
use super::{record, RedisQueue, QUEUE};
use crate::id;
use crate::queue::{QueueError, Restore};

impl RedisQueue {
    /// See [`crate::queue::Queue::holds`]: a delivery Redis holds has a hash (made by its first
    /// claim, by a replay or by a restore); one that never had one was never dead.
    pub(super) async fn holds_in(&self, deliveries: &[Ulid]) -> Result<Vec<bool>, QueueError> {
        let groups = by_shard(deliveries.iter().map(|d| id::shard_of(*d, self.core.shards)));
        let mut held = vec![false; deliveries.len()];
        let mut conn = self.core.conn.clone();
        for (shard, places) in groups {
            let prefix = self.core.shard_prefix(shard);
            let mut pipe = redis::pipe();
            for &at in &places {
                pipe.exists(format!("{prefix}d:{}", id::format_delivery(deliveries[at])));
            }
            let found: Vec<bool> = pipe.query_async(&mut conn).await?;
            for (at, found) in places.into_iter().zip(found) {
                held[at] = found;
            }
        }
        Ok(held)
    }

    /// See [`crate::queue::Queue::restore`].
    pub(super) async fn restore_one(&self, restore: &Restore, delay: Duration) -> Result<bool, QueueError> {
        let delivery = id::parse_delivery(&restore.delivery.id)
            .ok_or_else(|| QueueError::Corrupt(format!("not a delivery id: {}", restore.delivery.id)))?;
        // The record names every delivery of the event by number, up to this one at least.
        let number = id::number_of(delivery);
        let mut endpoints: Vec<&str> = restore.endpoints.iter().map(String::as_str).collect();
        if endpoints.len() < number {
            endpoints.resize(number, "");
        }
        endpoints[number - 1] = &restore.delivery.endpoint;
        let event = &restore.event;
        let record = record::encode_counted(
            (1, 0),
            &event.source,
            &event.event_type,
            &endpoints,
            &event.headers,
            &event.payload,
        )?;
        let mut log = String::new();
        for attempt in &restore.delivery.attempts {
            log.push_str(&serde_json::to_string(attempt)?);
            log.push('\n');
        }
        let prefix = self.core.shard_prefix(id::shard_of(delivery, self.core.shards));
        let mut call = self.core.restore.key(format!("{prefix}{QUEUE}"));
        call.arg(&prefix)
            .arg(&restore.delivery.id)
            .arg(delay.as_millis() as u64)
            .arg(&restore.delivery.endpoint)
            .arg(record)
            .arg(log)
            .arg(restore.own.headers.as_deref().unwrap_or(""))
            .arg(restore.own.payload.as_deref().unwrap_or(b""))
            .arg(if restore.own.payload.is_some() { "1" } else { "0" });
        let mut conn = self.core.conn.clone();
        let restored: i64 = call.invoke_async(&mut conn).await?;
        Ok(restored == 1)
    }
}
