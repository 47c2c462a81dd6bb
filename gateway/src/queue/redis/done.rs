//! The previous version's hand-off to history: each shard's `done` ZSET of finished delivery ids,
//! read back with each delivery's record and its event (`scripts/finished.lua`), and marked once
//! PostgreSQL holds them (`scripts/exported.lua`), which then shortens their TTLs. This version
//! appends finished deliveries to a stream instead ([`super::export`]); its writer drains what an
//! older gateway indexed here first, so an upgrade loses nothing on its way to history.

use std::time::Duration;

use bytes::Bytes;

use super::export::{finished_of, Parts, CHUNK};
use super::{RedisQueue, DONE};
use crate::id;
use crate::queue::{Finished, QueueError};

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

impl RedisQueue {
    /// Up to `limit` deliveries the previous version indexed in `shard`'s `done` set.
    pub(super) async fn finished_in_done(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut conn = self.core.conn.clone();
        let mut rows: Vec<Row> = Vec::new();
        while rows.len() < limit {
            let want = (limit - rows.len()).min(CHUNK);
            let chunk: Vec<Row> = self
                .core
                .finished
                .key(format!("{prefix}{DONE}"))
                .arg(&prefix)
                .arg(want)
                .arg(rows.len())
                .invoke_async(&mut conn)
                .await?;
            let short = chunk.len() < want;
            rows.extend(chunk);
            if short {
                break;
            }
        }
        let mut finished = Vec::with_capacity(rows.len());
        let mut gone = Vec::new();
        for (text, endpoint, state, attempts, updated, last_error, lapsed, log, record, older, headers, payload) in rows
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
            let parts = Parts {
                delivery,
                endpoint,
                state,
                attempts: attempts.parse().unwrap_or(0),
                lapsed: lapsed.parse().unwrap_or(0),
                updated: updated.parse().ok(),
                last_error,
                log,
                record,
                older: older.is_some(),
                headers,
                payload: payload.map(Bytes::from),
            };
            finished.push(finished_of(self, parts, None).await?);
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("ZREM").arg(format!("{prefix}{DONE}")).arg(&gone).query_async(&mut conn).await?;
        }
        Ok(finished)
    }

    /// Marks deliveries read from the `done` set as held by history (see `scripts/exported.lua`).
    pub(super) async fn exported_in_done(
        &self,
        shard: u32,
        done: &[&Finished],
        keep: Duration,
    ) -> Result<u64, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        // Succeeded records already expire after `queue.retention`: nothing to shorten past it.
        let keep = keep.as_secs().max(1);
        let keep = if keep >= self.core.retention_secs { 0 } else { keep };
        let mut conn = self.core.conn.clone();
        let mut marked = 0;
        for chunk in done.chunks(CHUNK) {
            let mut call = self.core.exported.key(format!("{prefix}{DONE}"));
            call.arg(&prefix).arg(keep);
            for f in chunk {
                call.arg(&f.delivery.id).arg(f.delivery.finished_at.map(|u| u.to_string()).unwrap_or_default());
            }
            marked += call.invoke_async::<u64>(&mut conn).await?;
        }
        Ok(marked)
    }
}
