//! The Redis queue: one sorted set of deliveries per shard, scored by next-attempt time (or lease
//! expiry) in ms, with Lua scripts for enqueue, claim and settle so each step is atomic and costs
//! one round trip.
//!
//! # Keys
//! Every key of a shard carries the shard's hash tag, so one script touches one Cluster slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>:{s<n>}:due` | ZSET | delivery id → next attempt (or lease expiry), ms |
//! | `<prefix>:{s<n>}:dead` | ZSET | dead-lettered delivery id → time buried, ms |
//! | `<prefix>:{s<n>}:ev:<event id>` | HASH | source, type, headers, payload, deliveries, received, open |
//! | `<prefix>:{s<n>}:d:<delivery id>` | HASH | event, endpoint, headers, payload (only when rewritten), attempts, status, lease, created, updated, last_error |
//! | `<prefix>:{s<n>}:attempts:<delivery id>` | LIST | one JSON record per attempt |
//! | `<prefix>:meta` | HASH | `shards`: the shard count the data was written with |
//!
//! The scripts build per-delivery key names from the shard prefix; they stay within the shard's
//! hash tag, hence within one Cluster slot.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use ulid::Ulid;

use super::{
    AttemptRecord, ClaimBatch, Claimed, DeliverySummary, DeliveryView, EventView, NewDelivery, NewEvent, QueueError,
    Settle,
};
use crate::config::{QueueConfig, RedisConfig};
use crate::id;

const ENQUEUE: &str = include_str!("scripts/enqueue.lua");
const CLAIM: &str = include_str!("scripts/claim.lua");
const SETTLE: &str = include_str!("scripts/settle.lua");

/// The Redis-backed delivery queue. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    shards: u32,
    retention_secs: u64,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    settle: Script,
}

