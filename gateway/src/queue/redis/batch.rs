//! Group commit on Redis: enqueues and settlements submitted concurrently are grouped (see
//! [`super::super::batcher`]) into one script call per shard, the shards concurrently.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use super::{record, Core, RedisQueue, Shared, HISTORY_V2, HISTORY_V2_COUNT, QUEUE};
use crate::id;
use crate::queue::{idempotency_pending, AttemptRecord, Claimed, NewDelivery, NewEvent, QueueError, Settle};

/// An event and its deliveries, owned, on its way to the enqueue batch.
pub(super) struct PendingEvent {
    pub(super) shard: u32,
    pub(super) id: String,
    /// The event record ([`record`]).
    pub(super) record: Vec<u8>,
    pub(super) deliveries: Vec<PendingDelivery>,
    /// Its idempotency key, stored with it.
    pub(super) idempotency: Option<PendingKey>,
}

/// An idempotency key stored with its event (see [`crate::queue::IdempotencyCommit`]).
pub(super) struct PendingKey {
    pub(super) name: String,
    pub(super) mark: String,
    pub(super) answer: String,
    pub(super) window_ms: u64,
}

/// A delivery of a [`PendingEvent`]: its own headers (JSON, empty for none) and payload, if a
/// plugin gave it any.
pub(super) struct PendingDelivery {
    pub(super) id: String,
    pub(super) delay_ms: u64,
    pub(super) headers: String,
    pub(super) payload: Option<Bytes>,
}

/// One settlement on its way to the settle batch.
pub(super) struct Settlement {
    shard: u32,
    id: String,
    token: String,
    record: String,
    action: &'static str,
    delay_ms: u64,
    last_error: String,
    /// Its packed parts for the history stream, packed here when the gateway holds all of them (see
    /// [`history_entry`]); empty otherwise, and the script packs it.
    entry: Vec<u8>,
    /// Its event's id without `evt_` (the event record's key ends with it), so the script need not
    /// work it out from the delivery id; empty when unknown.
    event: String,
}

/// The packed history parts of a first attempt's success on a lease without a hash (the common
/// case), packed as `scripts/settle.lua` packs one: delivery, endpoint, `succeeded <finished>
/// <attempts> <lapsed>`, no error, the attempt log (this one record), the event record as the claim
/// handed it out. The gateway holds all of that, so the script neither reads the record back nor
/// packs (about 3 µs of Redis' time per delivery, measured with a driver against a bare Redis).
/// Its finish time is the attempt's start plus its latency, by the gateway's clock: what the admin
/// API shows for such a delivery while Redis holds it (`redis/view.rs`).
fn history_entry(claimed: &Claimed, id: &str, attempt: &AttemptRecord, log_line: &str) -> Option<Vec<u8>> {
    let record = claimed.record.as_ref()?;
    let meta = format!("succeeded {} {} {}", attempt.ended_at(), claimed.attempt, claimed.lapsed);
    let log = format!("{log_line}\n");
    Some(super::packed::pack(&[
        Some(id.as_bytes()),
        Some(claimed.endpoint.as_bytes()),
        Some(meta.as_bytes()),
        Some(b""),
        Some(log.as_bytes()),
        Some(record),
        None,
        None,
        None,
    ]))
}

impl RedisQueue {
    /// Stores one event with its deliveries (and its idempotency key) in the next enqueue batch.
    pub(super) async fn submit_event(
        &self,
        event: &NewEvent<'_>,
        deliveries: &[NewDelivery],
    ) -> Result<(), QueueError> {
        let endpoints: Vec<&str> = deliveries.iter().map(|d| &*d.endpoint).collect();
        let pending = PendingEvent {
            shard: id::shard_of(event.id, self.core.shards),
            id: id::format_event(event.id),
            record: record::encode(event.source, event.event_type, &endpoints, event.headers, event.payload)?,
            deliveries: deliveries
                .iter()
                .map(|d| {
                    let headers = if d.headers.is_empty() { String::new() } else { serde_json::to_string(&d.headers)? };
                    Ok(PendingDelivery {
                        id: id::format_delivery(d.id),
                        delay_ms: d.delay.as_millis() as u64,
                        headers,
                        payload: d.payload.clone(),
                    })
                })
                .collect::<Result<_, serde_json::Error>>()?,
            idempotency: event.idempotency.map(|commit| PendingKey {
                name: self.idempotency_key(event.source, commit.key),
                mark: idempotency_pending(event.id),
                answer: commit.answer.to_string(),
                window_ms: commit.window.as_millis() as u64,
            }),
        };
        match self.enqueues.submit(pending).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(QueueError::Shared(e)),
            None => Err(QueueError::Stopped),
        }
    }

    /// Settles one claimed delivery in the next settle batch.
    pub(super) async fn submit_settlement(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
    ) -> Result<bool, QueueError> {
        let (action, delay_ms) = match action {
            Settle::Ack => ("ack", 0),
            Settle::Retry(delay) => ("retry", delay.as_millis() as u64),
            Settle::Bury => ("bury", 0),
            Settle::Defer(delay) => ("defer", delay.as_millis() as u64),
            // Deferred by this much should the endpoint have been enabled meanwhile.
            Settle::Pause => ("pause", 1000),
            Settle::Park => ("park", 0),
        };
        let id = id::format_delivery(claimed.id);
        let event = id::event_of(claimed.id).to_string();
        let log_line = record.map(serde_json::to_string).transpose()?.unwrap_or_default();
        let entry = match record {
            Some(attempt) if action == "ack" && attempt.error.is_none() && claimed.token.starts_with('~') => {
                history_entry(claimed, &id, attempt, &log_line)
            }
            _ => None,
        };
        let settlement = Settlement {
            shard: claimed.shard,
            id,
            token: claimed.token.clone(),
            record: log_line,
            action,
            delay_ms,
            last_error: record.and_then(|r| r.error.clone()).unwrap_or_default(),
            entry: entry.unwrap_or_default(),
            event,
        };
        match self.settlements.submit(settlement).await {
            Some(Ok(applied)) => Ok(applied),
            Some(Err(e)) => Err(QueueError::Shared(e)),
            None => Err(QueueError::Stopped),
        }
    }
}

