//! The Redis queue: one sorted set of deliveries per shard, scored by next-attempt time (or lease
//! expiry) in ms, with Lua scripts for enqueue, claim and settle so each step is atomic. Enqueues and
//! settlements submitted concurrently are grouped (see [`super::batcher`]) into one script call per
//! shard, so Redis sees one round trip per batch.
//!
//! # Keys
//! Every key of a shard carries the shard's hash tag, so one script touches one Cluster slot:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<prefix>:{s<n>}:due` | ZSET | delivery id → next attempt (or lease expiry), ms |
//! | `<prefix>:{s<n>}:dead` | ZSET | dead-lettered delivery id → time buried, ms |
//! | `<prefix>:{s<n>}:ev:<event id>` | HASH | source, type, headers, payload, n (deliveries), open (unfinished) |
//! | `<prefix>:{s<n>}:d:<delivery id>` | HASH | event, endpoint, headers, payload (only when rewritten), attempts, status, lease, updated, last_error, log (one JSON attempt record per line) |
//! | `<prefix>:{s<n>}:off` | HASH | disabled endpoint name → reason (checked atomically when parking a delivery) |
//! | `<prefix>:{s<n>}:paused:<endpoint>` | ZSET | deliveries parked while their endpoint is disabled → time parked, ms |
//! | `<prefix>:endpoint:<name>` | HASH | disabled (reason), disabled_at, failing_since (ms): the endpoint's shared state |
//! | `<prefix>:meta` | HASH | `shards`: the shard count the data was written with |
//! | `<prefix>:idem:<source>:<key>` | STRING | the answer given to an `idempotency-key` (`pending` while in progress), with a TTL |
//!
//! Creation times are not stored: ids are ULIDs and carry them. The scripts build per-delivery key
//! names from the shard prefix; they stay within the shard's hash tag, hence within one Cluster slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use ulid::Ulid;

use super::batcher::Batcher;
use super::{
    AttemptRecord, ClaimBatch, Claimed, DeadCursor, DeadLetter, DeliverySummary, DeliveryView, EndpointState,
    EventView, NewDelivery, NewEvent, Queue, QueueError, Settle, IDEMPOTENCY_PENDING, IDEMPOTENCY_PENDING_TTL,
};
use crate::config::{QueueConfig, RedisConfig};
use crate::id;

const ENQUEUE: &str = include_str!("scripts/enqueue.lua");
const CLAIM: &str = include_str!("scripts/claim.lua");
const SETTLE: &str = include_str!("scripts/settle.lua");
const REPLAY: &str = include_str!("scripts/replay.lua");
const RESUME: &str = include_str!("scripts/resume.lua");
const DISABLE: &str = include_str!("scripts/disable.lua");
/// Most paused deliveries one resume call moves (the script runs until none is left).
const RESUME_CHUNK: usize = 1000;

/// Most events (or settlements) in one script call.
const BATCH: usize = 64;
/// Most deliveries one claim may return.
const MAX_CLAIM: usize = 1000;

type Shared<T> = Result<T, Arc<QueueError>>;

/// The Redis-backed delivery queue. Cheap to clone: clones share one multiplexed connection and the
/// batching tasks. Must be opened inside a Tokio runtime.
#[derive(Clone)]
pub struct RedisQueue {
    core: Arc<Core>,
    enqueues: Batcher<PendingEvent, Shared<()>>,
    settlements: Batcher<Settlement, Shared<bool>>,
}

struct Core {
    conn: ConnectionManager,
    prefix: String,
    shards: u32,
    retention_secs: u64,
    enqueue: Script,
    claim: Script,
    settle: Script,
    replay: Script,
    resume: Script,
    disable: Script,
}

/// An event and its deliveries, owned, on its way to the enqueue batch.
struct PendingEvent {
    shard: u32,
    id: String,
    source: String,
    event_type: String,
    headers: String,
    payload: Bytes,
    deliveries: Vec<PendingDelivery>,
}

struct PendingDelivery {
    id: String,
    endpoint: Arc<str>,
    delay_ms: u64,
    headers: String,
    payload: Option<Bytes>,
}

/// One settlement on its way to the settle batch.
struct Settlement {
    shard: u32,
    id: String,
    token: String,
    record: String,
    action: &'static str,
    delay_ms: u64,
    last_error: String,
}

