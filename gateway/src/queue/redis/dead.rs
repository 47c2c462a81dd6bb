//! Dead letters on Redis: listed newest first across shards, replayed by id or all of an endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use ulid::Ulid;

use super::{RedisQueue, DONE, QUEUE};
use crate::id;
use crate::queue::{DeadCursor, DeadLetter, QueueError};

/// Most dead letters one step of a replay-all looks at.
const REPLAY_CHUNK: usize = 1000;

impl RedisQueue {
    /// Dead letters newest first; see [`crate::queue::Queue::dead_letters`].
    pub(super) async fn list_dead(
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
                // No record: it expired (the index entry goes with the next claim's trim).
                let Some(ep) = ep else { continue };
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

    /// Replays dead letters by id; see [`crate::queue::Queue::replay`].
    pub(super) async fn replay_ids(&self, deliveries: &[Ulid], spacing: Duration) -> Result<Vec<String>, QueueError> {
        let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for delivery in deliveries {
            by_shard.entry(id::shard_of(*delivery, self.core.shards)).or_default().push(id::format_delivery(*delivery));
        }
        let mut replayed = Vec::new();
        for (shard, ids) in by_shard {
            let offset = replayed.len() as u64;
            replayed.extend(self.replay_in_shard(shard, &ids, spacing, offset).await?);
        }
        Ok(replayed)
    }

    /// Replays `ids` of one shard, spaced on from `offset` spacings from now.
    async fn replay_in_shard(
        &self,
        shard: u32,
        ids: &[String],
        spacing: Duration,
        offset: u64,
    ) -> Result<Vec<String>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = self.core.shard_prefix(shard);
        let mut call = self.core.replay.key(format!("{prefix}{QUEUE}"));
        call.key(format!("{prefix}dead"))
            .key(format!("{prefix}{DONE}"))
            .arg(&prefix)
            .arg(spacing.as_millis() as u64)
            .arg(offset);
        for id in ids {
            call.arg(id);
        }
        let mut conn = self.core.conn.clone();
        Ok(call.invoke_async(&mut conn).await?)
    }

    /// Replays every dead letter of `endpoint` buried until now; see
    /// [`crate::queue::Queue::replay_endpoint`]. Walks each shard's dead letters oldest first, a
    /// chunk at a time, always whole milliseconds (one settle call buries many in the same one),
    /// so the burial time alone is a cursor that skips nothing.
    pub(super) async fn replay_all_of(&self, endpoint: &str, spacing: Duration) -> Result<u64, QueueError> {
        let mut conn = self.core.conn.clone();
        // Burial times are Redis' clock: stop at its now, so what is buried meanwhile waits.
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let until = super::clock::time_ms(secs, micros);
        let mut replayed = 0u64;
        for shard in 0..self.core.shards {
            let dead = format!("{}dead", self.core.shard_prefix(shard));
            let mut after: Option<u64> = None;
            loop {
                let min = after.map_or_else(|| "-inf".to_string(), |at| format!("({at}"));
                let mut page: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&dead)
                    .arg(&min)
                    .arg(until)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(REPLAY_CHUNK)
                    .query_async(&mut conn)
                    .await?;
                let Some(&(_, last)) = page.last() else { break };
                let full = page.len() == REPLAY_CHUNK;
                if full {
                    // The rest of the last millisecond, so the next step can start after it.
                    let same: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
                        .arg(&dead)
                        .arg(last)
                        .arg(last)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await?;
                    let known: std::collections::HashSet<String> = page.iter().map(|(id, _)| id.clone()).collect();
                    page.extend(same.into_iter().filter(|(id, _)| !known.contains(id)));
                }
                let mut pipe = redis::pipe();
                for (id, _) in &page {
                    pipe.hget(format!("{}d:{id}", self.core.shard_prefix(shard)), "endpoint");
                }
                let endpoints: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                let picked: Vec<String> = page
                    .into_iter()
                    .zip(endpoints)
                    .filter(|(_, ep)| ep.as_deref() == Some(endpoint))
                    .map(|((id, _), _)| id)
                    .collect();
                replayed += self.replay_in_shard(shard, &picked, spacing, replayed).await?.len() as u64;
                if !full {
                    break;
                }
                after = Some(last);
            }
        }
        Ok(replayed)
    }
}