impl Core {
    /// With `redis.replicas_ack`, waits for that many replicas of the shard's primary to hold what
    /// was just written (the whole batch: one `WAIT` per script call).
    pub(super) async fn replicated(&self, conn: &mut super::conn::Conn, prefix: &str) -> Result<(), QueueError> {
        match self.replicas {
            Some((replicas, timeout)) => conn.wait_replicas(&format!("{prefix}{QUEUE}"), replicas, timeout).await,
            None => Ok(()),
        }
    }

    /// Stores a batch of events: one call per shard (see [`super::enqueue`]), the shards
    /// concurrently. An event whose idempotency key no longer holds its mark is not stored
    /// ([`QueueError::IdempotencyLost`]).
    pub(super) async fn flush_enqueues(&self, batch: Vec<PendingEvent>) -> Vec<Shared<()>> {
        let groups = by_shard(batch.iter().map(|e| e.shard));
        let calls =
            groups.iter().map(|(shard, members)| self.enqueue_shard(*shard, members.iter().map(|&i| &batch[i])));
        let lost = Arc::new(QueueError::IdempotencyLost);
        let outcomes = join_all(calls).await.into_iter().map(|outcome| {
            outcome.map(|stored| {
                stored.into_iter().map(|stored| if stored { Ok(()) } else { Err(lost.clone()) }).collect()
            })
        });
        scatter(batch.len(), &groups, outcomes, Ok(()))
    }

    /// Settles a batch: one script call per shard, the shards concurrently.
    pub(super) async fn flush_settlements(&self, batch: Vec<Settlement>) -> Vec<Shared<bool>> {
        let groups = by_shard(batch.iter().map(|s| s.shard));
        let calls = groups.iter().map(|(shard, members)| self.settle_shard(*shard, members.iter().map(|&i| &batch[i])));
        let outcomes = join_all(calls)
            .await
            .into_iter()
            .map(|outcome| outcome.map(|applied| applied.into_iter().map(|applied| Ok(applied == 1)).collect()));
        scatter(batch.len(), &groups, outcomes, Ok(false))
    }

    /// Buries the parked deliveries `ids` of `shard` with `reason` as their last error (settle.lua's
    /// `discard`, in one call); says of each whether it was parked (and is now dead).
    pub(super) async fn discard_shard(
        &self,
        shard: u32,
        ids: &[String],
        reason: &str,
    ) -> Result<Vec<bool>, QueueError> {
        let batch: Vec<Settlement> = ids
            .iter()
            .map(|id| Settlement {
                shard,
                id: id.clone(),
                token: String::new(),
                record: String::new(),
                action: "discard",
                delay_ms: 0,
                last_error: reason.to_string(),
                entry: Vec::new(),
                event: id::parse_delivery(id).map(|d| id::event_of(d).to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(self.settle_shard(shard, batch.iter()).await?.into_iter().map(|applied| applied == 1).collect())
    }

    async fn settle_shard(&self, shard: u32, batch: impl Iterator<Item = &Settlement>) -> Result<Vec<i64>, QueueError> {
        let prefix = self.shard_prefix(shard);
        let batch: Vec<&Settlement> = batch.collect();
        let mut call = self.settle.key(format!("{prefix}{QUEUE}"));
        call.key(format!("{prefix}dead"))
            .key(format!("{prefix}off"))
            .key(format!("{prefix}{HISTORY_V2}"))
            .key(format!("{prefix}{HISTORY_V2_COUNT}"))
            .arg(&prefix)
            .arg(self.retention_secs)
            .arg(self.dead_retention_secs)
            .arg(self.history_keep_secs.unwrap_or(0))
            .arg(batch.len());
        for s in &batch {
            call.arg(&s.id)
                .arg(&s.token)
                .arg(&s.record)
                .arg(s.action)
                .arg(s.delay_ms)
                .arg(&s.last_error)
                .arg(&s.entry)
                .arg(&s.event);
        }
        let mut conn = self.conn.clone();
        let applied: Vec<i64> = call.invoke_async(&mut conn).await?;
        self.replicated(&mut conn, &prefix).await?;
        if applied.len() != batch.len() {
            return Err(QueueError::Corrupt(format!("settle answered {} results for {}", applied.len(), batch.len())));
        }
        Ok(applied)
    }
}

/// Puts each shard call's results (one per member, in member order) back in the batch's order; a
/// call that failed fails each of its members with its error, shared.
fn scatter<T: Clone>(
    len: usize,
    groups: &[(u32, Vec<usize>)],
    outcomes: impl Iterator<Item = Result<Vec<Shared<T>>, QueueError>>,
    unset: Shared<T>,
) -> Vec<Shared<T>> {
    let mut results = vec![unset; len];
    for ((_, members), outcome) in groups.iter().zip(outcomes) {
        match outcome {
            Ok(each) => {
                for (&i, result) in members.iter().zip(each) {
                    results[i] = result;
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for &i in members {
                    results[i] = Err(e.clone());
                }
            }
        }
    }
    results
}

/// Indices of `shards` grouped by shard.
pub(super) fn by_shard(shards: impl Iterator<Item = u32>) -> Vec<(u32, Vec<usize>)> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, shard) in shards.enumerate() {
        groups.entry(shard).or_default().push(i);
    }
    groups.into_iter().collect()
}
