//! Searching Redis for deliveries by endpoint, state and creation time, with no index to keep.
//!
//! - **Open deliveries** (a search for `pending` or `paused`, or one with `open_only`, which the
//!   admin API sets when history holds the finished ones) are listed from the sorted sets that
//!   hold them: each shard's queue (and the older layout's), and the parked sets of the endpoints
//!   its `off` and `gone` hashes name. A page costs in proportion to the deliveries waiting.
//! - **Every delivery** (finished ones too, without history): Redis keeps no list of them by time,
//!   and this search adds none. An index would cost every event bytes of memory and a write on the
//!   hot path, for a query an operator runs now and then. Instead the search walks the event
//!   records' keys with `SCAN`, matching the ULID's leading characters, which encode its creation
//!   time (`e:01JQ…*`), keeps the newest candidates, and reads those newest first (each record's
//!   head with `GETRANGE`, not its body; each delivery's hash and queue entry) until the page is
//!   full. A page costs one pass over the keyspace (on a Cluster: one over each shard's node),
//!   paid by Redis in short `SCAN` steps between deliveries.
//!
//! Either way a page reads at most about [`SEARCH_READ`] records; when that many were read before
//! the page filled, it stops and says where ([`Scanned::stopped_at`]), and the next one resumes
//! there. Events stored by a version before the event record (`ev:` hashes) are not searched; they
//! are looked up by id as before.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ulid::Ulid;

