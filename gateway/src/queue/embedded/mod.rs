//! The embedded queue: one [redb](https://docs.rs/redb) file on local disk, for a single gateway
//! that should need no other service. Same semantics as the Redis backend (the conformance suite
//! runs against both): deliveries ordered by next-attempt time, leases, ack/retry/bury/defer/pause,
//! dead letters, an attempt log, idempotency keys, retention.
//!
//! # Tables
//! Ids are ULIDs stored as `u128`; an event id has its low 16 bits zero, its deliveries do not (see
//! [`crate::id`]), so one table can key both.
//!
//! | table | key → value | holds |
//! | --- | --- | --- |
//! | `due` | (ms, delivery) → () | every pending delivery by next attempt (or lease expiry) |
//! | `dead` | (ms buried, delivery) → () | dead letters |
//! | `paused` | (endpoint, ms parked, delivery) → () | deliveries parked while their endpoint is disabled |
//! | `deliveries` | delivery → JSON | endpoint, state, attempts, lease, headers, last error, … |
//! | `events` | event → JSON | source, type, headers, deliveries still open |
//! | `payloads` | event or delivery → bytes | an event's body; a delivery's body when a plugin rewrote it |
//! | `attempts` | (delivery, n) → JSON | the attempt log, one record per attempt |
//! | `endpoints` | name → JSON | disabled (reason, since), failing since |
//! | `idempotency` | source/key → JSON | the answer given, and when it expires |
//! | `expiry`, `idempotency_expiry` | (ms, id) → () | what retention removes, and when |
//!
//! # Writes
//! redb allows one write transaction at a time, and each commit is made durable (fsync) before it
//! returns. Every write (enqueue, claim, settle, …) goes to one writer task that applies all
//! requests waiting at that moment in one transaction, on a blocking thread: a group commit, so the
//! fsync is paid per batch, not per event. Reads use snapshot transactions and do not wait for it.
//!
//! Time comes from this machine's clock; one process owns the file (redb locks it), so no other
//! clock can disagree. Expired records are invisible to reads at once and removed by a sweep.

mod records;
mod search;
mod upkeep;
mod write;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTableMetadata};
use ulid::Ulid;

use self::records::*;
use super::batcher::Batcher;
use super::store_file::StoreFile;
use super::{
    idempotency_pending, AttemptRecord, ClaimBatch, Claimed, DeadCursor, DeadLetter, DeliverySummary, DeliveryView,
    EndpointState, EventView, NewDelivery, NewEvent, Queue, QueueError, Settle,
};
use crate::clock::unix_millis;
use crate::config::QueueConfig;
use crate::id;

pub(super) type Shared<T> = Result<T, Arc<QueueError>>;

/// The embedded delivery queue. Cheap to clone: clones share the database and the writer task.
/// The file stays locked (and open) until the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    file: Arc<StoreFile>,
    writer: Batcher<Op, Shared<Outcome>>,
    /// The last write transaction failed with an I/O error (cleared by the next one that commits):
    /// `/readyz` reports it.
    write_failed: Arc<AtomicBool>,
}

impl EmbeddedQueue {
    /// Opens (or creates) the store at `path`, creating its directory. Fails when another process
    /// has it open: the embedded backend serves one gateway; several share Redis instead.
    pub fn open(path: &Path, queue: &QueueConfig) -> Result<Self, QueueError> {
        let file = Arc::new(StoreFile::open(path, queue.cache_mb.saturating_mul(1 << 20))?);
        let retention = Retention {
            finished_ms: millis(queue.retention).max(1000),
            dead_ms: millis(queue.dead_retention).max(1000),
        };
        // Create every table now, so readers never meet a missing one.
        let db = file.get()?;
        let txn = db.begin_write()?;
        write::create_tables(&txn)?;
        txn.commit()?;
        drop(db);
        let write_failed = Arc::new(AtomicBool::new(false));
        let (for_writer, failed) = (file.clone(), write_failed.clone());
        let writer = Batcher::spawn(BATCH, move |batch| {
            let (file, failed) = (for_writer.clone(), failed.clone());
            async move {
                let n = batch.len();
                let write = move || write::write_batch(&file, &failed, batch, retention);
                match tokio::task::spawn_blocking(write).await {
                    Ok(results) => results,
                    Err(e) => {
                        let e = Arc::new(QueueError::Corrupt(format!("the embedded store's writer failed: {e}")));
                        (0..n).map(|_| Err(e.clone())).collect()
                    }
                }
            }
        });
        let inner = Arc::new(Inner { file, writer, write_failed });
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.inner.file.path()
    }

