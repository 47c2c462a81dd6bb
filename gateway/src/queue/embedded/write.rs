//! The embedded store's writer: applies a batch of write requests (enqueue, claim, settle, replay,
//! endpoint state, idempotency, sweep) in one redb transaction, on a blocking thread. This is the
//! delivery state machine of the embedded backend; `queue/scripts/*.lua` is the same machine for
//! Redis, and the conformance suite holds both to one behaviour.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};
use ulid::Ulid;

use super::super::store_file::StoreFile;
use super::super::{AttemptRecord, ClaimBatch, Claimed, NewDelivery, QueueError, Settle};
use super::records::*;
use super::{millis, Shared};
use crate::clock::unix_millis;
use crate::id;

/// Creates every table (readers never meet a missing one).
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), QueueError> {
    drop(Tables::open(txn)?);
    Ok(())
}

/// Every table, opened once per write transaction.
pub(super) struct Tables<'t> {
    pub(super) due: Table<'t, (u64, u128), ()>,
    pub(super) dead: Table<'t, (u64, u128), ()>,
    pub(super) paused: Table<'t, (&'static str, u64, u128), ()>,
    pub(super) deliveries: Table<'t, u128, &'static [u8]>,
    pub(super) events: Table<'t, u128, &'static [u8]>,
    pub(super) payloads: Table<'t, u128, &'static [u8]>,
    pub(super) attempts: Table<'t, (u128, u32), &'static str>,
    pub(super) endpoints: Table<'t, &'static str, &'static [u8]>,
    pub(super) idempotency: Table<'t, &'static str, &'static [u8]>,
    pub(super) expiry: Table<'t, (u64, u128), ()>,
    pub(super) idempotency_expiry: Table<'t, (u64, &'static str), ()>,
    /// Something was written (an idle claim writes nothing, and its transaction is not committed:
    /// no fsync per idle poll).
    pub(super) dirty: bool,
}

/// Applies a batch of write requests in one transaction and commits it. When one request fails
/// (bad data), the transaction is dropped and each request runs in a transaction of its own, so
/// one bad record cannot fail the others. After an I/O error the whole batch fails (unavailable:
/// 503 at ingest, the lease runs out for a settlement) and the database is reopened for the next.
pub(super) fn write_batch(
    file: &StoreFile,
    failed: &AtomicBool,
    batch: Vec<Op>,
    retention: Retention,
) -> Vec<Shared<Outcome>> {
    let mut committed = false;
    let results: Vec<Shared<Outcome>> = match apply_all(file, &batch, retention) {
        Ok((outcomes, wrote)) => {
            committed = wrote;
            outcomes.into_iter().map(Ok).collect()
        }
        Err(e) if batch.len() == 1 || e.is_unavailable() => {
            let e = Arc::new(e);
            batch.iter().map(|_| Err(e.clone())).collect()
        }
        Err(_) => batch
            .iter()
            .map(|op| {
                let (mut outcome, wrote) = apply_all(file, std::slice::from_ref(op), retention).map_err(Arc::new)?;
                committed |= wrote;
                Ok(outcome.remove(0))
            })
            .collect(),
    };
    let io_failed = results.iter().any(|r| r.as_ref().is_err_and(|e| e.is_unavailable()));
    if io_failed {
        if !failed.swap(true, Ordering::Relaxed) {
            tracing::error!(path = %file.path().display(),
                "The embedded store could not write (disk full or failing?): events are refused with 503 until a write succeeds again.");
        }
        file.discard();
    } else if committed && failed.swap(false, Ordering::Relaxed) {
        tracing::info!(path = %file.path().display(), "The embedded store writes again.");
    }
    results
}