use super::view::Logged;
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
        if lo >= hi || search.limit == 0 {
            return Ok(Scanned::default());
        }
        if search.wants_open_only() {
            return self.search_open(search, (lo, hi)).await;
        }
        let mut page = Scanned::default();
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
        let endpoints = endpoints_of(&mut conn, &prefix, events).await?;
        // Each delivery in range, with the endpoint its event's record names.
        let mut wanted: Vec<(Ulid, String)> = Vec::new();
        for (event, endpoints) in endpoints {
            for (k, endpoint) in endpoints.into_iter().enumerate().take(id::MAX_DELIVERIES_PER_EVENT) {
                let delivery = id::delivery_of(event, k + 1);
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
            state_reads(&mut states, &prefix, *delivery);
        }
        let rows: Vec<Row> = states.query_async(&mut conn).await?;
        let ids: Vec<Ulid> = wanted.iter().map(|(delivery, _)| *delivery).collect();
        let logged = logged_of(&mut conn, &prefix, &ids, &rows).await?;
        Ok(wanted
            .into_iter()
            .zip(rows.into_iter().zip(logged))
            .filter_map(|((delivery, recorded), (row, logged))| found_in(delivery, Some(recorded), row, logged, search))
            .collect())
    }

    /// See [`crate::queue::Queue::states_of`]: one pipeline per shard.
    pub(super) async fn states_in(&self, deliveries: &[Ulid]) -> Result<Vec<Option<String>>, QueueError> {
        let mut states = vec![None; deliveries.len()];
        let mut conn = self.core.conn.clone();
        let groups = super::batch::by_shard(deliveries.iter().map(|d| id::shard_of(*d, self.core.shards)));
        for (shard, places) in groups {
            let prefix = self.core.shard_prefix(shard);
            let mut pipe = redis::pipe();
            for &at in &places {
                state_reads(&mut pipe, &prefix, deliveries[at]);
            }
            let rows: Vec<Row> = pipe.query_async(&mut conn).await?;
            let ids: Vec<Ulid> = places.iter().map(|&at| deliveries[at]).collect();
            let logged = logged_of(&mut conn, &prefix, &ids, &rows).await?;
            for ((at, ([_, status, ..], queued, queued_older)), logged) in places.into_iter().zip(rows).zip(logged) {
                // No state recorded: pending while queued, succeeded if its log says so (a success
                // that left no hash), otherwise not held.
                states[at] = status
                    .or_else(|| queued.or(queued_older).map(|_| "pending".to_string()))
                    .or_else(|| logged.map(|_| "succeeded".to_string()));
            }
        }
        Ok(states)
    }

    /// Pending and parked deliveries matching `search`, newest first, listed from the sorted sets
    /// that hold them (each shard's queue, and the parked sets of the endpoints its `off` and
    /// `gone` hashes name) instead of a pass over the keyspace: what a search costs when history
    /// holds the finished deliveries, or when only open ones are asked for.
    async fn search_open(&self, search: &Search, (lo, hi): (u128, u128)) -> Result<Scanned, QueueError> {
        let mut candidates: Vec<Ulid> = Vec::new();
        let mut conn = self.core.conn.clone();
        for shard in 0..self.core.shards {
            let prefix = self.core.shard_prefix(shard);
            let mut sets = Vec::new();
            if search.state.as_deref() != Some("paused") {
                sets.extend([format!("{prefix}{QUEUE}"), format!("{prefix}{OLDER_QUEUE}")]);
            }
            if search.state.as_deref() != Some("pending") {
                let (off, gone): (Vec<String>, Vec<String>) = redis::pipe()
                    .hkeys(format!("{prefix}off"))
                    .hkeys(format!("{prefix}gone"))
                    .query_async(&mut conn)
                    .await?;
                let mut names: Vec<String> = off.into_iter().chain(gone).collect();
                names.sort();
                names.dedup();
                sets.extend(names.iter().map(|name| format!("{prefix}paused:{name}")));
            }
            for set in sets {
                let mut cursor = 0u64;
                loop {
                    let (next, members): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
                        .arg(&set)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut conn)
                        .await?;
                    candidates.extend(
                        members
                            .iter()
                            .filter_map(|(member, _)| id::parse_delivery(member))
                            .filter(|d| (lo..hi).contains(&d.0)),
                    );
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        let mut page = Scanned::default();
        for chunk in candidates.chunks(CHUNK).take(SEARCH_READ.div_ceil(CHUNK)) {
            let mut rows = Vec::new();
            for (shard, ids) in by_shard(chunk, self.core.shards) {
                rows.extend(self.read_deliveries(shard, &ids, search).await?);
            }
            rows.sort_by_key(|row| Reverse(row.0));
            page.found.extend(rows.into_iter().map(|(_, found)| found).take(search.limit - page.found.len()));
            if page.found.len() >= search.limit {
                return Ok(page);
            }
            page.stopped_at = chunk.last().copied();
        }
        // Every candidate was read: nothing older is left.
        if candidates.len() <= SEARCH_READ.div_ceil(CHUNK) * CHUNK {
            page.stopped_at = None;
        }
        Ok(page)
    }

    /// The deliveries `ids` (of one shard) that match `search`, each with its id; the endpoint of
    /// one never claimed is read from its event's record.
    async fn read_deliveries(
        &self,
        shard: u32,
        ids: &[Ulid],
        search: &Search,
    ) -> Result<Vec<(Ulid, Found)>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut conn = self.core.conn.clone();
        let mut states = redis::pipe();
        for delivery in ids {
            state_reads(&mut states, &prefix, *delivery);
        }
        let rows: Vec<Row> = states.query_async(&mut conn).await?;
        // Events whose record names an endpoint the hash does not have yet.
        let mut unclaimed: Vec<Ulid> =
            ids.iter().zip(&rows).filter(|(_, row)| row.0[0].is_none()).map(|(d, _)| id::event_of(*d)).collect();
        unclaimed.dedup();
        let endpoints = endpoints_of(&mut conn, &prefix, &unclaimed).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .filter_map(|(delivery, row)| {
                let recorded = endpoints
                    .get(&id::event_of(*delivery))
                    .and_then(|names| names.get(id::number_of(*delivery).wrapping_sub(1)))
                    .cloned();
                // Only open deliveries are searched here: a success that left no hash is not one.
                found_in(*delivery, recorded, row, None, search)
            })
            .collect())
    }
}

/// The endpoint of each delivery of `events` (of the shard `prefix` names), by event, out of their
/// records' heads (`GETRANGE`, so bodies are not read; a longer head is read whole). An event
/// whose record is gone is left out.
async fn endpoints_of(
    conn: &mut super::conn::Conn,
    prefix: &str,
    events: &[Ulid],
) -> Result<BTreeMap<Ulid, Vec<String>>, QueueError> {
    let mut endpoints = BTreeMap::new();
    if events.is_empty() {
        return Ok(endpoints);
    }
    let mut heads = redis::pipe();
    for event in events {
        heads.cmd("GETRANGE").arg(record::key(prefix, event)).arg(0).arg(HEAD_BYTES - 1);
    }
    let heads: Vec<Vec<u8>> = heads.query_async(conn).await?;
    for (event, head) in events.iter().zip(heads) {
        if head.is_empty() {
            continue; // expired since it was listed
        }
        let names = match record::decode_endpoints(&head)? {
            Some(names) => names,
            None => {
                let whole: Option<Vec<u8>> =
                    redis::cmd("GET").arg(record::key(prefix, event)).query_async(conn).await?;
                match whole {
                    Some(whole) => record::decode(&whole)?.endpoints,
                    None => continue,
                }
            }
        };
        endpoints.insert(*event, names);
    }
    Ok(endpoints)
}

