//! Finished deliveries on their way to history (`[history]`): the settle call that finishes
//! deliveries appends them, whole, to its shard's `history:v2` stream, one entry per call
//! (`scripts/settle.lua`), and counts them beside it; the writer reads a batch of entries, and
//! deletes them once PostgreSQL committed them (`scripts/history_done.lua`). Reading and marking
//! touch no per-delivery key. One gateway at a time reads a shard (a lease, `scripts/writer.lua`):
//! the others skip it until the lease runs out. What the previous versions left is drained first:
//! their `done` index ([`super::done`]), then their `history` stream of one entry per delivery.
//!
//! Entry handles ([`Finished::entry`]): `<ms>-<seq>` for an entry of the previous version's
//! stream, `v2 <ms>-<seq> <deliveries>` for one of this version's.

use std::time::Duration;

use bytes::Bytes;
use ulid::Ulid;

use super::{record, RedisQueue, DONE, HISTORY, HISTORY_V2, HISTORY_V2_COUNT};
use crate::id;
use crate::queue::{AttemptList, EventView, Finished, FinishedDelivery, Own, QueueError};

/// Most deliveries one call reads or marks. Redis serves one call at a time, so a writer's batch
/// (`history.batch`) is read and marked in calls this size: none holds up the hot path (enqueues,
/// claims, settlements) for long.
pub(super) const CHUNK: usize = 100;

/// How long a shard stays with the gateway that last wrote it: past this without a round, another
/// gateway's writer takes it over.
const WRITER_LEASE: Duration = Duration::from_secs(30);

/// What history keeps of a finished delivery, as Redis handed it over.
pub(super) struct Parts {
    pub delivery: Ulid,
    pub endpoint: String,
    pub state: String,
    pub attempts: u32,
    pub lapsed: u32,
    pub updated: Option<u64>,
    pub last_error: String,
    /// The attempt log, one JSON record per line.
    pub log: String,
    /// This version's event record, when it was there.
    pub record: Option<Vec<u8>>,
    /// Whether the event is an older version's hash (read from Redis as the admin API reads it).
    pub older: bool,
    pub headers: Option<String>,
    pub payload: Option<Bytes>,
}

/// A finished delivery for history from what Redis handed over; `entry`: its stream entry.
pub(super) async fn finished_of(
    queue: &RedisQueue,
    parts: Parts,
    entry: Option<String>,
) -> Result<Finished, QueueError> {
    let event = id::event_of(parts.delivery);
    let (event_view, only) = match (parts.record, parts.older) {
        (Some(record), _) => {
            let record = record::decode(&record)?;
            let only = record.endpoints.len() == 1;
            let view = EventView {
                id: id::format_event(event),
                source: record.source,
                event_type: record.event_type,
                received_at: Some(event.timestamp_ms()),
                headers: record.headers,
                payload: Bytes::from(record.body),
                deliveries: Vec::new(),
            };
            (Some(view), only)
        }
        (None, true) => {
            let view = queue.view_event(event).await?;
            let only = view.as_ref().is_some_and(|v| v.deliveries.len() == 1);
            (view, only)
        }
        (None, false) => (None, false),
    };
    Ok(Finished {
        delivery: FinishedDelivery {
            id: id::format_delivery(parts.delivery),
            event_id: id::format_event(event),
            endpoint: parts.endpoint,
            state: parts.state,
            attempts_made: parts.attempts,
            lapsed_leases: parts.lapsed,
            created_at: parts.delivery.timestamp_ms(),
            finished_at: parts.updated,
            last_error: Some(parts.last_error).filter(|e| !e.is_empty()),
            attempts: AttemptList::from_lines(&parts.log)?,
        },
        event: event_view,
        only,
        own: Own { headers: parts.headers, payload: parts.payload },
        entry,
    })
}