impl RedisQueue {
    /// Opens the queue. The connection is made lazily and re-made after failures, so a gateway can
    /// start (and answer 503) while Redis is away.
    pub fn open(redis: &RedisConfig, queue: &QueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(redis.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.timeout))
            .set_response_timeout(Some(redis.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let core = Arc::new(Core {
            conn,
            prefix: redis.prefix.clone(),
            shards: queue.shards,
            retention_secs: queue.retention.as_secs().max(1),
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            settle: Script::new(SETTLE),
            replay: Script::new(REPLAY),
            resume: Script::new(RESUME),
            disable: Script::new(DISABLE),
        });
        let for_enqueue = core.clone();
        let enqueues = Batcher::spawn(BATCH, move |batch| {
            let core = for_enqueue.clone();
            async move { core.flush_enqueues(batch).await }
        });
        let for_settle = core.clone();
        let settlements = Batcher::spawn(BATCH, move |batch| {
            let core = for_settle.clone();
            async move { core.flush_settlements(batch).await }
        });
        Ok(Self { core, enqueues, settlements })
    }

    /// Checks that the data in Redis was written with this shard count (recording it when new).
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let key = format!("{}:meta", self.core.prefix);
        let _: bool = conn.hset_nx(&key, "shards", self.core.shards).await?;
        let stored: u32 = conn.hget(&key, "shards").await?;
        if stored != self.core.shards {
            return Err(QueueError::Layout { stored, configured: self.core.shards });
        }
        Ok(())
    }

    /// Settings of the Redis server that put queued deliveries at risk, each with the reason.
    /// Empty when all is well or when the server does not let us read its config.
    pub async fn risky_settings(&self) -> Vec<String> {
        let mut conn = self.core.conn.clone();
        let mut risks = Vec::new();
        let read = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
        if let Ok((_, value)) = read("appendonly").query_async::<(String, String)>(&mut conn).await {
            if value != "yes" {
                risks.push("appendonly is off: a Redis restart loses every queued delivery since the last snapshot; set `appendonly yes`".to_string());
            } else if let Ok((_, fsync)) = read("appendfsync").query_async::<(String, String)>(&mut conn).await {
                if fsync != "always" {
                    risks.push(format!("appendfsync is {fsync}: a host crash (power loss, kernel panic) can lose the deliveries acknowledged in the last second or so; `appendfsync always` loses none"));
                }
            }
        }
        if let Ok((_, value)) = read("maxmemory-policy").query_async::<(String, String)>(&mut conn).await {
            if value != "noeviction" {
                risks.push(format!("maxmemory-policy is {value}: Redis may evict queued deliveries under memory pressure; set `maxmemory-policy noeviction`"));
            }
        }
        risks
    }

    fn idempotency_key(&self, source: &str, key: &str) -> String {
        format!("{}:idem:{source}:{key}", self.core.prefix)
    }

    fn endpoint_key(&self, name: &str) -> String {
        format!("{}:endpoint:{name}", self.core.prefix)
    }
}

impl Queue for RedisQueue {
    fn shards(&self) -> u32 {
        self.core.shards
    }

    async fn claim_idempotency(&self, source: &str, key: &str) -> Result<Option<String>, QueueError> {
        let mut conn = self.core.conn.clone();
        let name = self.idempotency_key(source, key);
        for _ in 0..2 {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&name)
                .arg(IDEMPOTENCY_PENDING)
                .arg("NX")
                .arg("PX")
                .arg(IDEMPOTENCY_PENDING_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            // Taken: read the answer (it may expire in between; then try to claim again).
            if let Some(answer) = conn.get::<_, Option<String>>(&name).await? {
                return Ok(Some(answer));
            }
        }
        Ok(Some(IDEMPOTENCY_PENDING.to_string()))
    }

    async fn complete_idempotency(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: () = conn.pset_ex(self.idempotency_key(source, key), answer, window.as_millis() as u64).await?;
        Ok(())
    }

