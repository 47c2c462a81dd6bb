//! Searching Redis for deliveries by endpoint, state and creation time, with no index to keep.
//!
//! Redis keeps no list of deliveries by time, and this search adds none: an index would cost every
//! event bytes of memory and a write on the hot path, for a query an operator runs now and then.
//! Instead a search walks the event records' keys with `SCAN`, matching the ULID's leading
//! characters, which encode its creation time (`e:01JQ…*`), keeps the newest candidates, and reads
//! those newest first (each record's head with `GETRANGE`, not its body; each delivery's hash and
//! queue entry) until the page is full.
//!
//! So a page costs one pass over the keyspace (on a Cluster: one over each shard's node), paid by
//! Redis in short `SCAN` steps between deliveries, plus at most [`SEARCH_READ`] event reads. When
//! that many were read before the page filled, the page stops and says where
//! ([`Scanned::stopped_at`]); the next one resumes there. Events stored by a version before the
//! event record (`ev:` hashes) are not searched; they are looked up by id as before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ulid::Ulid;

use super::{record, RedisQueue, OLDER_QUEUE, QUEUE};
use crate::id;
use crate::queue::search::{Found, Scanned, Search};
use crate::queue::QueueError;

/// Most events one page reads before it stops and says where.
const SEARCH_READ: usize = 10_000;
/// Keys one `SCAN` step looks at.
const SCAN_COUNT: usize = 2_000;
/// Bytes of an event record read for its endpoints; a longer head is read whole.
const HEAD_BYTES: isize = 512;
/// Events read per round trip.
const CHUNK: usize = 256;

impl RedisQueue {
    /// Deliveries matching `search`, newest first; see [`crate::queue::Queue::search`].
    pub(super) async fn search_deliveries(&self, search: &Search) -> Result<Scanned, QueueError> {
        let (lo, hi) = search.id_range();
        let mut page = Scanned::default();
        if lo >= hi || search.limit == 0 {
            return Ok(page);
        }
        let (candidates, dropped) = self.newest_events(lo, hi).await?;
        for chunk in candidates.chunks(CHUNK) {
            let mut rows = Vec::new();
            for (shard, events) in by_shard(chunk, self.core.shards) {
                rows.extend(self.read_events(shard, &events, search, (lo, hi)).await?);
            }
            rows.sort_by_key(|row| Reverse(row.0));
            page.found.extend(rows.into_iter().map(|(_, found)| found).take(search.limit - page.found.len()));
            if page.found.len() >= search.limit {
                return Ok(page);
            }
        }
        // Older candidates were left out to bound the reads: resume below the oldest one read.
        if dropped {
            page.stopped_at = candidates.last().map(|event| id::delivery_of(*event, 1));
        }
        Ok(page)
    }

