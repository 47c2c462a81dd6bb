//! The embedded store's tables and records: what is written where (see the table in the parent
//! module), the write requests the writer task applies, and the helpers that read records back.

use std::time::Duration;

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::super::{ClaimBatch, NewDelivery, QueueError, Settle};

pub(super) const DUE: TableDefinition<(u64, u128), ()> = TableDefinition::new("due");
pub(super) const DEAD: TableDefinition<(u64, u128), ()> = TableDefinition::new("dead");
pub(super) const PAUSED: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("paused");
pub(super) const DELIVERIES: TableDefinition<u128, &[u8]> = TableDefinition::new("deliveries");
pub(super) const EVENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("events");
pub(super) const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
pub(super) const ATTEMPTS: TableDefinition<(u128, u32), &str> = TableDefinition::new("attempts");
pub(super) const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
pub(super) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
pub(super) const EXPIRY: TableDefinition<(u64, u128), ()> = TableDefinition::new("expiry");
pub(super) const IDEMPOTENCY_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_expiry");

/// Most write requests applied in one transaction.
pub(super) const BATCH: usize = 256;
/// Most deliveries one claim may return.
pub(super) const MAX_CLAIM: usize = 1000;
/// Most expired records one sweep removes (a sweep shares the writer with deliveries).
pub(super) const SWEEP_CHUNK: usize = 2000;
/// How often expired records are swept.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How far back a dead-letter listing filtered by endpoint scans before giving up on filling a page.
pub(super) const DEAD_SCAN: usize = 100_000;
/// Most dead letters one replay step looks at (one transaction).
pub(super) const REPLAY_CHUNK: usize = 1000;
/// Delay of a `pause` that finds its endpoint enabled again (it is deferred instead).
pub(super) const PAUSE_FALLBACK_MS: u64 = 1000;
pub(super) const LOW_MASK: u128 = 0xFFFF;

pub(super) const PENDING: &str = "pending";
pub(super) const PAUSED_STATE: &str = "paused";
pub(super) const SUCCEEDED: &str = "succeeded";
pub(super) const DEAD_STATE: &str = "dead";

/// A delivery as stored. Records written by another version load: unknown fields are ignored and
/// missing ones take their defaults (here and in the other records).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct DeliveryRec {
    pub(super) event: u128,
    pub(super) endpoint: String,
    pub(super) state: String,
    pub(super) attempts: u32,
    /// Token of the current lease; empty when not leased.
    pub(super) lease: String,
    /// Its key in `due` while pending.
    pub(super) due: u64,
    /// Its key in `dead` or `paused` while dead or parked.
    pub(super) parked: u64,
    pub(super) updated: Option<u64>,
    pub(super) last_error: String,
    pub(super) headers: Vec<(String, String)>,
    /// The body differs from the event's and is stored under the delivery's id.
    pub(super) rewritten: bool,
    /// Leases that ran out before the delivery was settled.
    pub(super) lapsed: u32,
    /// Buried: its event counts it in `dead`, no longer in `open`. (A delivery buried by an older
    /// version is dead without being closed.)
    pub(super) closed: bool,
    /// Number of attempt-log records.
    pub(super) log: u32,
    /// When retention removes it (finished deliveries only).
    pub(super) expires: Option<u64>,
}

/// An event as stored (its payload is in `payloads`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct EventRec {
    pub(super) source: String,
    pub(super) event_type: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) deliveries: u32,
    /// Deliveries neither acked nor buried.
    pub(super) open: u32,
    /// Deliveries buried (and not replayed): the event is kept as long as they are.
    pub(super) dead: u32,
    pub(super) expires: Option<u64>,
}

/// An endpoint's shared state as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct EndpointRec {
    pub(super) disabled: Option<String>,
    pub(super) disabled_at: Option<u64>,
    pub(super) failing_since: Option<u64>,
    /// When a delivery was first parked for want of this endpoint in config (`Settle::Park`).
    pub(super) gone: Option<u64>,
}

/// Endpoints with deliveries parked for want of them in config, with since when (ms).
pub(super) fn gone_endpoints(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, u64)>, QueueError> {
    let mut gone = Vec::new();
    for entry in table.iter()? {
        let (name, rec) = entry?;
        let rec: EndpointRec = serde_json::from_slice(rec.value())?;
        if let Some(since) = rec.gone {
            gone.push((name.value().to_string(), since));
        }
    }
    Ok(gone)
}