/// [`finished_of`], or `None` (logged) when what Redis holds of the delivery cannot be read: the
/// batch goes on without it, where an error would hold up every other delivery's way to history,
/// round after round (PostgreSQL would refuse the whole batch for one bad attempt log, too).
async fn readable(queue: &RedisQueue, parts: Parts, entry: Option<String>) -> Result<Option<Finished>, QueueError> {
    let delivery = id::format_delivery(parts.delivery);
    match finished_of(queue, parts, entry).await {
        Ok(finished) => Ok(Some(finished)),
        Err(error @ (QueueError::Corrupt(_) | QueueError::Json(_))) => {
            tracing::error!(%delivery, %error, "A finished delivery whose record cannot be read was left out of history.");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// A stream entry's id (`<ms>-<seq>`) as numbers, ordered as Redis orders them.
fn entry_id(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The stream id right after `(ms, seq)`: the `MINID` that trims up to and including it.
fn after((ms, seq): (u64, u64)) -> String {
    if seq == u64::MAX {
        format!("{}-0", ms + 1)
    } else {
        format!("{ms}-{}", seq + 1)
    }
}

/// An entry's fields, in the order Redis lists them: (name, value).
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The value of the field `name`, taken out of `fields`.
fn take(fields: &mut Fields, name: &str) -> Option<Vec<u8>> {
    let at = fields.iter().position(|(n, _)| n == name.as_bytes())?;
    Some(fields.swap_remove(at).1)
}

/// The entries of an XRANGE reply, walked as Redis sent them rather than converted to a map per
/// entry (which allocated and hashed every field name, for every finished delivery).
fn entries_of(reply: redis::Value) -> Result<Vec<(String, Fields)>, QueueError> {
    use redis::Value;
    let unexpected = |what: &Value| QueueError::Corrupt(format!("history stream: unexpected XRANGE reply {what:?}"));
    let Value::Array(entries) = reply else { return Err(unexpected(&reply)) };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut pair) = entry else { return Err(unexpected(&entry)) };
        let (Some(Value::Array(flat)), Some(Value::BulkString(id)), None) = (pair.pop(), pair.pop(), pair.pop()) else {
            return Err(QueueError::Corrupt("history stream: an XRANGE entry is not an id and its fields".into()));
        };
        let id = String::from_utf8(id).map_err(|e| QueueError::Corrupt(format!("history stream entry id: {e}")))?;
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) = (flat.next(), flat.next()) {
            fields.push((name, value));
        }
        out.push((id, fields));
    }
    Ok(out)
}

/// Up to `count` entries of `stream` after `after` (`-` for its head, `(<id>` past an entry).
async fn read_after(
    conn: &mut super::conn::Conn,
    stream: &str,
    after: &str,
    count: usize,
) -> Result<Vec<(String, Fields)>, QueueError> {
    let reply: redis::Value =
        redis::cmd("XRANGE").arg(stream).arg(after).arg("+").arg("COUNT").arg(count).query_async(conn).await?;
    entries_of(reply)
}

/// An entry of the history stream, read: one packed field (`v1`), or, written by the previous
/// version, one field a part. See `scripts/settle.lua` for the parts.
fn parts_of(mut fields: Fields) -> Option<Parts> {
    if let Some(packed) = take(&mut fields, "v1") {
        return packed_parts(&packed);
    }
    let mut text = |name: &str| take(&mut fields, name).and_then(|v| String::from_utf8(v).ok());
    let (state, updated, attempts, lapsed) = meta_of(&text("m")?)?;
    Some(Parts {
        delivery: id::parse_delivery(&text("d")?)?,
        endpoint: text("ep")?,
        state,
        attempts,
        lapsed,
        updated,
        last_error: text("e").unwrap_or_default(),
        log: text("l").unwrap_or_default(),
        older: text("o").is_some(),
        headers: text("h"),
        record: take(&mut fields, "r").filter(|r| !r.is_empty()),
        payload: take(&mut fields, "p").map(Bytes::from),
    })
}

/// One delivery's parts, packed (see `scripts/settle.lua` for their order).
fn packed_parts(packed: &[u8]) -> Option<Parts> {
    let parts = super::packed::unpack(packed)?;
    let part = |i: usize| parts.get(i).copied().flatten();
    let text = |i: usize| part(i).and_then(|p| std::str::from_utf8(p).ok());
    let (state, updated, attempts, lapsed) = meta_of(text(2)?)?;
    Some(Parts {
        delivery: id::parse_delivery(text(0)?)?,
        endpoint: text(1)?.to_string(),
        state,
        attempts,
        lapsed,
        updated,
        last_error: text(3).unwrap_or_default().to_string(),
        log: text(4).unwrap_or_default().to_string(),
        record: part(5).filter(|r| !r.is_empty()).map(<[u8]>::to_vec),
        older: part(6).is_some(),
        headers: text(7).map(str::to_string),
        payload: part(8).map(Bytes::copy_from_slice),
    })
}

/// An entry's `<state> <finished, ms> <attempts> <lapsed leases>`.
fn meta_of(meta: &str) -> Option<(String, Option<u64>, u32, u32)> {
    let mut meta = meta.split(' ');
    let (state, updated, attempts, lapsed) = (meta.next()?, meta.next()?, meta.next()?, meta.next()?);
    Some((state.to_string(), updated.parse().ok(), attempts.parse().ok()?, lapsed.parse().unwrap_or(0)))
}

impl RedisQueue {
    /// See [`crate::queue::Queue::finished`].
    pub(super) async fn finished_in(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut conn = self.core.conn.clone();
        let held: i64 = self
            .core
            .writer
            .key(format!("{prefix}{DONE}:writer"))
            .arg(&self.core.writer_id)
            .arg(WRITER_LEASE.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if held == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.max(1);
        // What gateways of previous versions left, first: their index, then their stream.
        let older = self.finished_in_done(shard, limit).await?;
        if !older.is_empty() {
            return Ok(older);
        }
        let previous = self.finished_in_previous(shard, limit).await?;
        if !previous.is_empty() {
            return Ok(previous);
        }
        self.finished_in_entries(shard, limit).await
    }

    /// Reads this version's stream from its head, whole entries, until `limit` deliveries came (or
    /// the stream ended).
    async fn finished_in_entries(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let stream = format!("{prefix}{HISTORY_V2}");
        let mut conn = self.core.conn.clone();
        let mut finished = Vec::with_capacity(limit.min(10 * CHUNK));
        let mut after = "-".to_string();
        while finished.len() < limit {
            // An entry holds a settle call's finished deliveries, a few dozen under load: ask for
            // about as many entries as fill the batch, and never more than CHUNK deliveries' worth
            // of the largest ones in one call.
            let want = ((limit - finished.len()) / 32).clamp(1, CHUNK / 16);
            let entries = read_after(&mut conn, &stream, &after, want).await?;
            let short = entries.len() < want;
            for (entry, mut fields) in entries {
                after = format!("({entry}");
                let count = take(&mut fields, "n")
                    .and_then(|n| String::from_utf8(n).ok())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                let packed = take(&mut fields, "v2");
                let deliveries = packed.as_deref().and_then(super::packed::unpack).unwrap_or_default();
                let handle = format!("v2 {entry} {count}");
                let mut read = 0;
                for delivery in &deliveries {
                    let Some(parts) = delivery.and_then(packed_parts) else {
                        tracing::error!(entry = %entry, "An unreadable delivery in the history stream was dropped.");
                        continue;
                    };
                    if let Some(done) = readable(self, parts, Some(handle.clone())).await? {
                        finished.push(done);
                        read += 1;
                    }
                }
                if read != deliveries.len() || deliveries.len() as u64 != count {
                    tracing::error!(entry = %entry, count, read, "A history stream entry held fewer readable deliveries than it counts.");
                }
                if read == 0 {
                    // No row of the batch stands for it: drop it now, or it stays at the head.
                    let deleted: u64 = redis::cmd("XDEL").arg(&stream).arg(&entry).query_async(&mut conn).await?;
                    if deleted == 1 && count > 0 {
                        let _: i64 = redis::cmd("DECRBY")
                            .arg(format!("{prefix}{HISTORY_V2_COUNT}"))
                            .arg(count)
                            .query_async(&mut conn)
                            .await?;
                    }
                }
            }
            if short {
                break;
            }
        }
        Ok(finished)
    }

    /// Reads the previous version's stream (an entry per delivery) from its head.
    async fn finished_in_previous(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        let stream = format!("{}{HISTORY}", self.core.shard_prefix(shard));
        let mut conn = self.core.conn.clone();
        let mut finished = Vec::new();
        let mut after = "-".to_string();
        while finished.len() < limit {
            let want = (limit - finished.len()).min(CHUNK);
            let entries = read_after(&mut conn, &stream, &after, want).await?;
            let short = entries.len() < want;
            let mut unreadable = Vec::new();
            for (entry, fields) in entries {
                after = format!("({entry}");
                let Some(parts) = parts_of(fields) else {
                    tracing::error!(entry = %entry, "An unreadable history stream entry was dropped.");
                    unreadable.push(entry);
                    continue;
                };
                match readable(self, parts, Some(entry.clone())).await? {
                    Some(done) => finished.push(done),
                    None => unreadable.push(entry),
                }
            }
            if !unreadable.is_empty() {
                let _: () = redis::cmd("XDEL").arg(&stream).arg(&unreadable).query_async(&mut conn).await?;
            }
            if short {
                break;
            }
        }
        Ok(finished)
    }

    /// See [`crate::queue::Queue::mark_exported`]: each stream's head goes, up to the batch's last
    /// entry in it; deliveries read from the previous version's index are marked there.
    ///
    /// A batch is a stream's head when it was read (read from the start, in order), and entries
    /// only ever join at the tail: every entry before the batch's last is in the batch, so trimming
    /// below the next id drops exactly the batch. XTRIM frees the stream's nodes whole, where XDEL
    /// looked each id up inside its node and left the node in place, marked, for every later read
    /// to step over.
    pub(super) async fn exported_in(&self, shard: u32, done: &[Finished], keep: Duration) -> Result<u64, QueueError> {
        let prefix = self.core.shard_prefix(shard);
        let mut previous_last = None;
        // This version's entries of the batch, each once, with the deliveries each holds.
        let mut entries: Vec<((u64, u64), u64)> = Vec::new();
        let mut older = Vec::new();
        for f in done {
            match f.entry.as_deref() {
                None => older.push(f),
                Some(handle) => match handle.strip_prefix("v2 ") {
                    Some(handle) => {
                        let mut words = handle.split(' ');
                        let id = words.next().and_then(entry_id);
                        let count = words.next().and_then(|n| n.parse().ok());
                        if let (Some(id), Some(count)) = (id, count) {
                            entries.push((id, count));
                        }
                    }
                    None => previous_last = previous_last.max(entry_id(handle)),
                },
            }
        }
        entries.sort_unstable();
        entries.dedup();
        let mut conn = self.core.conn.clone();
        let mut marked = 0;
        if let Some(&(last, _)) = entries.last() {
            let mut call = self.core.history_done.key(format!("{prefix}{HISTORY_V2}"));
            call.key(format!("{prefix}{HISTORY_V2_COUNT}")).arg(after(last));
            for (_, count) in &entries {
                call.arg(count);
            }
            marked += call.invoke_async::<u64>(&mut conn).await?;
        }
        if let Some(last) = previous_last {
            let stream = format!("{prefix}{HISTORY}");
            marked +=
                redis::cmd("XTRIM").arg(&stream).arg("MINID").arg(after(last)).query_async::<u64>(&mut conn).await?;
        }
        if !older.is_empty() {
            marked += self.exported_in_done(shard, &older, keep).await?;
        }
        Ok(marked)
    }

    /// Finished deliveries not yet in history, over every shard.
    pub(super) async fn history_backlog(&self) -> Result<u64, QueueError> {
        let counts = (0..self.core.shards).map(|shard| {
            let mut conn = self.core.conn.clone();
            let prefix = self.core.shard_prefix(shard);
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("GET")
                    .arg(format!("{prefix}{HISTORY_V2_COUNT}"))
                    .cmd("XLEN")
                    .arg(format!("{prefix}{HISTORY}"))
                    .cmd("ZCARD")
                    .arg(format!("{prefix}{DONE}"));
                let (entries, previous, older): (Option<i64>, u64, u64) = pipe.query_async(&mut conn).await?;
                Ok::<u64, redis::RedisError>(entries.unwrap_or(0).max(0) as u64 + previous + older)
            }
        });
        Ok(futures_util::future::try_join_all(counts).await?.into_iter().sum())
    }
}