/// Applies `batch` in one transaction; also says whether it was committed (false: nothing to write).
fn apply_all(file: &StoreFile, batch: &[Op], retention: Retention) -> Result<(Vec<Outcome>, bool), QueueError> {
    let db = file.get()?;
    let txn = db.begin_write()?;
    let mut tables = Tables::open(&txn)?;
    let now = unix_millis();
    let mut outcomes = Vec::with_capacity(batch.len());
    for op in batch {
        outcomes.push(tables.apply(op, now, retention)?);
    }
    let dirty = tables.dirty;
    drop(tables);
    if dirty {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok((outcomes, dirty))
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, QueueError> {
        Ok(Self {
            due: txn.open_table(DUE)?,
            dead: txn.open_table(DEAD)?,
            paused: txn.open_table(PAUSED)?,
            deliveries: txn.open_table(DELIVERIES)?,
            events: txn.open_table(EVENTS)?,
            payloads: txn.open_table(PAYLOADS)?,
            attempts: txn.open_table(ATTEMPTS)?,
            endpoints: txn.open_table(ENDPOINTS)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            expiry: txn.open_table(EXPIRY)?,
            idempotency_expiry: txn.open_table(IDEMPOTENCY_EXPIRY)?,
            dirty: false,
        })
    }

    fn apply(&mut self, op: &Op, now: u64, retention: Retention) -> Result<Outcome, QueueError> {
        if !matches!(op, Op::Claim { .. }) {
            self.dirty = true;
        }
        Ok(match op {
            Op::Enqueue { event, deliveries, idempotency } => {
                if let Some(key) = idempotency {
                    // Stored only under the mark its request claimed (see `IdempotencyCommit`).
                    if self.live_idempotency(&key.key, now)?.is_none_or(|rec| rec.answer != key.mark) {
                        return Ok(Outcome::Flag(false));
                    }
                    self.put_idempotency(&key.key, &key.answer, now.saturating_add(key.window_ms))?;
                }
                self.enqueue(event, deliveries, now, retention.finished_ms)?;
                Outcome::Flag(true)
            }
            Op::Claim { limit, lease_ms, token } => Outcome::Claimed(self.claim(*limit, *lease_ms, token, now)?),
            Op::Settle { id, token, record, action, last_error } => {
                Outcome::Flag(self.settle(*id, token, record.as_deref(), *action, last_error, now, retention)?)
            }
            Op::Replay { ids, spacing_ms } => {
                let ids: Vec<(u128, u64)> =
                    ids.iter().enumerate().map(|(i, &id)| (id, spacing_ms.saturating_mul(i as u64))).collect();
                Outcome::Ids(self.replay(&ids, now)?)
            }
            Op::ReplayEndpoint { name, spacing_ms, offset, after, until } => {
                self.replay_endpoint(name, *spacing_ms, *offset, *after, *until, now)?
            }
            Op::MarkFailing { name, at } => {
                self.update_endpoint(name, |e| {
                    e.failing_since.get_or_insert(*at);
                })?;
                Outcome::Done
            }
            Op::ClearFailing { name } => {
                self.update_endpoint(name, |e| e.failing_since = None)?;
                Outcome::Done
            }
            Op::Disable { name, reason, at } => {
                let mut first = false;
                self.update_endpoint(name, |e| {
                    if e.disabled.is_none() {
                        first = true;
                        e.disabled = Some(reason.clone());
                        e.disabled_at = Some(*at);
                    }
                })?;
                Outcome::Flag(first)
            }
            Op::Enable { name } => Outcome::Count(self.enable(name, now)?),
            Op::ResumeReturned { name } => Outcome::Count(self.resume_returned(name, now)?),
            Op::DiscardParked { name, reason } => Outcome::Count(self.discard_parked(name, reason, now, retention)?),
            Op::ClaimIdempotency { key, mark } => Outcome::Answer(self.claim_idempotency(key, mark, now)?),
            Op::CompleteIdempotency { key, answer, window_ms } => {
                self.put_idempotency(key, answer, now.saturating_add(*window_ms))?;
                Outcome::Done
            }
            Op::ReleaseIdempotency { key, mark } => match self.live_idempotency(key, now)? {
                Some(rec) if rec.answer == *mark => {
                    self.idempotency_expiry.remove((rec.expires, key.as_str()))?;
                    self.idempotency.remove(key.as_str())?;
                    Outcome::Answer(None)
                }
                Some(rec) if !rec.answer.starts_with(super::super::IDEMPOTENCY_PENDING) => {
                    Outcome::Answer(Some(rec.answer))
                }
                _ => Outcome::Answer(None),
            },
            Op::Sweep => Outcome::Count(self.sweep(now)?),
        })
    }

    pub(super) fn put_delivery(&mut self, id: u128, rec: &DeliveryRec) -> Result<(), QueueError> {
        self.deliveries.insert(id, serde_json::to_vec(rec)?.as_slice())?;
        Ok(())
    }

    pub(super) fn put_event(&mut self, id: u128, rec: &EventRec) -> Result<(), QueueError> {
        self.events.insert(id, serde_json::to_vec(rec)?.as_slice())?;
        Ok(())
    }

    fn enqueue(
        &mut self,
        event: &OwnedEvent,
        deliveries: &[NewDelivery],
        now: u64,
        retention_ms: u64,
    ) -> Result<(), QueueError> {
        let n = deliveries.len() as u32;
        // An event no delivery needs is kept only for the retention period.
        let expires = (n == 0).then(|| now.saturating_add(retention_ms));
        let rec = EventRec {
            source: event.source.clone(),
            event_type: event.event_type.clone(),
            headers: event.headers.clone(),
            deliveries: n,
            open: n,
            dead: 0,
            expires,
        };
        self.put_event(event.id, &rec)?;
        self.payloads.insert(event.id, event.payload.as_ref())?;
        if let Some(at) = expires {
            self.expiry.insert((at, event.id), ())?;
        }
        for d in deliveries {
            let due = now.saturating_add(millis(d.delay));
            if let Some(payload) = &d.payload {
                self.payloads.insert(d.id.0, payload.as_ref())?;
            }
            let rec = DeliveryRec {
                event: event.id,
                endpoint: d.endpoint.to_string(),
                state: PENDING.to_string(),
                due,
                headers: d.headers.clone(),
                rewritten: d.payload.is_some(),
                ..DeliveryRec::default()
            };
            self.put_delivery(d.id.0, &rec)?;
            self.due.insert((due, d.id.0), ())?;
        }
        Ok(())
    }

    fn claim(&mut self, limit: usize, lease_ms: u64, token: &str, now: u64) -> Result<ClaimBatch, QueueError> {
        let mut keys = Vec::with_capacity(limit);
        for entry in self.due.range(..=(now, u128::MAX))?.take(limit) {
            keys.push(entry?.0.value());
        }
        self.dirty |= !keys.is_empty();
        let lease_until = now.saturating_add(lease_ms);
        let mut deliveries = Vec::with_capacity(keys.len());
        for (i, (score, id)) in keys.into_iter().enumerate() {
            self.due.remove((score, id))?;
            let Some(mut rec) = get_delivery(&self.deliveries, id)? else { continue };
            if rec.state != PENDING {
                // An index entry without a pending delivery behind it: dropped above.
                continue;
            }
            // Still leased: that lease ran out before the delivery was settled. No attempt is
            // counted here; settling with an attempt record counts it.
            if !rec.lease.is_empty() {
                rec.lapsed += 1;
            }
            rec.lease = format!("{token}.{}", i + 1);
            rec.due = lease_until;
            self.due.insert((lease_until, id), ())?;
            self.put_delivery(id, &rec)?;
            let event_type =
                get_json::<EventRec, _>(&self.events, rec.event)?.map(|e| e.event_type).unwrap_or_default();
            let body = if rec.rewritten { id } else { rec.event };
            let payload = self.payloads.get(body)?.map(|p| Bytes::copy_from_slice(p.value())).unwrap_or_default();
            deliveries.push(Claimed {
                id: Ulid(id),
                shard: 0,
                token: rec.lease,
                endpoint: rec.endpoint,
                attempt: rec.attempts + 1,
                lapsed: rec.lapsed,
                event_id: Ulid(rec.event),
                event_type,
                payload,
                headers: rec.headers,
                record: None,
            });
        }
        let next_due_in = self.due.first()?.map(|(key, _)| Duration::from_millis(key.value().0.saturating_sub(now)));
        Ok(ClaimBatch { deliveries, next_due_in })
    }

    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        id: u128,
        token: &str,
        record: Option<&str>,
        action: Settle,
        last_error: &str,
        now: u64,
        retention: Retention,
    ) -> Result<bool, QueueError> {
        let Some(mut rec) = get_delivery(&self.deliveries, id)? else { return Ok(false) };
        if rec.lease != token || rec.state != PENDING {
            return Ok(false);
        }
        // An attempt record counts the attempt; without one, none was made.
        if let Some(line) = record {
            self.attempts.insert((id, rec.log), line)?;
            rec.log += 1;
            rec.attempts += 1;
        }
        let mut action = action;
        if action == Settle::Pause {
            let disabled = get_json::<EndpointRec, _>(&self.endpoints, rec.endpoint.as_str())?
                .is_some_and(|e| e.disabled.is_some());
            if !disabled {
                action = Settle::Defer(Duration::from_millis(PAUSE_FALLBACK_MS));
            }
        }
        rec.lease.clear();
        rec.updated = Some(now);
        self.due.remove((rec.due, id))?;
        match action {
            Settle::Retry(delay) | Settle::Defer(delay) => {
                // A defer was not attempted: the last attempt's error still stands.
                if matches!(action, Settle::Retry(_)) {
                    rec.last_error = last_error.to_string();
                }
                rec.due = now.saturating_add(millis(delay));
                self.due.insert((rec.due, id), ())?;
            }
            Settle::Pause | Settle::Park => {
                if action == Settle::Park {
                    self.update_endpoint(&rec.endpoint, |e| {
                        e.gone.get_or_insert(now);
                    })?;
                }
                rec.state = PAUSED_STATE.to_string();
                rec.parked = now;
                self.paused.insert((rec.endpoint.as_str(), now, id), ())?;
            }
            Settle::Bury => self.bury(id, &mut rec, last_error, now, retention)?,
            Settle::Ack => {
                rec.last_error = last_error.to_string();
                rec.state = SUCCEEDED.to_string();
                self.expire_delivery(id, &mut rec, now.saturating_add(retention.finished_ms))?;
                self.close(rec.event, false, now, retention)?;
            }
        }
        self.put_delivery(id, &rec)?;
        Ok(true)
    }

    /// Makes `rec` (delivery `id`) a dead letter with `last_error`, kept for the dead-letter
    /// retention; its event counts it as dead. The caller writes `rec` back.
    pub(super) fn bury(
        &mut self,
        id: u128,
        rec: &mut DeliveryRec,
        last_error: &str,
        now: u64,
        retention: Retention,
    ) -> Result<(), QueueError> {
        rec.last_error = last_error.to_string();
        rec.state = DEAD_STATE.to_string();
        rec.parked = now;
        rec.closed = true;
        self.dead.insert((now, id), ())?;
        self.expire_delivery(id, rec, now.saturating_add(retention.dead_ms))?;
        self.close(rec.event, true, now, retention)
    }

    /// Schedules the retention of a finished delivery at `at`.
    fn expire_delivery(&mut self, id: u128, rec: &mut DeliveryRec, at: u64) -> Result<(), QueueError> {
        rec.expires = Some(at);
        self.expiry.insert((at, id), ())?;
        Ok(())
    }

    /// One delivery of `event` closed (acked, or buried when `buried`). The event is kept until
    /// its last open delivery closes, then for the retention period, or the dead-letter retention
    /// when one of its deliveries is dead (a replay needs the event's body).
    fn close(&mut self, event: u128, buried: bool, now: u64, retention: Retention) -> Result<(), QueueError> {
        let Some(mut rec) = get_json::<EventRec, _>(&self.events, event)? else { return Ok(()) };
        rec.open = rec.open.saturating_sub(1);
        rec.dead += u32::from(buried);
        if rec.open == 0 && rec.expires.is_none() {
            let keep = if rec.dead > 0 { retention.finished_ms.max(retention.dead_ms) } else { retention.finished_ms };
            let expires = now.saturating_add(keep);
            rec.expires = Some(expires);
            self.expiry.insert((expires, event), ())?;
        }
        self.put_event(event, &rec)
    }

    /// Puts dead deliveries back in the queue, each due its offset from now; returns those replayed
    /// (ids that are not dead are skipped). A replayed delivery is open again, and so is its event.
    fn replay(&mut self, ids: &[(u128, u64)], now: u64) -> Result<Vec<String>, QueueError> {
        let mut replayed = Vec::new();
        for &(id, offset_ms) in ids {
            let Some(mut rec) = get_delivery(&self.deliveries, id)? else { continue };
            // An expired dead letter is gone for readers already, whether swept yet or not.
            if rec.state != DEAD_STATE || rec.expires.is_some_and(|at| at <= now) {
                continue;
            }
            let record =
                AttemptRecord { attempt: 0, at: now, outcome: "replayed".to_string(), ..AttemptRecord::default() };
            self.attempts.insert((id, rec.log), serde_json::to_string(&record)?.as_str())?;
            self.dead.remove((rec.parked, id))?;
            if let Some(at) = rec.expires.take() {
                self.expiry.remove((at, id))?;
            }
            if std::mem::take(&mut rec.closed) {
                if let Some(mut event) = get_json::<EventRec, _>(&self.events, rec.event)? {
                    event.open += 1;
                    event.dead = event.dead.saturating_sub(1);
                    if let Some(at) = event.expires.take() {
                        self.expiry.remove((at, rec.event))?;
                    }
                    self.put_event(rec.event, &event)?;
                }
            }
            rec.log += 1;
            rec.state = PENDING.to_string();
            rec.attempts = 0;
            rec.lapsed = 0;
            rec.lease.clear();
            rec.last_error.clear();
            rec.updated = Some(now);
            rec.due = now.saturating_add(offset_ms);
            self.due.insert((rec.due, id), ())?;
            self.put_delivery(id, &rec)?;
            replayed.push(id::format_delivery(Ulid(id)));
        }
        Ok(replayed)
    }

    /// One step of replaying every dead letter of `name`: looks at up to [`REPLAY_CHUNK`] dead
    /// letters buried after `after` and up to `until` (oldest first) and replays those of `name`,
    /// spaced on from `offset` spacings. Answers how many, and where to go on.
    fn replay_endpoint(
        &mut self,
        name: &str,
        spacing_ms: u64,
        offset: u64,
        after: (u64, u128),
        until: u64,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let mut seen = Vec::with_capacity(REPLAY_CHUNK);
        for entry in self.dead.range((after.0, after.1.saturating_add(1))..=(until, u128::MAX))?.take(REPLAY_CHUNK) {
            seen.push(entry?.0.value());
        }
        let mut picked = Vec::new();
        for &(_, id) in &seen {
            if get_delivery(&self.deliveries, id)?.is_some_and(|rec| rec.endpoint == name) {
                picked.push((id, spacing_ms.saturating_mul(offset + picked.len() as u64)));
            }
        }
        let replayed = self.replay(&picked, now)?.len() as u64;
        let next = (seen.len() == REPLAY_CHUNK).then(|| seen[seen.len() - 1]);
        Ok(Outcome::Replayed(replayed, next))
    }
}