    /// The newest (at most [`SEARCH_READ`]) events whose ids fall in `lo..hi` (event ids, whose
    /// deliveries may), newest first, and whether older ones were left out.
    async fn newest_events(&self, lo: u128, hi: u128) -> Result<(Vec<Ulid>, bool), QueueError> {
        let core = &self.core;
        let lowest = lo & !0xFFFF;
        let time = time_prefix(lo, hi);
        // A single Redis: one pass with a pattern that spans every shard. A Cluster: one pass per
        // shard on the node that holds it (SCAN sees one node's keys).
        let passes: Vec<(u32, String)> = if core.conn.is_cluster() {
            (0..core.shards)
                .map(|shard| (shard, format!("{}e:{time}*", glob_escape(&core.shard_prefix(shard)))))
                .collect()
        } else {
            vec![(0, format!("{}:{{s*}}:e:{time}*", glob_escape(&core.prefix)))]
        };
        let mut newest = BinaryHeap::new();
        let mut dropped = false;
        let mut conn = core.conn.clone();
        for (shard, pattern) in passes {
            let slot_key = core.shard_prefix(shard);
            let mut cursor = 0;
            loop {
                let (next, keys) = conn.scan_step(&slot_key, cursor, &pattern, SCAN_COUNT).await?;
                for key in keys {
                    let Some(event) = self.event_of_key(&key) else { continue };
                    if event.0 < lowest || event.0 >= hi {
                        continue;
                    }
                    newest.push(Reverse(event));
                    if newest.len() > SEARCH_READ {
                        newest.pop();
                        dropped = true;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let mut events: Vec<Ulid> = newest.into_iter().map(|Reverse(event)| event).collect();
        events.sort_unstable_by(|a, b| b.cmp(a));
        // SCAN may return a key twice.
        events.dedup();
        Ok((events, dropped))
    }

    /// The event id an event record's key names: `<prefix>:{s<n>}:e:<ulid>`, in the shard its id
    /// belongs to.
    fn event_of_key(&self, key: &[u8]) -> Option<Ulid> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.core.prefix)?.strip_prefix(":{s")?;
        let (shard, ulid) = rest.split_once("}:e:")?;
        let event = Ulid::from_string(ulid).ok()?;
        let shard: u32 = shard.parse().ok()?;
        (event.0 & 0xFFFF == 0 && id::shard_of(event, self.core.shards) == shard).then_some(event)
    }

    /// The deliveries of `events` (of one shard) in `range` that match `search`, each with its id.
    async fn read_events(
        &self,
        shard: u32,
        events: &[Ulid],
        search: &Search,
        (lo, hi): (u128, u128),
    ) -> Result<Vec<(Ulid, Found)>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut conn = self.core.conn.clone();
        let mut heads = redis::pipe();
        for event in events {
            heads.cmd("GETRANGE").arg(format!("{prefix}e:{event}")).arg(0).arg(HEAD_BYTES - 1);
        }
        let heads: Vec<Vec<u8>> = heads.query_async(&mut conn).await?;
        // Each delivery in range, with the endpoint its event's record names.
        let mut wanted: Vec<(Ulid, String)> = Vec::new();
        for (event, head) in events.iter().zip(heads) {
            if head.is_empty() {
                continue; // expired since the scan
            }
            let endpoints = match record::decode_endpoints(&head)? {
                Some(endpoints) => endpoints,
                None => {
                    let whole: Option<Vec<u8>> =
                        redis::cmd("GET").arg(format!("{prefix}e:{event}")).query_async(&mut conn).await?;
                    match whole {
                        Some(whole) => record::decode(&whole)?.endpoints,
                        None => continue,
                    }
                }
            };
            for (k, endpoint) in endpoints.into_iter().enumerate().take(id::MAX_DELIVERIES_PER_EVENT) {
                let delivery = id::delivery_of(*event, k + 1);
                if (lo..hi).contains(&delivery.0) {
                    wanted.push((delivery, endpoint));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut states = redis::pipe();
        for (delivery, _) in &wanted {
            let name = id::format_delivery(*delivery);
            states
                .cmd("HMGET")
                .arg(format!("{prefix}d:{name}"))
                .arg(&["endpoint", "status", "attempts", "updated", "last_error"])
                .zscore(format!("{prefix}{QUEUE}"), &name)
                .zscore(format!("{prefix}{OLDER_QUEUE}"), &name);
        }
        type Row = ([Option<String>; 5], Option<f64>, Option<f64>);
        let rows: Vec<Row> = states.query_async(&mut conn).await?;
        let mut found = Vec::new();
        for ((delivery, recorded), ([endpoint, status, attempts, updated, last_error], queued, queued_older)) in
            wanted.into_iter().zip(rows)
        {
            let due = queued.or(queued_older);
            // No state recorded: pending while queued, otherwise gone.
            let Some(state) = status.or_else(|| due.map(|_| "pending".to_string())) else { continue };
            let endpoint = endpoint.unwrap_or(recorded);
            if !search.matches(&endpoint, &state) {
                continue;
            }
            let finished = state == "succeeded" || state == "dead";
            found.push((
                delivery,
                Found {
                    id: id::format_delivery(delivery),
                    event_id: id::format_event(id::event_of(delivery)),
                    endpoint,
                    next_attempt_at: due.filter(|_| state == "pending").map(|at| at as u64),
                    finished_at: updated.and_then(|at| at.parse().ok()).filter(|_| finished),
                    attempts_made: attempts.and_then(|a| a.parse().ok()).unwrap_or(0),
                    created_at: delivery.timestamp_ms(),
                    last_error: last_error.filter(|e| !e.is_empty()),
                    state,
                },
            ));
        }
        Ok(found)
    }
}

/// `events` grouped by shard (each group keeps their order).
fn by_shard(events: &[Ulid], shards: u32) -> BTreeMap<u32, Vec<Ulid>> {
    let mut groups: BTreeMap<u32, Vec<Ulid>> = BTreeMap::new();
    for event in events {
        groups.entry(id::shard_of(*event, shards)).or_default().push(*event);
    }
    groups
}

/// The leading characters every ULID created in the time range of ids `lo..hi` shares (its first
/// ten encode the ms), for a `SCAN` pattern.
fn time_prefix(lo: u128, hi: u128) -> String {
    let first = Ulid(lo).to_string();
    let last = Ulid(hi.saturating_sub(1)).to_string();
    first.chars().zip(last.chars()).take(10).take_while(|(a, b)| a == b).map(|(a, _)| a).collect()
}

/// `text` with the characters `SCAN`'s glob gives a meaning to escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_holds_what_every_ulid_of_the_range_starts_with() {
        let ms = 1_764_700_000_000u64;
        let (lo, hi) = (u128::from(ms) << 80, u128::from(ms + 60_000) << 80);
        let prefix = time_prefix(lo, hi);
        assert!(prefix.len() >= 5, "{prefix}");
        for at in [ms, ms + 1, ms + 30_000, ms + 59_999] {
            assert!(Ulid::from_parts(at, u128::MAX).to_string().starts_with(&prefix), "{at}");
            assert!(Ulid::from_parts(at, 0).to_string().starts_with(&prefix), "{at}");
        }
        assert_eq!(time_prefix(0, u128::MAX), "", "no range: every key");
        assert_eq!(time_prefix(lo, lo + 1).len(), 10, "one ms: its ten characters");
    }

    #[test]
    fn glob_characters_in_a_prefix_are_matched_as_they_are() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("sluice"), "sluice");
    }
}
