//! Stage 3: the queue. Every delivery waits here, ordered by the time of its next attempt, until a
//! worker claims it under a lease and settles it (ack, retry or bury).
//!
//! The [`Queue`] trait is the contract every backend keeps; the conformance suite
//! (`tests/e2e/queue_conformance.rs`) runs the same tests against each.
//!
//! - [`redis`]: the Redis backend (sorted sets keyed by next-attempt time, Lua scripts); several
//!   gateways share it.
//! - [`embedded`]: the embedded backend (one redb file on local disk) for a single node.
//! - [`store`]: [`Store`], the backend the configuration picks.
//! - [`store_file`]: the embedded store's file, reopened after a failed write.
//! - `error`: [`QueueError`], what every backend fails with.
//! - [`batcher`]: group commit of concurrent requests into one round trip (or one transaction).
//! - [`search`]: deliveries by endpoint, state and creation time, newest first, a page at a time.
//!
//! The types below are the hand-offs between ingest, the queue and the delivery worker.

pub mod batcher;
pub mod embedded;
mod error;
pub mod redis;
pub mod search;
pub mod store;
pub mod store_file;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use self::embedded::EmbeddedQueue;
pub use self::error::QueueError;
pub use self::redis::RedisQueue;
pub use self::store::Store;
pub use self::views::{
    AttemptList, DeadCursor, DeadLetter, DeliverySummary, DeliveryView, EventView, Finished, FinishedDelivery, Own,
    Restore,
};

/// How an idempotency key's value starts while its first request is still being processed (the
/// full mark, [`idempotency_pending`], names the event that request will store).
pub const IDEMPOTENCY_PENDING: &str = "pending";

/// The mark an idempotency key holds while the request that claimed it for `event` runs.
pub fn idempotency_pending(event: Ulid) -> String {
    format!("{IDEMPOTENCY_PENDING}:{}", crate::id::format_event(event))
}
/// How long a claimed idempotency key stays pending at most (a gateway that died mid-request frees
/// it then).
pub const IDEMPOTENCY_PENDING_TTL: Duration = Duration::from_secs(60);

/// An event as it is stored.
#[derive(Debug)]
pub struct NewEvent<'a> {
    /// Event id.
    pub id: Ulid,
    /// Source name.
    pub source: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Ingest headers kept with the event.
    pub headers: &'a [(String, String)],
    /// Body as received.
    pub payload: &'a [u8],
    /// The idempotency key the event is stored under, if any.
    pub idempotency: Option<IdempotencyCommit<'a>>,
}

/// An idempotency key stored together with its event: the enqueue stores the event only while the
/// key still holds the event's pending mark ([`idempotency_pending`]), and records `answer` for
/// `window` in the same atomic step. So an enqueue whose outcome the gateway never learnt (a lost
/// reply) is settled by the key alone: it holds the answer, or the mark that lets it be released.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyCommit<'a> {
    /// The key, as the producer sent it.
    pub key: &'a str,
    /// The answer to repeat to a retry.
    pub answer: &'a str,
    /// How long the answer is kept.
    pub window: Duration,
}

/// One delivery to schedule.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Delivery id (see [`crate::id`]).
    pub id: Ulid,
    /// Endpoint name.
    pub endpoint: Arc<str>,
    /// Body, when it differs from the event's payload.
    pub payload: Option<Bytes>,
    /// Extra headers to send.
    pub headers: Vec<(String, String)>,
    /// Delay before the first attempt.
    pub delay: Duration,
}

/// A delivery claimed by a worker, leased to it until it settles or the lease runs out.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Delivery id.
    pub id: Ulid,
    /// Shard it lives in.
    pub shard: u32,
    /// Lease token; settling requires it.
    pub token: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Number of this attempt, 1-based: attempts recorded so far plus one (a claim counts none).
    pub attempt: u32,
    /// Times an earlier lease of this delivery ran out before it was settled (a worker died or
    /// lost the store mid-delivery; maybe it attempted, maybe not).
    pub lapsed: u32,
    /// Event id.
    pub event_id: Ulid,
    /// Event type.
    pub event_type: String,
    /// Body to POST.
    pub payload: Bytes,
    /// Extra headers to send.
    pub headers: Vec<(String, String)>,
    /// The event's record as the store holds it, kept only where the store's history entry of a
    /// first attempt's success is made from it by the settlement (Redis with `[history]`, a lease
    /// without a hash); `None` otherwise.
    pub record: Option<Bytes>,
}