impl RedisQueue {
    /// Opens the queue. The connection is made lazily and re-made after failures, so a gateway can
    /// start (and keep serving 503s) while Redis is away.
    pub fn open(redis: &RedisConfig, queue: &QueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(redis.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.timeout))
            .set_response_timeout(Some(redis.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            prefix: redis.prefix.clone(),
            shards: queue.shards,
            retention_secs: queue.retention.as_secs().max(1),
            scripts: std::sync::Arc::new(Scripts {
                enqueue: Script::new(ENQUEUE),
                claim: Script::new(CLAIM),
                settle: Script::new(SETTLE),
            }),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Checks that the data in Redis was written with this shard count (recording it when new).
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = format!("{}:meta", self.prefix);
        let _: bool = conn.hset_nx(&key, "shards", self.shards).await?;
        let stored: u32 = conn.hget(&key, "shards").await?;
        if stored != self.shards {
            return Err(QueueError::Layout { stored, configured: self.shards });
        }
        Ok(())
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn shard_prefix(&self, shard: u32) -> String {
        format!("{}:{{s{shard}}}:", self.prefix)
    }

    /// Stores an event and schedules its deliveries, in one atomic round trip.
    pub async fn enqueue(&self, event: &NewEvent<'_>, deliveries: &[NewDelivery]) -> Result<(), QueueError> {
        let shard = id::shard_of(event.id, self.shards);
        let prefix = self.shard_prefix(shard);
        let summary: Vec<DeliverySummary> = deliveries
            .iter()
            .map(|d| DeliverySummary { id: id::format_delivery(d.id), endpoint: d.endpoint.to_string(), state: None })
            .collect();
        let mut invocation = self.scripts.enqueue.key(format!("{prefix}due"));
        invocation
            .arg(&prefix)
            .arg(id::format_event(event.id))
            .arg(event.source)
            .arg(event.event_type)
            .arg(serde_json::to_string(event.headers)?)
            .arg(event.payload)
            .arg(serde_json::to_string(&summary)?)
            .arg(self.retention_secs)
            .arg(deliveries.len());
        for delivery in deliveries {
            invocation
                .arg(id::format_delivery(delivery.id))
                .arg(&*delivery.endpoint)
                .arg(delivery.delay.as_millis() as u64)
                .arg(serde_json::to_string(&delivery.headers)?);
            match &delivery.payload {
                Some(payload) => invocation.arg("1").arg(payload.as_ref()),
                None => invocation.arg("0").arg(""),
            };
        }
        let mut conn = self.conn.clone();
        let _now: u64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Claims up to `limit` due deliveries of `shard`, leasing each for `lease`.
    pub async fn claim(
        &self,
        shard: u32,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<ClaimBatch, QueueError> {
        type Row = (String, String, String, u32, String, String, Vec<u8>, String);
        let prefix = self.shard_prefix(shard);
        let mut conn = self.conn.clone();
        let (rows, wait, _now): (Vec<Row>, i64, u64) = self
            .scripts
            .claim
            .key(format!("{prefix}due"))
            .arg(&prefix)
            .arg(limit)
            .arg(lease.as_millis() as u64)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for (delivery, token, endpoint, attempt, event, event_type, payload, headers) in rows {
            let (Some(id), Some(event_id)) = (id::parse_delivery(&delivery), id::parse_event(&event)) else {
                return Err(QueueError::Corrupt(format!("bad ids in queue: {delivery} / {event}")));
            };
            let headers = if headers.is_empty() { Vec::new() } else { serde_json::from_str(&headers)? };
            deliveries.push(Claimed {
                id,
                shard,
                token,
                endpoint,
                attempt,
                event_id,
                event_type,
                payload: Bytes::from(payload),
                headers,
            });
        }
        let next_due_in = u64::try_from(wait).ok().map(Duration::from_millis);
        Ok(ClaimBatch { deliveries, next_due_in })
    }

    /// Records `record` and settles the delivery; `Ok(false)` when the lease was lost meanwhile.
    pub async fn settle(&self, claimed: &Claimed, record: &AttemptRecord, action: Settle) -> Result<bool, QueueError> {
        let prefix = self.shard_prefix(claimed.shard);
        let (name, delay_ms) = match action {
            Settle::Ack => ("ack", 0),
            Settle::Retry(delay) => ("retry", delay.as_millis() as u64),
            Settle::Bury => ("bury", 0),
        };
        let mut conn = self.conn.clone();
        let applied: i32 = self
            .scripts
            .settle
            .key(format!("{prefix}due"))
            .key(format!("{prefix}dead"))
            .arg(&prefix)
            .arg(id::format_delivery(claimed.id))
            .arg(&claimed.token)
            .arg(serde_json::to_string(record)?)
            .arg(name)
            .arg(delay_ms)
            .arg(self.retention_secs)
            .arg(record.error.as_deref().unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(applied == 1)
    }

    /// A delivery with its state and every attempt, or `None` when unknown (or expired).
    pub async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        let prefix = self.shard_prefix(id::shard_of(delivery, self.shards));
        let name = id::format_delivery(delivery);
        let mut conn = self.conn.clone();
        let (fields, attempts, due): (Vec<Option<String>>, Vec<String>, Option<f64>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{prefix}d:{name}"))
            .arg(&["endpoint", "status", "attempts", "created", "updated", "last_error"])
            .lrange(format!("{prefix}attempts:{name}"), 0, -1)
            .zscore(format!("{prefix}due"), &name)
            .query_async(&mut conn)
            .await?;
        let [endpoint, status, attempts_made, created, updated, last_error] =
            <[Option<String>; 6]>::try_from(fields)
                .map_err(|_| QueueError::Corrupt("HMGET returned the wrong number of fields".into()))?;
        let (Some(endpoint), Some(status)) = (endpoint, status) else {
            return Ok(None);
        };
        let attempts = attempts.iter().map(|a| serde_json::from_str(a)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(DeliveryView {
            id: name,
            event_id: id::format_event(id::event_of(delivery)),
            endpoint,
            state: status,
            attempts_made: attempts_made.and_then(|a| a.parse().ok()).unwrap_or(0),
            created_at: created.and_then(|c| c.parse().ok()),
            updated_at: updated.and_then(|c| c.parse().ok()),
            next_attempt_at: due.map(|d| d as u64),
            last_error: last_error.filter(|e| !e.is_empty()),
            attempts,
        }))
    }

    /// An event with its deliveries' states, or `None` when unknown (or expired).
    pub async fn event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        let prefix = self.shard_prefix(id::shard_of(event, self.shards));
        let name = id::format_event(event);
        let mut conn = self.conn.clone();
        type Fields = (Option<String>, Option<String>, Option<String>, Option<Vec<u8>>, Option<String>, Option<u64>);
        let (source, event_type, headers, payload, deliveries, received): Fields = redis::cmd("HMGET")
            .arg(format!("{prefix}ev:{name}"))
            .arg(&["source", "type", "headers", "payload", "deliveries", "received"])
            .query_async(&mut conn)
            .await?;
        let (Some(source), Some(event_type)) = (source, event_type) else {
            return Ok(None);
        };
        let mut deliveries: Vec<DeliverySummary> = serde_json::from_str(deliveries.as_deref().unwrap_or("[]"))?;
        if !deliveries.is_empty() {
            let mut pipe = redis::pipe();
            for d in &deliveries {
                pipe.hget(format!("{prefix}d:{}", d.id), "status");
            }
            let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            for (d, state) in deliveries.iter_mut().zip(states) {
                d.state = Some(state.unwrap_or_else(|| "expired".to_string()));
            }
        }
        Ok(Some(EventView {
            id: name,
            source,
            event_type,
            received_at: received,
            headers: serde_json::from_str(headers.as_deref().unwrap_or("[]"))?,
            payload: Bytes::from(payload.unwrap_or_default()),
            deliveries,
        }))
    }
}
