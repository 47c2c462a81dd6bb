//! The embedded store's upkeep, in the writer's transaction: endpoint state (disable, enable with
//! its parked deliveries), idempotency keys, and the sweep that removes expired records.

use redb::ReadableTable;

use super::super::{QueueError, IDEMPOTENCY_PENDING_TTL};
use super::millis;
use super::records::*;
use super::write::Tables;

impl Tables<'_> {
    pub(super) fn update_endpoint(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut EndpointRec),
    ) -> Result<(), QueueError> {
        let mut rec = get_json::<EndpointRec, _>(&self.endpoints, name)?.unwrap_or_default();
        change(&mut rec);
        self.endpoints.insert(name, serde_json::to_vec(&rec)?.as_slice())?;
        Ok(())
    }

    /// Enables `name` and puts every parked delivery of it back in the queue, due now, in the same
    /// transaction: nothing can be parked after the endpoint came back.
    pub(super) fn enable(&mut self, name: &str, now: u64) -> Result<u64, QueueError> {
        self.endpoints.remove(name)?;
        self.unpark(name, now)
    }

    /// `name` is configured again: puts the deliveries parked for want of it back in the queue,
    /// due now, unless it is disabled (they stay parked until it is enabled).
    pub(super) fn resume_returned(&mut self, name: &str, now: u64) -> Result<u64, QueueError> {
        let Some(rec) = get_json::<EndpointRec, _>(&self.endpoints, name)? else { return Ok(0) };
        if rec.gone.is_none() {
            return Ok(0);
        }
        self.update_endpoint(name, |e| e.gone = None)?;
        if rec.disabled.is_some() {
            return Ok(0);
        }
        self.unpark(name, now)
    }

    /// Buries every parked delivery of `name` with `reason` as its last error.
    pub(super) fn discard_parked(
        &mut self,
        name: &str,
        reason: &str,
        now: u64,
        retention: super::records::Retention,
    ) -> Result<u64, QueueError> {
        let mut discarded = 0;
        for (at, id) in self.parked(name)? {
            self.paused.remove((name, at, id))?;
            let Some(mut rec) = get_delivery(&self.deliveries, id)? else { continue };
            if rec.state != PAUSED_STATE {
                continue;
            }
            self.bury(id, &mut rec, reason, now, retention)?;
            self.put_delivery(id, &rec)?;
            discarded += 1;
        }
        self.update_endpoint(name, |e| e.gone = None)?;
        Ok(discarded)
    }

    /// The parked deliveries of `name`, as (time parked, id).
    fn parked(&self, name: &str) -> Result<Vec<(u64, u128)>, QueueError> {
        let mut parked = Vec::new();
        for entry in self.paused.range((name, 0u64, 0u128)..=(name, u64::MAX, u128::MAX))? {
            let (key, _) = entry?;
            let (_, at, id) = key.value();
            parked.push((at, id));
        }
        Ok(parked)
    }

    /// Puts every parked delivery of `name` back in the queue, due now.
    fn unpark(&mut self, name: &str, now: u64) -> Result<u64, QueueError> {
        let parked = self.parked(name)?;
        for &(at, id) in &parked {
            self.paused.remove((name, at, id))?;
            let Some(mut rec) = get_delivery(&self.deliveries, id)? else { continue };
            rec.state = PENDING.to_string();
            rec.updated = Some(now);
            rec.due = now;
            self.due.insert((now, id), ())?;
            self.put_delivery(id, &rec)?;
        }
        Ok(parked.len() as u64)
    }

    pub(super) fn idempotency_rec(&self, key: &str) -> Result<Option<IdempotencyRec>, QueueError> {
        get_json(&self.idempotency, key)
    }

    pub(super) fn put_idempotency(&mut self, key: &str, answer: &str, expires: u64) -> Result<(), QueueError> {
        if let Some(old) = self.idempotency_rec(key)? {
            self.idempotency_expiry.remove((old.expires, key))?;
        }
        let rec = IdempotencyRec { answer: answer.to_string(), expires };
        self.idempotency.insert(key, serde_json::to_vec(&rec)?.as_slice())?;
        self.idempotency_expiry.insert((expires, key), ())?;
        Ok(())
    }

    /// The key's record unless it has expired.
    pub(super) fn live_idempotency(&self, key: &str, now: u64) -> Result<Option<IdempotencyRec>, QueueError> {
        Ok(self.idempotency_rec(key)?.filter(|rec| rec.expires > now))
    }

    pub(super) fn claim_idempotency(&mut self, key: &str, mark: &str, now: u64) -> Result<Option<String>, QueueError> {
        if let Some(rec) = self.live_idempotency(key, now)? {
            return Ok(Some(rec.answer));
        }
        self.put_idempotency(key, mark, now.saturating_add(millis(IDEMPOTENCY_PENDING_TTL)))?;
        Ok(None)
    }

    /// Removes up to [`SWEEP_CHUNK`] expired records; returns how many.
    pub(super) fn sweep(&mut self, now: u64) -> Result<u64, QueueError> {
        let mut expired = Vec::new();
        for entry in self.expiry.range(..=(now, u128::MAX))?.take(SWEEP_CHUNK) {
            expired.push(entry?.0.value());
        }
        for &(at, id) in &expired {
            self.expiry.remove((at, id))?;
            self.payloads.remove(id)?;
            if id & LOW_MASK == 0 {
                self.events.remove(id)?;
            } else {
                if let Some(rec) = get_delivery(&self.deliveries, id)? {
                    if rec.state == DEAD_STATE {
                        self.dead.remove((rec.parked, id))?;
                    }
                }
                self.deliveries.remove(id)?;
                let log: Vec<(u128, u32)> = self
                    .attempts
                    .range((id, 0)..=(id, u32::MAX))?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for key in log {
                    self.attempts.remove(key)?;
                }
            }
        }
        let mut keys = Vec::new();
        for entry in self.idempotency_expiry.range(..(now.saturating_add(1), ""))?.take(SWEEP_CHUNK) {
            let (key, _) = entry?;
            let (at, name) = key.value();
            keys.push((at, name.to_string()));
        }
        for (at, name) in &keys {
            self.idempotency_expiry.remove((*at, name.as_str()))?;
            self.idempotency.remove(name.as_str())?;
        }
        Ok((expired.len() + keys.len()) as u64)
    }
}