/// The result of one claim.
#[derive(Debug)]
pub struct ClaimBatch {
    /// Claimed deliveries.
    pub deliveries: Vec<Claimed>,
    /// Time until the shard's next delivery (or lease) falls due; `None` when the shard is empty.
    pub next_due_in: Option<Duration>,
}

/// How to settle a claimed delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settle {
    /// Delivered: done.
    Ack,
    /// Attempt again after this delay.
    Retry(Duration),
    /// Give up: dead letter.
    Bury,
    /// Not attempted (the endpoint was at its concurrency cap or rate limit): put back, due after
    /// this delay, without counting an attempt.
    Defer(Duration),
    /// Park in the endpoint's paused set until the endpoint is enabled again; deferred instead when
    /// the endpoint is no longer disabled.
    Pause,
    /// Park in the endpoint's paused set because no endpoint of its name is configured (a reload
    /// removed it), noting the endpoint as gone: it waits until a gateway whose config has the
    /// endpoint puts it back ([`Queue::resume_returned`]) or an operator discards it.
    Park,
}

/// The state of an endpoint shared by every gateway: disabled (and why), failing since when.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointState {
    /// Why the endpoint is disabled; `None` when it is enabled.
    pub disabled: Option<String>,
    /// When it was disabled, ms since the epoch.
    pub disabled_at: Option<u64>,
    /// Start of the current run of failed attempts, ms since the epoch; `None` after a success.
    pub failing_since: Option<u64>,
}

/// One attempt, as recorded in the attempt log. A record written by another version loads (unknown
/// fields ignored, missing ones defaulted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AttemptRecord {
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// When the attempt started, ms since the Unix epoch.
    pub at: u64,
    /// `success`, `http_error`, `timeout` or `error`; `lapsed` for the record that gives up a
    /// delivery whose leases kept running out (counted as its last attempt); `replayed` marks a replay.
    pub outcome: String,
    /// HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Error text, when it failed.
    pub error: Option<String>,
    /// Time from sending to the end of the answer, ms.
    pub latency_ms: f64,
    /// The first bytes of the receiver's answer, lossily decoded.
    pub response: Option<String>,
}

impl AttemptRecord {
    /// When the attempt ended, ms since the epoch: its start plus its latency, rounded up. What a
    /// delivery's finish time is when its success left only its attempt log (the admin API's
    /// view of it, and its history entry, agree on it).
    pub fn ended_at(&self) -> u64 {
        self.at + self.latency_ms.max(0.0).ceil() as u64
    }
}

/// The queue's depth as read at scrape time.
#[derive(Debug, Default)]
pub struct QueueDepth {
    /// Deliveries due now (waiting for a worker).
    pub due: u64,
    /// Deliveries scheduled later: retries waiting for their time, and deliveries leased to a worker.
    pub scheduled: u64,
    /// Dead-lettered deliveries.
    pub dead: u64,
    /// Parked deliveries per endpoint (the endpoint is disabled).
    pub paused: Vec<(String, u64)>,
    /// Memory the store uses: Redis `used_memory` (summed over a cluster's primaries), or the
    /// embedded store's file size; `None` when it cannot be read.
    pub store_bytes: Option<u64>,
    /// With `[history]`: finished deliveries waiting to be written to PostgreSQL.
    pub history_backlog: Option<u64>,
}

/// The contract of a queue backend. Both backends keep the same semantics, checked by one
/// conformance suite: deliveries ordered by next-attempt time, claimed under a lease, settled only
/// by the lease holder, dead letters, an attempt log, parked deliveries of disabled endpoints,
/// idempotency keys and retention of finished work.
pub trait Queue: Send + Sync {
    /// Number of shards a worker claims from (each claim names one).
    fn shards(&self) -> u32;