    async fn release_idempotency(&self, source: &str, key: &str) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: () = conn.del(self.idempotency_key(source, key)).await?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.core.conn.clone();
        let max = before.map(|b| format!("({}", b.at)).unwrap_or_else(|| "+inf".to_string());
        // Scan at most this many per shard when filtering by endpoint.
        let scan = if endpoint.is_some() { 1000 } else { limit };
        let mut found = Vec::new();
        for shard in 0..self.core.shards {
            let prefix = self.core.shard_prefix(shard);
            // Those buried in the cursor's own millisecond, before its id (members with one score
            // are ordered by id), then the older ones.
            let mut ids: Vec<(String, f64)> = match before {
                Some(DeadCursor { at, id: Some(last) }) => {
                    let last = id::format_delivery(last);
                    let same: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                        .arg(format!("{prefix}dead"))
                        .arg(at)
                        .arg(at)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await?;
                    same.into_iter().filter(|(member, _)| *member < last).rev().take(scan).collect()
                }
                _ => Vec::new(),
            };
            let older: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(format!("{prefix}dead"))
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(scan)
                .query_async(&mut conn)
                .await?;
            ids.extend(older);
            if ids.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (id, _) in &ids {
                pipe.cmd("HMGET").arg(format!("{prefix}d:{id}")).arg(&["endpoint", "attempts", "last_error"]);
            }
            let rows: Vec<(Option<String>, Option<u32>, Option<String>)> = pipe.query_async(&mut conn).await?;
            for ((id, score), (ep, attempts, last_error)) in ids.into_iter().zip(rows) {
                let ep = ep.unwrap_or_default();
                if endpoint.is_none_or(|wanted| wanted == ep) {
                    found.push(DeadLetter {
                        id,
                        endpoint: ep,
                        dead_at: score as u64,
                        attempts: attempts.unwrap_or(0),
                        last_error,
                    });
                }
            }
        }
        found.sort_by(|a, b| b.dead_at.cmp(&a.dead_at).then_with(|| b.id.cmp(&a.id)));
        found.truncate(limit);
        Ok(found)
    }

    async fn replay(&self, deliveries: &[Ulid], spacing: Duration) -> Result<Vec<String>, QueueError> {
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for delivery in deliveries {
            by_shard.entry(id::shard_of(*delivery, self.core.shards)).or_default().push(id::format_delivery(*delivery));
        }
        let mut replayed = Vec::new();
        let mut conn = self.core.conn.clone();
        for (shard, ids) in by_shard {
            let prefix = self.core.shard_prefix(shard);
            let mut call = self.core.replay.key(format!("{prefix}due"));
            call.key(format!("{prefix}dead")).arg(&prefix).arg(spacing.as_millis() as u64);
            for id in &ids {
                call.arg(id);
            }
            let done: Vec<String> = call.invoke_async(&mut conn).await?;
            replayed.extend(done);
        }
        Ok(replayed)
    }

    async fn endpoint_states(&self, names: &[&str]) -> Result<Vec<EndpointState>, QueueError> {
        let mut pipe = redis::pipe();
        for name in names {
            pipe.cmd("HMGET").arg(self.endpoint_key(name)).arg(&["disabled", "disabled_at", "failing_since"]);
        }
        let mut conn = self.core.conn.clone();
        let rows: Vec<(Option<String>, Option<u64>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        Ok(rows
            .into_iter()
            .map(|(disabled, disabled_at, failing_since)| EndpointState { disabled, disabled_at, failing_since })
            .collect())
    }

    async fn mark_failing(&self, name: &str, at: u64) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: bool = conn.hset_nx(self.endpoint_key(name), "failing_since", at).await?;
        Ok(())
    }

    async fn clear_failing(&self, name: &str) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: () = conn.hdel(self.endpoint_key(name), "failing_since").await?;
        Ok(())
    }

    async fn disable(&self, name: &str, reason: &str, at: u64) -> Result<bool, QueueError> {
        let mut conn = self.core.conn.clone();
        // One script: the endpoint's state and every shard's `off` entry change together.
        let mut call = self.core.disable.key(self.endpoint_key(name));
        for shard in 0..self.core.shards {
            call.key(format!("{}off", self.core.shard_prefix(shard)));
        }
        let first: i64 = call.arg(name).arg(reason).arg(at).invoke_async(&mut conn).await?;
        Ok(first == 1)
    }

    async fn enable(&self, name: &str) -> Result<u64, QueueError> {
        let mut conn = self.core.conn.clone();
        let mut resumed = 0;
        for shard in 0..self.core.shards {
            let prefix = self.core.shard_prefix(shard);
            loop {
                let moved: u64 = self
                    .core
                    .resume
                    .key(format!("{prefix}due"))
                    .key(format!("{prefix}off"))
                    .arg(&prefix)
                    .arg(name)
                    .arg(RESUME_CHUNK)
                    .invoke_async(&mut conn)
                    .await?;
                resumed += moved;
                if moved < RESUME_CHUNK as u64 {
                    break;
                }
            }
        }
        let _: () = conn.hdel(self.endpoint_key(name), &["disabled", "disabled_at", "failing_since"]).await?;
        Ok(resumed)
    }

    async fn paused_count(&self, name: &str) -> Result<u64, QueueError> {
        let mut pipe = redis::pipe();
        for shard in 0..self.core.shards {
            pipe.zcard(format!("{}paused:{name}", self.core.shard_prefix(shard)));
        }
        let mut conn = self.core.conn.clone();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(counts.into_iter().sum())
    }

    async fn depth(&self, endpoints: &[String]) -> Result<crate::metrics::QueueDepth, QueueError> {
        let now = crate::delivery::unix_millis();
        let mut pipe = redis::pipe();
        for shard in 0..self.core.shards {
            let prefix = self.core.shard_prefix(shard);
            pipe.zcount(format!("{prefix}due"), "-inf", now)
                .zcount(format!("{prefix}due"), format!("({now}"), "+inf")
                .zcard(format!("{prefix}dead"));
            for endpoint in endpoints {
                pipe.zcard(format!("{prefix}paused:{endpoint}"));
            }
        }
        let mut conn = self.core.conn.clone();
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let mut depth = crate::metrics::QueueDepth {
            paused: endpoints.iter().map(|e| (e.clone(), 0)).collect(),
            ..Default::default()
        };
        for shard in counts.chunks(3 + endpoints.len()) {
            depth.due += shard[0];
            depth.scheduled += shard[1];
            depth.dead += shard[2];
            for (slot, n) in depth.paused.iter_mut().zip(&shard[3..]) {
                slot.1 += n;
            }
        }
        Ok(depth)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn enqueue(&self, event: &NewEvent<'_>, deliveries: &[NewDelivery]) -> Result<(), QueueError> {
        let pending = PendingEvent {
            shard: id::shard_of(event.id, self.core.shards),
            id: id::format_event(event.id),
            source: event.source.to_string(),
            event_type: event.event_type.to_string(),
            headers: serde_json::to_string(event.headers)?,
            payload: Bytes::copy_from_slice(event.payload),
            deliveries: deliveries
                .iter()
                .map(|d| {
                    let headers = if d.headers.is_empty() { String::new() } else { serde_json::to_string(&d.headers)? };
                    Ok(PendingDelivery {
                        id: id::format_delivery(d.id),
                        endpoint: d.endpoint.clone(),
                        delay_ms: d.delay.as_millis() as u64,
                        headers,
                        payload: d.payload.clone(),
                    })
                })
                .collect::<Result<_, serde_json::Error>>()?,
        };
        match self.enqueues.submit(pending).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(QueueError::Shared(e)),
            None => Err(QueueError::Stopped),
        }
    }

    async fn claim(&self, shard: u32, limit: usize, lease: Duration, token: &str) -> Result<ClaimBatch, QueueError> {
        type Row = (String, String, String, u32, String, String, Vec<u8>, String);
        let core = &self.core;
        let prefix = core.shard_prefix(shard);
        let mut conn = core.conn.clone();
        let (rows, wait, _now): (Vec<Row>, i64, u64) = core
            .claim
            .key(format!("{prefix}due"))
            .arg(&prefix)
            .arg(limit.min(MAX_CLAIM))
            .arg(lease.as_millis() as u64)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut malformed = Vec::new();
        for (delivery, token, endpoint, attempt, event, event_type, payload, headers) in rows {
            let Some(id) = id::parse_delivery(&delivery) else {
                // Not one of our ids: take it out of the queue so it cannot block claims.
                tracing::error!(member = %delivery, "A queue entry that is not a delivery id; removed from the queue.");
                let _: Result<(), _> = conn.zrem(format!("{prefix}due"), &delivery).await;
                continue;
            };
            let event_id = id::parse_event(&event);
            let headers = if headers.is_empty() {
                Ok(Vec::new())
            } else {
                serde_json::from_str::<Vec<(String, String)>>(&headers)
            };
            let mut claimed = Claimed {
                id,
                shard,
                token,
                endpoint,
                attempt,
                event_id: event_id.unwrap_or_else(|| id::event_of(id)),
                event_type,
                payload: Bytes::from(payload),
                headers: Vec::new(),
            };
            match (event_id, headers) {
                (Some(_), Ok(headers)) => {
                    claimed.headers = headers;
                    deliveries.push(claimed);
                }
                (None, _) => malformed.push((claimed, format!("malformed record: event id `{event}` does not parse"))),
                (_, Err(e)) => malformed.push((claimed, format!("malformed record: headers are not valid JSON ({e})"))),
            }
        }
        // One bad record must not fail the claims of the rest: it is dead-lettered with the reason,
        // where the admin API shows it, and the batch goes on.
        for (claimed, reason) in malformed {
            tracing::error!(delivery_id = %id::format_delivery(claimed.id), %reason,
                "A claimed delivery's record is malformed; dead-lettered so the others go on.");
            let record = AttemptRecord {
                attempt: claimed.attempt,
                at: crate::delivery::unix_millis(),
                outcome: "error".to_string(),
                error: Some(reason),
                ..AttemptRecord::default()
            };
            if let Err(e) = self.settle(&claimed, Some(&record), Settle::Bury).await {
                tracing::warn!(error = %e, "Could not dead-letter a malformed delivery; it is retried when its lease ends.");
            }
        }
        let next_due_in = u64::try_from(wait).ok().map(Duration::from_millis);
        Ok(ClaimBatch { deliveries, next_due_in })
    }

    async fn settle(
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
        };
        let settlement = Settlement {
            shard: claimed.shard,
            id: id::format_delivery(claimed.id),
            token: claimed.token.clone(),
            record: record.map(serde_json::to_string).transpose()?.unwrap_or_default(),
            action,
            delay_ms,
            last_error: record.and_then(|r| r.error.clone()).unwrap_or_default(),
        };
        match self.settlements.submit(settlement).await {
            Some(Ok(applied)) => Ok(applied),
            Some(Err(e)) => Err(QueueError::Shared(e)),
            None => Err(QueueError::Stopped),
        }
    }

    async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(delivery, core.shards));
        let name = id::format_delivery(delivery);
        let mut conn = core.conn.clone();
        let (fields, due): (Vec<Option<String>>, Option<f64>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{prefix}d:{name}"))
            .arg(&["endpoint", "status", "attempts", "updated", "last_error", "log"])
            .zscore(format!("{prefix}due"), &name)
            .query_async(&mut conn)
            .await?;
        let [endpoint, status, attempts_made, updated, last_error, log] = <[Option<String>; 6]>::try_from(fields)
            .map_err(|_| QueueError::Corrupt("HMGET returned the wrong number of fields".into()))?;
        let (Some(endpoint), Some(status)) = (endpoint, status) else {
            return Ok(None);
        };
        let attempts = log
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.is_empty())
            .map(serde_json::from_str)
            .collect::<Result<Vec<serde_json::Value>, _>>()?;
        Ok(Some(DeliveryView {
            id: name,
            event_id: id::format_event(id::event_of(delivery)),
            endpoint,
            next_attempt_at: due.filter(|_| status == "pending").map(|d| d as u64),
            state: status,
            attempts_made: attempts_made.and_then(|a| a.parse().ok()).unwrap_or(0),
            created_at: Some(delivery.timestamp_ms()),
            updated_at: updated.and_then(|c| c.parse().ok()),
            last_error: last_error.filter(|e| !e.is_empty()),
            attempts,
        }))
    }

    async fn event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(event, core.shards));
        let name = id::format_event(event);
        let mut conn = core.conn.clone();
        type Fields = (Option<String>, Option<String>, Option<String>, Option<Vec<u8>>, Option<usize>);
        let (source, event_type, headers, payload, count): Fields = redis::cmd("HMGET")
            .arg(format!("{prefix}ev:{name}"))
            .arg(&["source", "type", "headers", "payload", "n"])
            .query_async(&mut conn)
            .await?;
        let (Some(source), Some(event_type)) = (source, event_type) else {
            return Ok(None);
        };
        let ids: Vec<Ulid> =
            (1..=count.unwrap_or(0).min(id::MAX_DELIVERIES_PER_EVENT)).map(|k| id::delivery_of(event, k)).collect();
        let mut deliveries = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for delivery in &ids {
                pipe.cmd("HMGET")
                    .arg(format!("{prefix}d:{}", id::format_delivery(*delivery)))
                    .arg(&["endpoint", "status"]);
            }
            let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
            for (delivery, (endpoint, state)) in ids.iter().zip(rows) {
                deliveries.push(DeliverySummary {
                    id: id::format_delivery(*delivery),
                    endpoint: endpoint.unwrap_or_default(),
                    state: Some(state.unwrap_or_else(|| "expired".to_string())),
                });
            }
        }
        Ok(Some(EventView {
            id: name,
            source,
            event_type,
            received_at: Some(event.timestamp_ms()),
            headers: serde_json::from_str(headers.as_deref().unwrap_or("[]"))?,
            payload: Bytes::from(payload.unwrap_or_default()),
            deliveries,
        }))
    }
}