    async fn write(&self, op: Op) -> Result<Outcome, QueueError> {
        match self.inner.writer.submit(op).await {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(e)) => Err(QueueError::Shared(e)),
            None => Err(QueueError::Stopped),
        }
    }

    /// Runs `read` on a snapshot of the store, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let file = self.inner.file.clone();
        tokio::task::spawn_blocking(move || {
            let txn = file.get()?.begin_read()?;
            read(&txn)
        })
        .await
        .map_err(|e| QueueError::Corrupt(format!("a read of the embedded store failed: {e}")))?
    }
}

/// Removes expired records every [`SWEEP_EVERY`] until the queue is dropped.
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let queue = EmbeddedQueue { inner };
        loop {
            match queue.write(Op::Sweep).await {
                Ok(Outcome::Count(n)) if n as usize >= SWEEP_CHUNK => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "Could not remove expired records from the embedded store.");
                    break;
                }
            }
        }
    }
}

fn idempotency_name(source: &str, key: &str) -> String {
    format!("{source}\n{key}")
}

impl Queue for EmbeddedQueue {
    fn shards(&self) -> u32 {
        1
    }

    async fn ping(&self) -> Result<(), QueueError> {
        if self.inner.write_failed.load(Ordering::Relaxed) {
            return Err(QueueError::Unwritable(self.path().to_path_buf()));
        }
        self.read(|txn| {
            txn.open_table(DUE)?;
            Ok(())
        })
        .await
    }

    async fn enqueue(&self, event: &NewEvent<'_>, deliveries: &[NewDelivery]) -> Result<(), QueueError> {
        let idempotency = event.idempotency.map(|commit| IdempotencyWrite {
            key: idempotency_name(event.source, commit.key),
            mark: idempotency_pending(event.id),
            answer: commit.answer.to_string(),
            window_ms: millis(commit.window),
        });
        let event = OwnedEvent {
            id: event.id.0,
            source: event.source.to_string(),
            event_type: event.event_type.to_string(),
            headers: event.headers.to_vec(),
            payload: Bytes::copy_from_slice(event.payload),
        };
        if flag(self.write(Op::Enqueue { event, deliveries: deliveries.to_vec(), idempotency }).await?)? {
            Ok(())
        } else {
            Err(QueueError::IdempotencyLost)
        }
    }

    async fn claim(&self, _shard: u32, limit: usize, lease: Duration, token: &str) -> Result<ClaimBatch, QueueError> {
        let op = Op::Claim { limit: limit.min(MAX_CLAIM), lease_ms: millis(lease), token: token.to_string() };
        match self.write(op).await? {
            Outcome::Claimed(batch) => Ok(batch),
            _ => Err(unexpected()),
        }
    }

    async fn settle(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
    ) -> Result<bool, QueueError> {
        let op = Op::Settle {
            id: claimed.id.0,
            token: claimed.token.clone(),
            record: record.map(serde_json::to_string).transpose()?,
            action,
            last_error: record.and_then(|r| r.error.clone()).unwrap_or_default(),
        };
        flag(self.write(op).await?)
    }

