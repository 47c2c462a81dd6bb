//! Deliveries and events as the admin API shows them, read from Redis: from this version's event
//! record ([`super::record`]) and delivery hashes, or from an older version's hashes. A delivery
//! whose first attempt succeeded before anything gave it a hash has none: neither queued nor
//! hashed, its attempt log (one success record) is what says it succeeded ([`Logged`]).

use bytes::Bytes;
use redis::aio::ConnectionLike;
use ulid::Ulid;

use super::{record, RedisQueue, OLDER_QUEUE, QUEUE};
use crate::id;
use crate::queue::{AttemptRecord, DeliverySummary, DeliveryView, EventView, QueueError};

/// A delivery hash's endpoint and status, each if set.
type EndpointAndState = (Option<String>, Option<String>);

/// What the view reads of a delivery's hash.
const FIELDS: [&str; 7] = ["endpoint", "status", "attempts", "updated", "last_error", "log", "lapsed"];

impl RedisQueue {
    /// A delivery with its attempt log; see [`crate::queue::Queue::delivery`].
    pub(super) async fn view_delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(delivery, core.shards));
        let name = id::format_delivery(delivery);
        let mut conn = core.conn.clone();
        let (fields, log_string, queued, queued_older): (
            Vec<Option<String>>,
            Option<String>,
            Option<f64>,
            Option<f64>,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{prefix}d:{name}"))
            .arg(&FIELDS)
            .get(format!("{prefix}d:{name}:log"))
            .zscore(format!("{prefix}{QUEUE}"), &name)
            .zscore(format!("{prefix}{OLDER_QUEUE}"), &name)
            .query_async(&mut conn)
            .await?;
        let [endpoint, status, attempts_made, updated, last_error, log, lapsed] =
            <[Option<String>; 7]>::try_from(fields)
                .map_err(|_| QueueError::Corrupt("HMGET returned the wrong number of fields".into()))?;
        let due = queued.or(queued_older);
        // A success that left no hash: its log says so.
        let logged = match (&status, due) {
            (None, None) => log_string.as_deref().and_then(Logged::read),
            _ => None,
        };
        // No state recorded: pending while queued, succeeded if logged so, otherwise gone.
        let Some(status) = status
            .or_else(|| due.map(|_| "pending".to_string()))
            .or_else(|| logged.as_ref().map(|_| "succeeded".to_string()))
        else {
            return Ok(None);
        };
        // Not claimed yet: its endpoint is in the event record.
        let endpoint = match endpoint {
            Some(endpoint) => endpoint,
            None => {
                let event = id::event_of(delivery);
                let Some(record) = read_record(&mut conn, &prefix, event).await? else { return Ok(None) };
                let k = id::number_of(delivery);
                let Some(endpoint) = record.endpoints.get(k.wrapping_sub(1)) else { return Ok(None) };
                endpoint.clone()
            }
        };
        // The log string, after what an older version kept in the hash's `log` field.
        let attempts = attempts_of(&format!("{}\n{}", log.unwrap_or_default(), log_string.unwrap_or_default()))?;

        Ok(Some(DeliveryView {
            id: name,
            event_id: id::format_event(id::event_of(delivery)),
            endpoint,
            next_attempt_at: due.filter(|_| status == "pending").map(|d| d as u64),
            state: status,
            attempts_made: attempts_made
                .and_then(|a| a.parse().ok())
                .or(logged.as_ref().map(|l| l.attempts))
                .unwrap_or(0),
            lapsed_leases: lapsed.and_then(|a| a.parse().ok()).unwrap_or(0),
            created_at: Some(delivery.timestamp_ms()),
            updated_at: updated.and_then(|c| c.parse().ok()).or(logged.map(|l| l.finished_at)),
            last_error: last_error.filter(|e| !e.is_empty()),
            attempts,
        }))
    }

    /// An event with its deliveries' states; see [`crate::queue::Queue::event`].
    pub(super) async fn view_event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(event, core.shards));
        let mut conn = core.conn.clone();
        let (source, event_type, headers, payload, endpoints) = match read_record(&mut conn, &prefix, event).await? {
            Some(record) => (record.source, record.event_type, record.headers, record.body, record.endpoints),
            None => match read_older_event(&mut conn, &prefix, event).await? {
                Some((source, event_type, headers, payload, count)) => {
                    let headers = serde_json::from_str(if headers.is_empty() { "[]" } else { &headers })?;
                    (source, event_type, headers, payload, vec![String::new(); count.unwrap_or(0)])
                }
                None => return Ok(None),
            },
        };
        let ids: Vec<Ulid> =
            (1..=endpoints.len().min(id::MAX_DELIVERIES_PER_EVENT)).map(|k| id::delivery_of(event, k)).collect();
        let mut deliveries = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for delivery in &ids {
                let name = id::format_delivery(*delivery);
                pipe.cmd("HMGET")
                    .arg(format!("{prefix}d:{name}"))
                    .arg(&["endpoint", "status"])
                    .zscore(format!("{prefix}{QUEUE}"), &name)
                    .zscore(format!("{prefix}{OLDER_QUEUE}"), &name)
                    .exists(format!("{prefix}d:{name}:log"));
            }
            let rows: Vec<(EndpointAndState, Option<f64>, Option<f64>, bool)> = pipe.query_async(&mut conn).await?;
            for ((delivery, recorded), ((endpoint, state), queued, queued_older, logged)) in
                ids.iter().zip(endpoints).zip(rows)
            {
                let pending = (queued.is_some() || queued_older.is_some()).then(|| "pending".to_string());
                // Neither hashed nor queued, but logged: a success that left no hash.
                let succeeded = logged.then(|| "succeeded".to_string());
                deliveries.push(DeliverySummary {
                    id: id::format_delivery(*delivery),
                    endpoint: endpoint.unwrap_or(recorded),
                    state: Some(state.or(pending).or(succeeded).unwrap_or_else(|| "expired".to_string())),
                });
            }
        }
        Ok(Some(EventView {
            id: id::format_event(event),
            source,
            event_type,
            received_at: Some(event.timestamp_ms()),
            headers,
            payload: Bytes::from(payload),
            deliveries,
        }))
    }
}