/// What a search reads of a delivery: its hash's endpoint, status, attempts, updated and last
/// error, and its scores in the queue and the older queue.
type Row = ([Option<String>; 5], Option<f64>, Option<f64>);

/// Adds the reads of a [`Row`] for `delivery` to `pipe`.
fn state_reads(pipe: &mut redis::Pipeline, prefix: &str, delivery: Ulid) {
    let name = id::format_delivery(delivery);
    pipe.cmd("HMGET")
        .arg(format!("{prefix}d:{name}"))
        .arg(&["endpoint", "status", "attempts", "updated", "last_error"])
        .zscore(format!("{prefix}{QUEUE}"), &name)
        .zscore(format!("{prefix}{OLDER_QUEUE}"), &name);
}

/// The success each of `deliveries` (of the shard `prefix` names) left in its log alone, for those
/// whose `rows` show neither a state nor a queue entry, as the views read them (their logs are read
/// in one round trip).
async fn logged_of(
    conn: &mut super::conn::Conn,
    prefix: &str,
    deliveries: &[Ulid],
    rows: &[Row],
) -> Result<Vec<Option<Logged>>, QueueError> {
    let mut logged: Vec<Option<Logged>> = deliveries.iter().map(|_| None).collect();
    let unsettled: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, ([_, status, ..], queued, queued_older))| {
            status.is_none() && queued.is_none() && queued_older.is_none()
        })
        .map(|(at, _)| at)
        .collect();
    if unsettled.is_empty() {
        return Ok(logged);
    }
    let mut pipe = redis::pipe();
    for &at in &unsettled {
        pipe.get(format!("{prefix}d:{}:log", id::format_delivery(deliveries[at])));
    }
    let logs: Vec<Option<String>> = pipe.query_async(conn).await?;
    for (at, log) in unsettled.into_iter().zip(logs) {
        logged[at] = log.as_deref().and_then(Logged::read);
    }
    Ok(logged)
}

/// `delivery` as a search result, if it is still held and matches `search`; `recorded` is the
/// endpoint its event's record names, `logged` the success its log alone tells of.
fn found_in(
    delivery: Ulid,
    recorded: Option<String>,
    row: Row,
    logged: Option<Logged>,
    search: &Search,
) -> Option<(Ulid, Found)> {
    let ([endpoint, status, attempts, updated, last_error], queued, queued_older) = row;
    let due = queued.or(queued_older);
    // No state recorded: pending while queued, succeeded if its log says so, otherwise gone.
    let state = status
        .or_else(|| due.map(|_| "pending".to_string()))
        .or_else(|| logged.as_ref().map(|_| "succeeded".to_string()))?;
    let endpoint = endpoint.or(recorded)?;
    if !search.matches(&endpoint, &state) {
        return None;
    }
    let finished = state == "succeeded" || state == "dead";
    let found = Found {
        id: id::format_delivery(delivery),
        event_id: id::format_event(id::event_of(delivery)),
        endpoint,
        next_attempt_at: due.filter(|_| state == "pending").map(|at| at as u64),
        finished_at: updated
            .and_then(|at| at.parse().ok())
            .or(logged.as_ref().map(|l| l.finished_at))
            .filter(|_| finished),
        attempts_made: attempts.and_then(|a| a.parse().ok()).or(logged.map(|l| l.attempts)).unwrap_or(0),
        created_at: delivery.timestamp_ms(),
        last_error: last_error.filter(|e| !e.is_empty()),
        state,
    };
    Some((delivery, found))
}

/// `ids` grouped by shard (each group keeps their order).
fn by_shard(ids: &[Ulid], shards: u32) -> BTreeMap<u32, Vec<Ulid>> {
    let mut groups: BTreeMap<u32, Vec<Ulid>> = BTreeMap::new();
    for one in ids {
        groups.entry(id::shard_of(*one, shards)).or_default().push(*one);
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
