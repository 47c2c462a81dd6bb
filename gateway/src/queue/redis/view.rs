//! Deliveries and events as the admin API shows them, read from Redis.

use bytes::Bytes;
use ulid::Ulid;

use super::RedisQueue;
use crate::id;
use crate::queue::{DeliverySummary, DeliveryView, EventView, QueueError};

impl RedisQueue {
    /// A delivery with its attempt log; see [`crate::queue::Queue::delivery`].
    pub(super) async fn view_delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(delivery, core.shards));
        let name = id::format_delivery(delivery);
        let mut conn = core.conn.clone();
        let (fields, log_string, due): (Vec<Option<String>>, Option<String>, Option<f64>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{prefix}d:{name}"))
            .arg(&["endpoint", "status", "attempts", "updated", "last_error", "log", "lapsed"])
            .get(format!("{prefix}d:{name}:log"))
            .zscore(format!("{prefix}due"), &name)
            .query_async(&mut conn)
            .await?;
        let [endpoint, status, attempts_made, updated, last_error, log, lapsed] =
            <[Option<String>; 7]>::try_from(fields)
                .map_err(|_| QueueError::Corrupt("HMGET returned the wrong number of fields".into()))?;
        let (Some(endpoint), Some(status)) = (endpoint, status) else {
            return Ok(None);
        };
        // The log string, after what an older version kept in the hash's `log` field.
        let attempts = log
            .as_deref()
            .unwrap_or_default()
            .lines()
            .chain(log_string.as_deref().unwrap_or_default().lines())
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
            lapsed_leases: lapsed.and_then(|a| a.parse().ok()).unwrap_or(0),
            created_at: Some(delivery.timestamp_ms()),
            updated_at: updated.and_then(|c| c.parse().ok()),
            last_error: last_error.filter(|e| !e.is_empty()),
            attempts,
        }))
    }

    /// An event with its deliveries' states; see [`crate::queue::Queue::event`].
    pub(super) async fn view_event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        let core = &self.core;
        let prefix = core.shard_prefix(id::shard_of(event, core.shards));
        let name = id::format_event(event);
        let mut conn = core.conn.clone();
        type Fields = (Option<String>, Option<String>, Option<String>, Option<Vec<u8>>, Option<usize>);
        let ((source, event_type, headers, payload, count), body): (Fields, Option<Vec<u8>>) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{prefix}ev:{name}"))
            .arg(&["source", "type", "headers", "payload", "n"])
            .get(format!("{prefix}ev:{name}:b"))
            .query_async(&mut conn)
            .await?;
        // Headers and body live in the `:b` string, split at the first newline; a record of an
        // older version keeps both in the hash.
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