    async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        self.read(move |txn| {
            let now = unix_millis();
            let Some(rec) = get_delivery(&txn.open_table(DELIVERIES)?, delivery.0)? else { return Ok(None) };
            if rec.expires.is_some_and(|at| at <= now) {
                return Ok(None);
            }
            let log = txn.open_table(ATTEMPTS)?;
            let mut attempts = Vec::with_capacity(rec.log as usize);
            for entry in log.range((delivery.0, 0)..=(delivery.0, u32::MAX))? {
                let (_, line) = entry?;
                attempts.push(serde_json::from_str(line.value())?);
            }
            Ok(Some(DeliveryView {
                id: id::format_delivery(delivery),
                event_id: id::format_event(id::event_of(delivery)),
                endpoint: rec.endpoint,
                next_attempt_at: (rec.state == PENDING).then_some(rec.due),
                state: rec.state,
                attempts_made: rec.attempts,
                lapsed_leases: rec.lapsed,
                created_at: Some(delivery.timestamp_ms()),
                updated_at: rec.updated,
                last_error: Some(rec.last_error).filter(|e| !e.is_empty()),
                attempts,
            }))
        })
        .await
    }

    async fn event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        self.read(move |txn| {
            let now = unix_millis();
            let Some(rec) = get_json::<EventRec, _>(&txn.open_table(EVENTS)?, event.0)? else { return Ok(None) };
            if rec.expires.is_some_and(|at| at <= now) {
                return Ok(None);
            }
            let payload = txn.open_table(PAYLOADS)?.get(event.0)?.map(|p| Bytes::copy_from_slice(p.value()));
            let table = txn.open_table(DELIVERIES)?;
            let mut deliveries = Vec::with_capacity(rec.deliveries as usize);
            for k in 1..=(rec.deliveries as usize).min(id::MAX_DELIVERIES_PER_EVENT) {
                let delivery = id::delivery_of(event, k);
                let found = get_delivery(&table, delivery.0)?.filter(|d| d.expires.is_none_or(|at| at > now));
                deliveries.push(DeliverySummary {
                    id: id::format_delivery(delivery),
                    endpoint: found.as_ref().map(|d| d.endpoint.clone()).unwrap_or_default(),
                    state: Some(found.map(|d| d.state).unwrap_or_else(|| "expired".to_string())),
                });
            }
            Ok(Some(EventView {
                id: id::format_event(event),
                source: rec.source,
                event_type: rec.event_type,
                received_at: Some(event.timestamp_ms()),
                headers: rec.headers,
                payload: payload.unwrap_or_default(),
                deliveries,
            }))
        })
        .await
    }

    async fn search(&self, search: &crate::queue::search::Search) -> Result<crate::queue::search::Scanned, QueueError> {
        self.search_deliveries(search).await
    }

    async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let endpoint = endpoint.map(str::to_string);
        self.read(move |txn| {
            let now = unix_millis();
            let dead = txn.open_table(DEAD)?;
            let table = txn.open_table(DELIVERIES)?;
            let mut found = Vec::new();
            // Keys are (burial ms, delivery id): a page starts strictly before the cursor's pair.
            let end = before.map_or((u64::MAX, 0u128), |b| (b.at, b.id.map_or(0, |id| id.0)));
            let range = dead.range(..end)?;
            for entry in range.rev().take(if endpoint.is_some() { DEAD_SCAN } else { limit }) {
                let (key, _) = entry?;
                let (dead_at, delivery) = key.value();
                let Some(rec) = get_delivery(&table, delivery)? else { continue };
                if rec.expires.is_some_and(|at| at <= now) {
                    continue;
                }
                if endpoint.as_deref().is_none_or(|wanted| wanted == rec.endpoint) {
                    found.push(DeadLetter {
                        id: id::format_delivery(Ulid(delivery)),
                        endpoint: rec.endpoint,
                        dead_at,
                        attempts: rec.attempts,
                        last_error: Some(rec.last_error).filter(|e| !e.is_empty()),
                    });
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn replay(&self, deliveries: &[Ulid], spacing: Duration) -> Result<Vec<String>, QueueError> {
        let op = Op::Replay { ids: deliveries.iter().map(|d| d.0).collect(), spacing_ms: millis(spacing) };
        match self.write(op).await? {
            Outcome::Ids(ids) => Ok(ids),
            _ => Err(unexpected()),
        }
    }

    async fn replay_endpoint(&self, endpoint: &str, spacing: Duration) -> Result<u64, QueueError> {
        // In steps of one transaction each, so a huge replay does not hold the writer.
        let (until, mut after, mut replayed) = (unix_millis(), (0, 0), 0);
        loop {
            let op = Op::ReplayEndpoint {
                name: endpoint.to_string(),
                spacing_ms: millis(spacing),
                offset: replayed,
                after,
                until,
            };
            match self.write(op).await? {
                Outcome::Replayed(n, next) => {
                    replayed += n;
                    match next {
                        Some(next) => after = next,
                        None => return Ok(replayed),
                    }
                }
                _ => return Err(unexpected()),
            }
        }
    }

    async fn endpoint_states(&self, names: &[&str]) -> Result<Vec<EndpointState>, QueueError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.read(move |txn| {
            let table = txn.open_table(ENDPOINTS)?;
            names
                .iter()
                .map(|name| {
                    let rec = get_json::<EndpointRec, _>(&table, name.as_str())?.unwrap_or_default();
                    Ok(EndpointState {
                        disabled: rec.disabled,
                        disabled_at: rec.disabled_at,
                        failing_since: rec.failing_since,
                    })
                })
                .collect()
        })
        .await
    }

    async fn mark_failing(&self, name: &str, at: u64) -> Result<(), QueueError> {
        self.write(Op::MarkFailing { name: name.to_string(), at }).await.map(drop)
    }

    async fn clear_failing(&self, name: &str) -> Result<(), QueueError> {
        self.write(Op::ClearFailing { name: name.to_string() }).await.map(drop)
    }

    async fn disable(&self, name: &str, reason: &str, at: u64) -> Result<bool, QueueError> {
        flag(self.write(Op::Disable { name: name.to_string(), reason: reason.to_string(), at }).await?)
    }

    async fn enable(&self, name: &str) -> Result<u64, QueueError> {
        match self.write(Op::Enable { name: name.to_string() }).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn paused_count(&self, name: &str) -> Result<u64, QueueError> {
        let name = name.to_string();
        self.read(move |txn| count_paused(&txn.open_table(PAUSED)?, &name)).await
    }

    async fn gone_endpoints(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.read(|txn| gone_endpoints(&txn.open_table(ENDPOINTS)?)).await
    }

    async fn resume_returned(&self, name: &str) -> Result<u64, QueueError> {
        match self.write(Op::ResumeReturned { name: name.to_string() }).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn discard_parked(&self, name: &str, reason: &str) -> Result<u64, QueueError> {
        match self.write(Op::DiscardParked { name: name.to_string(), reason: reason.to_string() }).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn depth(&self, endpoints: &[String]) -> Result<super::QueueDepth, QueueError> {
        let endpoints = endpoints.to_vec();
        let path = self.path().to_path_buf();
        self.read(move |txn| {
            let now = unix_millis();
            let due = txn.open_table(DUE)?;
            let total = due.len()?;
            let mut due_now = 0;
            for entry in due.range(..=(now, u128::MAX))? {
                entry?;
                due_now += 1;
            }
            let paused = txn.open_table(PAUSED)?;
            Ok(super::QueueDepth {
                due: due_now,
                scheduled: total - due_now,
                dead: txn.open_table(DEAD)?.len()?,
                store_bytes: std::fs::metadata(&path).ok().map(|m| m.len()),
                history_backlog: None,
                paused: endpoints.into_iter().map(|e| Ok((e.clone(), count_paused(&paused, &e)?))).collect::<Result<
                    _,
                    QueueError,
                >>(
                )?,
            })
        })
        .await
    }

    async fn claim_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        let op = Op::ClaimIdempotency { key: idempotency_name(source, key), mark: idempotency_pending(event) };
        match self.write(op).await? {
            Outcome::Answer(answer) => Ok(answer),
            _ => Err(unexpected()),
        }
    }

    async fn complete_idempotency(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), QueueError> {
        let op = Op::CompleteIdempotency {
            key: idempotency_name(source, key),
            answer: answer.to_string(),
            window_ms: millis(window),
        };
        self.write(op).await.map(drop)
    }

    async fn release_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        let op = Op::ReleaseIdempotency { key: idempotency_name(source, key), mark: idempotency_pending(event) };
        match self.write(op).await? {
            Outcome::Answer(answer) => Ok(answer),
            _ => Err(unexpected()),
        }
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unexpected() -> QueueError {
    QueueError::Corrupt("the embedded store's writer answered the wrong kind of result".to_string())
}

fn flag(outcome: Outcome) -> Result<bool, QueueError> {
    match outcome {
        Outcome::Flag(flag) => Ok(flag),
        _ => Err(unexpected()),
    }
}