impl Core {
    fn shard_prefix(&self, shard: u32) -> String {
        format!("{}:{{s{shard}}}:", self.prefix)
    }

    /// Stores a batch of events: one script call per shard, the shards concurrently.
    async fn flush_enqueues(&self, batch: Vec<PendingEvent>) -> Vec<Shared<()>> {
        let groups = by_shard(batch.iter().map(|e| e.shard));
        let calls =
            groups.iter().map(|(shard, members)| self.enqueue_shard(*shard, members.iter().map(|&i| &batch[i])));
        let mut results = vec![Ok(()); batch.len()];
        for ((_, members), outcome) in groups.iter().zip(join_all(calls).await) {
            if let Err(e) = outcome {
                let e = Arc::new(e);
                for &i in members {
                    results[i] = Err(e.clone());
                }
            }
        }
        results
    }

    async fn enqueue_shard(&self, shard: u32, events: impl Iterator<Item = &PendingEvent>) -> Result<(), QueueError> {
        let prefix = self.shard_prefix(shard);
        let events: Vec<&PendingEvent> = events.collect();
        let mut call = self.enqueue.key(format!("{prefix}due"));
        call.arg(&prefix).arg(self.retention_secs).arg(events.len());
        for event in events {
            call.arg(&event.id)
                .arg(&event.source)
                .arg(&event.event_type)
                .arg(&event.headers)
                .arg(event.payload.as_ref())
                .arg(event.deliveries.len());
            for d in &event.deliveries {
                call.arg(&d.id).arg(&*d.endpoint).arg(d.delay_ms).arg(&d.headers);
                match &d.payload {
                    Some(payload) => call.arg(payload.as_ref()).arg("1"),
                    None => call.arg("").arg("0"),
                };
            }
        }
        let mut conn = self.conn.clone();
        let _now: u64 = call.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Settles a batch: one script call per shard, the shards concurrently.
    async fn flush_settlements(&self, batch: Vec<Settlement>) -> Vec<Shared<bool>> {
        let groups = by_shard(batch.iter().map(|s| s.shard));
        let calls = groups.iter().map(|(shard, members)| self.settle_shard(*shard, members.iter().map(|&i| &batch[i])));
        let mut results = vec![Ok(false); batch.len()];
        for ((_, members), outcome) in groups.iter().zip(join_all(calls).await) {
            match outcome {
                Ok(applied) => {
                    for (&i, applied) in members.iter().zip(applied) {
                        results[i] = Ok(applied == 1);
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

    async fn settle_shard(&self, shard: u32, batch: impl Iterator<Item = &Settlement>) -> Result<Vec<i64>, QueueError> {
        let prefix = self.shard_prefix(shard);
        let batch: Vec<&Settlement> = batch.collect();
        let mut call = self.settle.key(format!("{prefix}due"));
        call.key(format!("{prefix}dead"))
            .key(format!("{prefix}off"))
            .arg(&prefix)
            .arg(self.retention_secs)
            .arg(batch.len());
        for s in &batch {
            call.arg(&s.id).arg(&s.token).arg(&s.record).arg(s.action).arg(s.delay_ms).arg(&s.last_error);
        }
        let mut conn = self.conn.clone();
        let applied: Vec<i64> = call.invoke_async(&mut conn).await?;
        if applied.len() != batch.len() {
            return Err(QueueError::Corrupt(format!("settle answered {} results for {}", applied.len(), batch.len())));
        }
        Ok(applied)
    }
}

/// Indices of `shards` grouped by shard.
fn by_shard(shards: impl Iterator<Item = u32>) -> Vec<(u32, Vec<usize>)> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, shard) in shards.enumerate() {
        groups.entry(shard).or_default().push(i);
    }
    groups.into_iter().collect()
}