/// An idempotency key's answer as stored.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct IdempotencyRec {
    pub(super) answer: String,
    pub(super) expires: u64,
}

/// One write request for the writer task.
pub(super) enum Op {
    Enqueue {
        event: OwnedEvent,
        deliveries: Vec<NewDelivery>,
        idempotency: Option<IdempotencyWrite>,
    },
    Claim {
        limit: usize,
        lease_ms: u64,
        token: String,
    },
    Settle {
        id: u128,
        token: String,
        record: Option<String>,
        action: Settle,
        last_error: String,
    },
    Replay {
        ids: Vec<u128>,
        spacing_ms: u64,
    },
    /// Up to [`REPLAY_CHUNK`] dead letters of `name` buried after `after` and up to `until`, the
    /// first `offset` spacings from now.
    ReplayEndpoint {
        name: String,
        spacing_ms: u64,
        offset: u64,
        after: (u64, u128),
        until: u64,
    },
    MarkFailing {
        name: String,
        at: u64,
    },
    ClearFailing {
        name: String,
    },
    Disable {
        name: String,
        reason: String,
        at: u64,
    },
    Enable {
        name: String,
    },
    ResumeReturned {
        name: String,
    },
    DiscardParked {
        name: String,
        reason: String,
    },
    ClaimIdempotency {
        key: String,
        mark: String,
    },
    CompleteIdempotency {
        key: String,
        answer: String,
        window_ms: u64,
    },
    ReleaseIdempotency {
        key: String,
        mark: String,
    },
    Sweep,
}

/// The idempotency key an enqueued event is stored under.
pub(super) struct IdempotencyWrite {
    pub(super) key: String,
    /// The mark the key must still hold.
    pub(super) mark: String,
    pub(super) answer: String,
    pub(super) window_ms: u64,
}

/// How long finished work is kept, ms.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    /// Acked deliveries, and events without open deliveries.
    pub(super) finished_ms: u64,
    /// Dead letters, and the events they belong to.
    pub(super) dead_ms: u64,
}

/// What a write request answers.
pub(super) enum Outcome {
    Done,
    Flag(bool),
    Count(u64),
    Claimed(ClaimBatch),
    Ids(Vec<String>),
    /// How many were replayed, and where the scan stopped (`None`: at the end).
    Replayed(u64, Option<(u64, u128)>),
    Answer(Option<String>),
}

pub(super) struct OwnedEvent {
    pub(super) id: u128,
    pub(super) source: String,
    pub(super) event_type: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) payload: Bytes,
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Embedded(redb::Error::from(e))
            }
        }
    )*};
}
store_error!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

pub(super) fn get_json<'a, T, K>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: K::SelfType<'a>,
) -> Result<Option<T>, QueueError>
where
    K: redb::Key + 'static,
    T: for<'de> Deserialize<'de>,
{
    match table.get(key)? {
        Some(value) => Ok(Some(serde_json::from_slice(value.value())?)),
        None => Ok(None),
    }
}

pub(super) fn get_delivery(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<DeliveryRec>, QueueError> {
    get_json(table, id)
}

pub(super) fn count_paused(
    table: &impl ReadableTable<(&'static str, u64, u128), ()>,
    name: &str,
) -> Result<u64, QueueError> {
    let mut n = 0;
    for entry in table.range((name, 0u64, 0u128)..=(name, u64::MAX, u128::MAX))? {
        entry?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::super::super::AttemptRecord;
    use super::*;

    #[test]
    fn records_of_another_version_load() {
        // Written by a newer version: a field this one does not know, and `parked` and `log` gone.
        let newer = r#"{"event":1,"endpoint":"a","state":"pending","attempts":2,"lease":"","due":5,
            "updated":null,"last_error":"HTTP 500","headers":[],"rewritten":false,"expires":null,"priority":3}"#;
        let rec: DeliveryRec = serde_json::from_str(newer).unwrap();
        assert_eq!((rec.attempts, rec.parked, rec.log, rec.last_error.as_str()), (2, 0, 0, "HTTP 500"));
        let event: EventRec = serde_json::from_str(r#"{"source":"shop","event_type":"t","tenant":"x"}"#).unwrap();
        assert_eq!((event.source.as_str(), event.deliveries), ("shop", 0));
        let attempt: AttemptRecord = serde_json::from_str(r#"{"attempt":1,"outcome":"success","trace":"t"}"#).unwrap();
        assert_eq!(attempt.attempt, 1);
    }
}
