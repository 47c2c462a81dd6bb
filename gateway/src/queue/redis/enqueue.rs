//! Storing a batch of events of one shard with their deliveries, in one of two ways:
//!
//! - **Plain** (the common case): no event of the batch has an idempotency key, and no delivery has
//!   headers or a payload of its own, so storing is writing each event record and queueing its
//!   deliveries: one `MULTI` with one `MSET` of the records and one `ZADD` of the deliveries, scored
//!   by [`RedisClock`](super::clock::RedisClock)'s estimate of Redis' time (the shard's: in a
//!   cluster, shards live on different nodes with clocks of their own). No Lua runs: the
//!   script's interpreter and its conversion of a dozen arguments per event cost Redis about twice
//!   what the commands themselves do (a driver against a bare Redis: 11.7 µs of Redis' CPU per
//!   event through the script, 5.5 through the transaction). The transaction keeps it all or
//!   nothing, as the script did.
//! - **Scripted** (`scripts/enqueue.lua`): everything else, and whenever the clock's estimate is
//!   not fresh. The script checks idempotency keys against the mark their request set, writes
//!   deliveries' own hashes, and reads Redis' clock (its reply refreshes the estimate).
//!
//! Both write the same keys and the same scores (a delivery no hash describes is queued half a
//! millisecond before it is due, see `enqueue.lua`), so nothing downstream tells them apart.

use super::batch::PendingEvent;
use super::clock::time_ms;
use super::{record, Core, QUEUE};
use crate::queue::QueueError;

impl Core {
    /// Stores `events` of `shard`; says for each whether it was stored (an event whose idempotency
    /// key no longer holds its mark is not).
    pub(super) async fn enqueue_shard(
        &self,
        shard: u32,
        events: impl Iterator<Item = &PendingEvent>,
    ) -> Result<Vec<bool>, QueueError> {
        let events: Vec<&PendingEvent> = events.collect();
        let plain = events.iter().all(|e| {
            e.idempotency.is_none() && e.deliveries.iter().all(|d| d.headers.is_empty() && d.payload.is_none())
        });
        match self.clock(shard).now_ms() {
            Some(now) if plain => self.enqueue_plain(shard, &events, now).await,
            _ => self.enqueue_scripted(shard, &events).await,
        }
    }

    /// The plain enqueue (see the module's doc): every event is stored.
    async fn enqueue_plain(&self, shard: u32, events: &[&PendingEvent], now: u64) -> Result<Vec<bool>, QueueError> {
        let prefix = self.shard_prefix(shard);
        let mut records = redis::cmd("MSET");
        let mut queue = redis::cmd("ZADD");
        queue.arg(format!("{prefix}{QUEUE}"));
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any_queued = false;
        for event in events {
            // The record's key: the shard's prefix, `e:`, the event id without its `evt_`.
            let key = record::key(&prefix, event.id.get(4..).unwrap_or(&event.id));
            if event.deliveries.is_empty() {
                // Nothing will close it: it expires after the retention, as the script has it.
                pipe.cmd("SET").arg(key).arg(&event.record).arg("EX").arg(self.retention_secs).ignore();
                continue;
            }
            records.arg(key).arg(&event.record);
            for d in &event.deliveries {
                // Due `delay` after now, queued half a millisecond before: nothing but the record
                // describes it (see `enqueue.lua`).
                queue.arg(format!("{}.5", (now + d.delay_ms).saturating_sub(1))).arg(&d.id);
                any_queued = true;
            }
        }
        if any_queued {
            pipe.add_command(records).ignore().add_command(queue).ignore();
        }
        // Redis' time as the transaction ran: the next batch's estimate.
        pipe.cmd("TIME");
        let mut conn = self.conn.clone();
        let (time,): ((u64, u64),) = pipe.query_async(&mut conn).await?;
        self.clock(shard).observe(time_ms(time.0, time.1));
        self.replicated(&mut conn, &prefix).await?;
        Ok(vec![true; events.len()])
    }

    /// The enqueue script (see the module's doc).
    async fn enqueue_scripted(&self, shard: u32, events: &[&PendingEvent]) -> Result<Vec<bool>, QueueError> {
        let prefix = self.shard_prefix(shard);
        let mut call = self.enqueue.key(format!("{prefix}{QUEUE}"));
        call.arg(&prefix).arg(self.retention_secs).arg(events.len());
        for event in events {
            call.arg(&event.id).arg(&event.record).arg(event.deliveries.len());
            match &event.idempotency {
                Some(key) => call.arg(&key.name).arg(&key.mark).arg(&key.answer).arg(key.window_ms),
                None => call.arg("").arg("").arg("").arg(0),
            };
            for d in &event.deliveries {
                call.arg(&d.id).arg(d.delay_ms).arg(&d.headers);
                match &d.payload {
                    Some(payload) => call.arg(payload.as_ref()).arg("1"),
                    None => call.arg("").arg("0"),
                };
            }
        }
        let mut conn = self.conn.clone();
        let (now, skipped): (u64, Vec<String>) = call.invoke_async(&mut conn).await?;
        self.clock(shard).observe(now);
        self.replicated(&mut conn, &prefix).await?;
        Ok(events.iter().map(|e| !skipped.contains(&e.id)).collect())
    }
}