/// A delivery whose success left no hash, as its attempt log tells it: attempts made, and when it
/// finished (the last attempt's start plus its latency).
#[derive(Debug, PartialEq)]
pub(super) struct Logged {
    pub attempts: u32,
    pub finished_at: u64,
}

impl Logged {
    /// Reads a log whose every record is an attempt and whose last one succeeded; `None` for any
    /// other (a log that ends otherwise belongs to a delivery with a hash).
    pub(super) fn read(log: &str) -> Option<Logged> {
        let records: Vec<AttemptRecord> =
            log.lines().filter(|line| !line.is_empty()).map(serde_json::from_str).collect::<Result<_, _>>().ok()?;
        let last = records.last().filter(|r| r.outcome == "success")?;
        Some(Logged { attempts: records.len() as u32, finished_at: last.ended_at() })
    }
}

/// The attempt records of an attempt log (one JSON record per line).
fn attempts_of(log: &str) -> Result<Vec<serde_json::Value>, QueueError> {
    Ok(log.lines().filter(|line| !line.is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?)
}

/// The event record of `event`, if stored.
async fn read_record(
    conn: &mut impl ConnectionLike,
    prefix: &str,
    event: Ulid,
) -> Result<Option<record::EventRecord>, QueueError> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(record::key(prefix, event)).query_async(conn).await?;
    bytes.map(|bytes| record::decode(&bytes)).transpose()
}

/// An event as an older version stored it: source, type, headers JSON, body and delivery count.
type OlderEvent = (String, String, String, Vec<u8>, Option<usize>);

/// An event stored by an older version: a hash with its headers and body in a `:b` string beside
/// it (older still: in the hash).
async fn read_older_event(
    conn: &mut impl ConnectionLike,
    prefix: &str,
    event: Ulid,
) -> Result<Option<OlderEvent>, QueueError> {
    let name = id::format_event(event);
    type Fields = (Option<String>, Option<String>, Option<String>, Option<Vec<u8>>, Option<usize>);
    let ((source, event_type, headers, payload, count), body): (Fields, Option<Vec<u8>>) = redis::pipe()
        .cmd("HMGET")
        .arg(format!("{prefix}ev:{name}"))
        .arg(&["source", "type", "headers", "payload", "n"])
        .get(format!("{prefix}ev:{name}:b"))
        .query_async(conn)
        .await?;
    // Split at the first newline: headers, then body.
    let (headers, payload) = match body {
        Some(body) => match body.iter().position(|&b| b == b'\n') {
            Some(nl) => (Some(String::from_utf8_lossy(&body[..nl]).into_owned()), Some(body[nl + 1..].to_vec())),
            None => (headers, Some(body)),
        },
        None => (headers, payload),
    };
    let (Some(source), Some(event_type)) = (source, event_type) else {
        return Ok(None);
    };
    Ok(Some((source, event_type, headers.unwrap_or_default(), payload.unwrap_or_default(), count)))
}