    /// Checks that the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Stores an event and schedules its deliveries, atomically; returns once the store has them
    /// (durably: a crash after this returns loses none of them). With an idempotency key, stores
    /// nothing and fails with [`QueueError::IdempotencyLost`] unless the key holds the event's
    /// pending mark, and records the answer in the same step.
    fn enqueue(
        &self,
        event: &NewEvent<'_>,
        deliveries: &[NewDelivery],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Claims up to `limit` due deliveries of `shard`, leasing each for `lease`. `token` is unique
    /// per call; each delivery's lease token derives from it. Counts no attempt (settling with an
    /// attempt record does), so a claim whose reply is lost spends none.
    fn claim(
        &self,
        shard: u32,
        limit: usize,
        lease: Duration,
        token: &str,
    ) -> impl Future<Output = Result<ClaimBatch, QueueError>> + Send;

    /// Records `record` and counts it as an attempt (`None`: no attempt was made) and settles the
    /// delivery; `Ok(false)` when the lease was lost meanwhile. A burial keeps the dead letter for
    /// `queue.dead_retention`.
    fn settle(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// A delivery with its state and every attempt, or `None` when unknown (or expired).
    fn delivery(&self, delivery: Ulid) -> impl Future<Output = Result<Option<DeliveryView>, QueueError>> + Send;

    /// An event with its deliveries' states, or `None` when unknown (or expired).
    fn event(&self, event: Ulid) -> impl Future<Output = Result<Option<EventView>, QueueError>> + Send;

    /// Deliveries the store holds in any state that match `search`, newest first (highest id
    /// first), at most `search.limit`. Reads a bounded number of records per call: when that ends
    /// the page before it is full, [`search::Scanned::stopped_at`] says how far it got.
    fn search(&self, search: &search::Search) -> impl Future<Output = Result<search::Scanned, QueueError>> + Send;

    /// Dead letters, newest first (by burial time, then delivery id): up to `limit` that come after
    /// `before` in that order, optionally only those of `endpoint`.
    fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// Puts dead deliveries back in the queue with a fresh schedule, `spacing` apart; returns the
    /// ids replayed (ids that are not dead are skipped).
    fn replay(
        &self,
        deliveries: &[Ulid],
        spacing: Duration,
    ) -> impl Future<Output = Result<Vec<String>, QueueError>> + Send;

    /// Puts every dead letter of `endpoint` buried until now back in the queue, `spacing` apart, in
    /// bounded steps however many there are; returns how many.
    fn replay_endpoint(
        &self,
        endpoint: &str,
        spacing: Duration,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// The shared state of each endpoint in `names`, in order.
    fn endpoint_states(&self, names: &[&str]) -> impl Future<Output = Result<Vec<EndpointState>, QueueError>> + Send;

    /// Records that `name` started failing at `at` (ms), unless a run of failures is already recorded.
    fn mark_failing(&self, name: &str, at: u64) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Records that `name` succeeded: its run of failures is over.
    fn clear_failing(&self, name: &str) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Disables `name` for `reason`: its deliveries are parked until it is enabled. Returns true
    /// for the call that disabled it (exactly one across gateways), false when it already was.
    fn disable(&self, name: &str, reason: &str, at: u64) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Enables `name` and puts its parked deliveries back in the queue, due now. Returns how many.
    fn enable(&self, name: &str) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// How many deliveries of `name` are parked.
    fn paused_count(&self, name: &str) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Endpoints with deliveries parked for want of the endpoint in config ([`Settle::Park`]), each
    /// with when that was first noted (ms), by name.
    fn gone_endpoints(&self) -> impl Future<Output = Result<Vec<(String, u64)>, QueueError>> + Send;

    /// `name` is configured again: puts the deliveries parked for want of it back in the queue, due
    /// now, unless it is disabled (then they stay parked until it is enabled), and clears its gone
    /// note. Returns how many went back.
    fn resume_returned(&self, name: &str) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Buries every parked delivery of `name` (dead letters, `reason` as the last error, replayable
    /// for `queue.dead_retention`), whatever parked it. Returns how many.
    fn discard_parked(&self, name: &str, reason: &str) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// The queue's depth: deliveries due now, scheduled later (or leased), dead, and parked per endpoint.
    fn depth(&self, endpoints: &[String]) -> impl Future<Output = Result<QueueDepth, QueueError>> + Send;

    /// Finished deliveries (succeeded or dead) of `shard` not yet written to history, oldest
    /// first, at most `limit`, each with its attempt log and its event. Only a backend that hands
    /// its history on (Redis with `[history]`) has any; the others keep their own history.
    fn finished(&self, shard: u32, limit: usize) -> impl Future<Output = Result<Vec<Finished>, QueueError>> + Send {
        let _ = (shard, limit);
        async { Ok(Vec::new()) }
    }

    /// Marks finished deliveries of `shard` as held by history, so they are not handed over again
    /// (Redis: their stream entries go; those of the previous version's index leave it, and a
    /// succeeded one, with its event once none of the event's deliveries is open or dead, expires
    /// after `keep`, unless it changed since it was read). `done` is a batch [`Queue::finished`]
    /// returned, whole: Redis drops the stream's head up to its last entry. Returns how many were
    /// marked.
    fn mark_exported(
        &self,
        shard: u32,
        done: &[Finished],
        keep: Duration,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send {
        let _ = (shard, done, keep);
        async { Ok(0) }
    }

    /// Which of `deliveries` the store holds a record of, in any state, in order. History asks,
    /// so that a dead letter it keeps counts as dead only while the store has not taken it back
    /// (replayed it, or restored it).
    fn holds(&self, deliveries: &[Ulid]) -> impl Future<Output = Result<Vec<bool>, QueueError>> + Send {
        async move {
            let mut held = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                held.push(self.delivery(*delivery).await?.is_some());
            }
            Ok(held)
        }
    }

    /// The state the store holds each of `deliveries` in (`pending`, `paused`, `succeeded`,
    /// `dead`), in order; `None` for one it does not hold. A search with `[history]` asks: where
    /// the store holds a delivery, its state there is the current one.
    fn states_of(&self, deliveries: &[Ulid]) -> impl Future<Output = Result<Vec<Option<String>>, QueueError>> + Send {
        async move {
            let mut states = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                states.push(self.delivery(*delivery).await?.map(|d| d.state));
            }
            Ok(states)
        }
    }

    /// Brings a dead letter that only history holds back into the queue, due after `delay`, its
    /// attempt log kept and a `replayed` record added, as [`Self::replay`] does; stores its event
    /// again when the store no longer has it. `Ok(false)`, changing nothing, when the store holds
    /// the delivery (replay it instead). Only a backend that hands its history to PostgreSQL
    /// (Redis with `[history]`) needs this; the others keep their dead letters themselves.
    fn restore(&self, restore: &Restore, delay: Duration) -> impl Future<Output = Result<bool, QueueError>> + Send {
        let _ = (restore, delay);
        async {
            Err(QueueError::Corrupt("this backend keeps its own dead letters; it restores none from history".into()))
        }
    }

    /// Claims an idempotency key for `event` (made with [`Self::idempotency_shard`]), marking it
    /// pending. `Ok(None)`: claimed, go ahead. `Ok(Some(answer))`: seen before, with the answer
    /// given then (starting with [`IDEMPOTENCY_PENDING`] while the first request is still running).
    fn claim_idempotency(
        &self,
        source: &str,
        key: &str,
        event: Ulid,
    ) -> impl Future<Output = Result<Option<String>, QueueError>> + Send;

    /// The shard an event stored under this idempotency key must be in (its id made with
    /// [`crate::id::new_event_in`]), so the key and the event are written in one step.
    fn idempotency_shard(&self, source: &str, key: &str) -> u32 {
        crate::id::shard_of_key(source, key, self.shards())
    }

    /// Records the answer given for an idempotency key, for `window` (for an event that needed no
    /// enqueue; an enqueue records its own answer).
    fn complete_idempotency(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives up an idempotency key claimed for `event` when that event was not stored, so a retry
    /// can proceed: removes the key if it still holds the event's pending mark. Returns the answer
    /// recorded when the event was stored after all (an enqueue whose reply was lost).
    fn release_idempotency(
        &self,
        source: &str,
        key: &str,
        event: Ulid,
    ) -> impl Future<Output = Result<Option<String>, QueueError>> + Send;
}
