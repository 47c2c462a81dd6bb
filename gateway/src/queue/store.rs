//! [`Store`]: the queue backend a gateway runs on, as the configuration picks it (`[queue] backend`,
//! see [`crate::config::Config::backend`]). Every call is handed to the backend; both keep the
//! [`Queue`] contract.

use std::time::Duration;

use ulid::Ulid;

use super::{
    AttemptRecord, ClaimBatch, Claimed, DeadCursor, DeadLetter, DeliveryView, EmbeddedQueue, EndpointState, EventView,
    Finished, NewDelivery, NewEvent, Queue, QueueError, RedisQueue, Restore, Settle,
};
use crate::config::{Backend, Config};

/// The queue backend in use. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// Redis (or Redis Cluster), shared by any number of gateways.
    Redis(RedisQueue),
    /// One local file, for a single gateway.
    Embedded(EmbeddedQueue),
}

impl Store {
    /// Opens the backend `config` names. Must be called inside a Tokio runtime.
    pub fn open(config: &Config) -> Result<Self, QueueError> {
        Ok(match config.backend() {
            Backend::Redis => Store::Redis(RedisQueue::open(
                &config.redis_settings(),
                &config.queue,
                config.history.as_ref().map(|h| h.keep_in_redis),
            )?),
            Backend::Embedded => Store::Embedded(EmbeddedQueue::open(&config.queue.path(), &config.queue)?),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Redis(_) => Backend::Redis,
            Store::Embedded(_) => Backend::Embedded,
        }
    }
}

/// Awaits the same call on whichever backend `$store` is.
macro_rules! each {
    ($store:ident, $queue:ident => $call:expr) => {
        match $store {
            Store::Redis($queue) => $call.await,
            Store::Embedded($queue) => $call.await,
        }
    };
}

impl Queue for Store {
    fn shards(&self) -> u32 {
        match self {
            Store::Redis(q) => q.shards(),
            Store::Embedded(q) => q.shards(),
        }
    }

    async fn ping(&self) -> Result<(), QueueError> {
        each!(self, q => q.ping())
    }

    async fn enqueue(&self, event: &NewEvent<'_>, deliveries: &[NewDelivery]) -> Result<(), QueueError> {
        each!(self, q => q.enqueue(event, deliveries))
    }

    async fn claim(&self, shard: u32, limit: usize, lease: Duration, token: &str) -> Result<ClaimBatch, QueueError> {
        each!(self, q => q.claim(shard, limit, lease, token))
    }

    async fn settle(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
    ) -> Result<bool, QueueError> {
        each!(self, q => q.settle(claimed, record, action))
    }

    async fn delivery(&self, delivery: Ulid) -> Result<Option<DeliveryView>, QueueError> {
        each!(self, q => q.delivery(delivery))
    }

    async fn event(&self, event: Ulid) -> Result<Option<EventView>, QueueError> {
        each!(self, q => q.event(event))
    }

    async fn states_of(&self, deliveries: &[Ulid]) -> Result<Vec<Option<String>>, QueueError> {
        each!(self, q => q.states_of(deliveries))
    }

    async fn search(&self, search: &super::search::Search) -> Result<super::search::Scanned, QueueError> {
        each!(self, q => q.search(search))
    }

    async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        each!(self, q => q.dead_letters(endpoint, before, limit))
    }

    async fn replay(&self, deliveries: &[Ulid], spacing: Duration) -> Result<Vec<String>, QueueError> {
        each!(self, q => q.replay(deliveries, spacing))
    }

    async fn replay_endpoint(&self, endpoint: &str, spacing: Duration) -> Result<u64, QueueError> {
        each!(self, q => q.replay_endpoint(endpoint, spacing))
    }

    async fn endpoint_states(&self, names: &[&str]) -> Result<Vec<EndpointState>, QueueError> {
        each!(self, q => q.endpoint_states(names))
    }

    async fn mark_failing(&self, name: &str, at: u64) -> Result<(), QueueError> {
        each!(self, q => q.mark_failing(name, at))
    }

    async fn clear_failing(&self, name: &str) -> Result<(), QueueError> {
        each!(self, q => q.clear_failing(name))
    }

    async fn disable(&self, name: &str, reason: &str, at: u64) -> Result<bool, QueueError> {
        each!(self, q => q.disable(name, reason, at))
    }

    async fn enable(&self, name: &str) -> Result<u64, QueueError> {
        each!(self, q => q.enable(name))
    }

    async fn paused_count(&self, name: &str) -> Result<u64, QueueError> {
        each!(self, q => q.paused_count(name))
    }

    async fn gone_endpoints(&self) -> Result<Vec<(String, u64)>, QueueError> {
        each!(self, q => q.gone_endpoints())
    }

    async fn resume_returned(&self, name: &str) -> Result<u64, QueueError> {
        each!(self, q => q.resume_returned(name))
    }

    async fn discard_parked(&self, name: &str, reason: &str) -> Result<u64, QueueError> {
        each!(self, q => q.discard_parked(name, reason))
    }

    async fn depth(&self, endpoints: &[String]) -> Result<super::QueueDepth, QueueError> {
        each!(self, q => q.depth(endpoints))
    }

    async fn holds(&self, deliveries: &[Ulid]) -> Result<Vec<bool>, QueueError> {
        each!(self, q => q.holds(deliveries))
    }

    async fn restore(&self, restore: &Restore, delay: Duration) -> Result<bool, QueueError> {
        each!(self, q => q.restore(restore, delay))
    }

    async fn finished(&self, shard: u32, limit: usize) -> Result<Vec<Finished>, QueueError> {
        each!(self, q => q.finished(shard, limit))
    }

    async fn mark_exported(&self, shard: u32, done: &[Finished], keep: Duration) -> Result<u64, QueueError> {
        each!(self, q => q.mark_exported(shard, done, keep))
    }

    async fn claim_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        each!(self, q => q.claim_idempotency(source, key, event))
    }

    async fn complete_idempotency(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), QueueError> {
        each!(self, q => q.complete_idempotency(source, key, answer, window))
    }

    async fn release_idempotency(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        each!(self, q => q.release_idempotency(source, key, event))
    }
}
