//! Claiming due deliveries of one shard (`scripts/claim.lua`): one script call leases a batch, and
//! this turns its reply into [`Claimed`] deliveries. A delivery no hash describes yet comes back as
//! its event record (once per event in a reply), read here rather than in Lua, and its lease token
//! is made here (`~<s|m><lease expiry ms>:<endpoint>`, read by `scripts/settle.lua`). A delivery
//! whose record is malformed is dead-lettered with the reason, so it cannot fail the claims of the
//! rest of its batch forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{AsyncCommands, Value};
use ulid::Ulid;

use super::{record, RedisQueue, DONE, MAX_CLAIM, OLDER_QUEUE, QUEUE};
use crate::id;
use crate::queue::{AttemptRecord, ClaimBatch, Claimed, Queue, QueueError, Settle};

/// A delivery as the general path hands it out: id, token, endpoint, attempt, event id, type,
/// payload, headers (its own, JSON), lapsed leases.
type Row = (String, String, String, u32, String, String, Vec<u8>, String, u32);

/// An event record of a claim's reply, read, with its body apart, and as it came when history is
/// made from it (`Err`: why it cannot be read).
type Read = Arc<Result<(record::EventRecord, Bytes, Option<Bytes>), String>>;

impl RedisQueue {
    /// Leases up to `limit` due deliveries of `shard` for `lease`; `token` is unique to this call.
    pub(super) async fn claim_batch(
        &self,
        shard: u32,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> Result<ClaimBatch, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(shard);
        let mut conn = core.conn.clone();
        let (rows, wait, now, lease_until): (Vec<Vec<Value>>, i64, u64, String) = core
            .claim
            .key(format!("{prefix}{QUEUE}"))
            .key(format!("{prefix}dead"))
            .key(format!("{prefix}{OLDER_QUEUE}"))
            .key(format!("{prefix}{DONE}"))
            .arg(&prefix)
            .arg(limit.min(MAX_CLAIM))
            .arg(lease.as_millis() as u64)
            .arg(token)
            .arg(core.dead_retention_secs.saturating_mul(1000))
            .arg(core.retention_secs)
            .invoke_async(&mut conn)
            .await?;
        core.clock(shard).observe(now);
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut malformed = Vec::new();
        // The records of this reply's events, each read once (and kept whole when history is made
        // from them).
        let mut records: HashMap<Ulid, Read> = HashMap::new();
        let keep = core.history_keep_secs.is_some();
        for row in rows {
            let (claimed, problem) = if row.len() == 2 {
                let (delivery, record): (String, Vec<u8>) = redis::from_redis_value(Value::Array(row))
                    .map_err(|e| QueueError::Corrupt(format!("claim answered: {e}")))?;
                let Some(id) = self.known_delivery(&prefix, &delivery).await else { continue };
                let read =
                    records.entry(id::event_of(id)).or_insert_with(|| Arc::new(read_record(record, keep))).clone();
                from_record(id, shard, &lease_until, &read)
            } else {
                let row: Row = redis::from_redis_value(Value::Array(row))
                    .map_err(|e| QueueError::Corrupt(format!("claim answered: {e}")))?;
                let Some(id) = self.known_delivery(&prefix, &row.0).await else { continue };
                from_row(id, shard, row)
            };
            match problem {
                None => deliveries.push(claimed),
                Some(reason) => malformed.push((claimed, reason)),
            }
        }
        // One bad record must not fail the claims of the rest: it is dead-lettered with the reason,
        // where the admin API shows it, and the batch goes on.
        for (claimed, reason) in malformed {
            tracing::error!(delivery_id = %id::format_delivery(claimed.id), %reason,
                "A claimed delivery's record is malformed; dead-lettered so the others go on.");
            let record = AttemptRecord {
                attempt: claimed.attempt,
                at: crate::clock::unix_millis(),
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

    /// The delivery a queue entry names; `None` (and the entry taken out of the queue, so it cannot
    /// block claims) when it names none.
    async fn known_delivery(&self, prefix: &str, member: &str) -> Option<Ulid> {
        let id = id::parse_delivery(member);
        if id.is_none() {
            tracing::error!(%member, "A queue entry that is not a delivery id; removed from the queue.");
            let mut conn = self.core.conn.clone();
            let _: Result<(), _> = conn.zrem(format!("{prefix}{QUEUE}"), member).await;
        }
        id
    }
}

/// An event record as a claim hands it out, with its body apart (shared by its deliveries), and
/// whole when `keep` (history is made from it: see `batch.rs`).
fn read_record(record: Vec<u8>, keep: bool) -> Result<(record::EventRecord, Bytes, Option<Bytes>), String> {
    if record.is_empty() {
        // An earlier row of the reply held it: one that named another event would be a bug.
        return Err("the claim's reply left it out".into());
    }
    let mut read = record::decode(&record).map_err(|e| e.to_string())?;
    let body = Bytes::from(std::mem::take(&mut read.body));
    Ok((read, body, keep.then(|| Bytes::from(record))))
}

/// A delivery leased without a hash, from its event's record: its first attempt, no headers of its
/// own; and why it cannot be delivered, if its record does not say where to.
fn from_record(id: Ulid, shard: u32, lease_until: &str, read: &Read) -> (Claimed, Option<String>) {
    let event_id = id::event_of(id);
    let found = match &**read {
        Ok((record, body, whole)) => record
            .endpoints
            .get(id::number_of(id).wrapping_sub(1))
            .map(|endpoint| {
                (endpoint.clone(), record.endpoints.len() == 1, record.event_type.clone(), body.clone(), whole.clone())
            })
            .ok_or_else(|| "unreadable event record: it names no endpoint for this delivery".to_string()),
        Err(e) => Err(format!("unreadable event record: {e}")),
    };
    let (problem, (endpoint, only, event_type, payload, whole)) = match found {
        Ok(found) => (None, found),
        Err(problem) => (Some(problem), Default::default()),
    };
    let token = format!("~{}{lease_until}:{endpoint}", if only { 's' } else { 'm' });
    let claimed = Claimed {
        id,
        shard,
        token,
        endpoint,
        attempt: 1,
        lapsed: 0,
        event_id,
        event_type,
        payload,
        headers: Vec::new(),
        record: whole,
    };
    (claimed, problem)
}

/// A delivery as the general path hands it out; and why it cannot be delivered, if its record is
/// malformed.
fn from_row(id: Ulid, shard: u32, row: Row) -> (Claimed, Option<String>) {
    let (_, token, endpoint, attempt, event, event_type, payload, headers, lapsed) = row;
    let event_id = id::parse_event(&event);
    let headers =
        if headers.is_empty() { Ok(Vec::new()) } else { serde_json::from_str::<Vec<(String, String)>>(&headers) };
    let mut claimed = Claimed {
        id,
        shard,
        token,
        endpoint,
        attempt,
        lapsed,
        event_id: event_id.unwrap_or_else(|| id::event_of(id)),
        event_type,
        payload: Bytes::from(payload),
        headers: Vec::new(),
        record: None,
    };
    let problem = match (event_id, headers) {
        (Some(_), Ok(headers)) => {
            claimed.headers = headers;
            None
        }
        (None, _) => Some(format!("malformed record: event id `{event}` does not parse")),
        (_, Err(e)) => Some(format!("malformed record: headers are not valid JSON ({e})")),
    };
    (claimed, problem)
}
