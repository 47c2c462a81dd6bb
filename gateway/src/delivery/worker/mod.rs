//! The delivery worker: claims due deliveries from every shard in batches, POSTs each to its endpoint
//! (signed), and settles it: ack on 2xx, reschedule on failure, dead letter + alert when the schedule
//! is exhausted. One loop claims; each delivery runs in its own task, bounded by a semaphore.
//!
//! Endpoints are protected on the way out: a per-endpoint cap on attempts in flight and a rate limit
//! ([`super::limits`]); `410 Gone`, or failing without a success for `disable_after`, disables the
//! endpoint (shared through the queue's store, alerted once), and its deliveries are parked, not attempted,
//! until it is enabled through the admin API.

mod attempt;
mod endpoint;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::{watch, Notify, Semaphore};

use self::attempt::failure_record;
pub use self::endpoint::EndpointTable;
use self::endpoint::{failing_reason, Endpoint};
use super::alert::{Alerter, DeadLetterAlert, EndpointAlert};
use super::client;
use super::limits::Admission;
use super::retry::{self, Outcome, RetryAction};
use crate::clock::unix_millis;
use crate::config::Config;
use crate::id;
use crate::queue::{AttemptRecord, Claimed, Queue, Settle, Store};

/// Longest an idle worker sleeps before looking again (deliveries enqueued by other gateways and
/// lease expiries are also found through the claim's next-due time).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Longest wait between claims while the queue's store is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the shared endpoint states (disabled, failing since) are read from the queue's store.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(1);
/// What a lease must still hold after an attempt's timeout for the attempt to start: time to settle.
/// Smaller than [`crate::config::LEASE_MARGIN`], which validation requires on top of the timeout, so a delivery
/// claimed and started at once always fits.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// What every delivery task shares.
struct Shared {
    queue: Store,
    client: client::DeliveryClient,
    /// Reaches `alerts.url`: the operator's own infrastructure, often internal, so unguarded.
    alerts_client: client::DeliveryClient,
    /// The endpoints of the running configuration; a reload swaps in another table, and a
    /// delivery keeps the table it started with.
    endpoints: Arc<ArcSwap<EndpointTable>>,
    guard: client::DestinationGuard,
    alerter: Option<Alerter>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Wakes the claim loop (which otherwise sleeps up to [`IDLE_POLL`] while deliveries are leased).
    wake: Arc<Notify>,
}

/// The delivery worker of one gateway process.
pub struct Worker {
    shared: Arc<Shared>,
    lease: Duration,
    batch: usize,
    concurrency: u32,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    name: String,
}

impl Worker {
    /// Builds a worker from a validated config; `wake` is notified when ingest enqueues due work.
    /// `http` delivers to endpoints (guarded); `alerts_http` reaches `alerts.url`, which is the
    /// operator's own infrastructure and often internal, so it is not subject to the destination guard.
    /// `endpoints` holds the running configuration's endpoints (a reload stores another table).
    pub fn new(
        config: &Config,
        queue: Store,
        http: client::DeliveryClient,
        alerter: Option<Alerter>,
        wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
        endpoints: Arc<ArcSwap<EndpointTable>>,
    ) -> Self {
        let shared = Shared {
            queue,
            client: http,
            alerts_client: client::build_delivery(client::DestinationGuard {
                allow_private: true,
                allowed: Vec::new(),
            }),
            endpoints,
            guard: client::DestinationGuard::from(&config.security),
            alerter,
            metrics,
            wake: wake.clone(),
        };
        Self {
            shared: Arc::new(shared),
            lease: config.queue.lease,
            batch: config.queue.batch,
            concurrency: config.queue.concurrency.min(Semaphore::MAX_PERMITS) as u32,
            permits: Arc::new(Semaphore::new(config.queue.concurrency)),
            wake,
            name: format!("w{:016x}", rand::thread_rng().gen::<u64>()),
        }
    }

    /// Claims and delivers until `shutdown` turns true, then lets the deliveries in flight finish
    /// and settle (up to the longest endpoint timeout).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let refresher = tokio::spawn(self.shared.clone().refresh_endpoints(shutdown.clone()));
        self.claim_loop(shutdown).await;
        refresher.abort();
        let in_flight = self.concurrency as usize - self.permits.available_permits();
        if in_flight > 0 {
            tracing::info!(in_flight, "Shutting down: waiting for deliveries in flight.");
        }
        // Long enough for the slowest endpoint to answer an attempt that has just started.
        let drain = self.shared.endpoints.load().longest_timeout() + Duration::from_secs(1);
        match tokio::time::timeout(drain, self.permits.acquire_many(self.concurrency)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                in_flight = self.concurrency as usize - self.permits.available_permits(),
                "Deliveries still in flight at shutdown; they will be attempted again when their leases expire."
            ),
        }
    }

    async fn claim_loop(&self, mut shutdown: watch::Receiver<bool>) {
        let mut claims: u64 = 0;
        let mut rounds: u64 = 0;
        let mut backoff = Duration::ZERO;
        let shards = self.shared.queue.shards();
        while !*shutdown.borrow() {
            if self.permits.available_permits() == 0 {
                // Every slot is busy: wait for one to free up (or for shutdown) before claiming more.
                tokio::select! {
                    permit = self.permits.acquire() => drop(permit),
                    _ = shutdown.changed() => break,
                }
            }
            let mut sleep_for = IDLE_POLL;
            let mut saturated = false;
            let mut failed = false;
            // Each round starts one shard further on, so a shard with a backlog that fills every
            // slot cannot starve the others.
            let first = (rounds % u64::from(shards)) as u32;
            rounds += 1;
            for shard in (0..shards).map(|i| (first + i) % shards) {
                let limit = self.batch.min(self.permits.available_permits());
                if limit == 0 {
                    saturated = true;
                    break;
                }
                claims += 1;
                let token = format!("{}.{claims}", self.name);
                // Taken before the call: the lease began no earlier, so this deadline is never late.
                let lease_ends = tokio::time::Instant::now() + self.lease;
                match self.shared.queue.claim(shard, limit, self.lease, &token).await {
                    Ok(batch) => {
                        saturated |= batch.deliveries.len() == limit;
                        if let Some(next) = batch.next_due_in {
                            sleep_for = sleep_for.min(next);
                        }
                        for claimed in batch.deliveries {
                            self.spawn_delivery(claimed, lease_ends);
                        }
                    }
                    Err(e) => {
                        failed = true;
                        self.shared.metrics.store_error("claim");
                        if backoff.is_zero() {
                            tracing::warn!(error = %e, "Cannot claim deliveries; backing off until the queue answers.");
                        }
                    }
                }
            }
            if failed {
                backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                sleep_for = backoff;
            } else {
                if !backoff.is_zero() {
                    tracing::info!("Queue reachable again; claiming resumed.");
                }
                backoff = Duration::ZERO;
            }
            if saturated && !failed {
                continue;
            }
            tokio::select! {
                // Timer: the next delivery (or lease) falls due, or the idle poll.
                _ = tokio::time::sleep(sleep_for) => {}
                // Ingest just enqueued something due now (which also shows Redis is back, so it
                // ends a back-off early).
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    fn spawn_delivery(&self, claimed: Claimed, lease_ends: tokio::time::Instant) {
        let shared = self.shared.clone();
        let permits = self.permits.clone();
        // A permit is free: the claim asked for no more than the free permits, and only this loop takes them.
        let Ok(permit) = permits.try_acquire_owned() else {
            tracing::warn!(delivery_id = %id::format_delivery(claimed.id), event_id = %id::format_event(claimed.event_id),
                endpoint = %claimed.endpoint, "No free delivery slot; the lease will expire and it will be retried.");
            return;
        };
        tokio::spawn(async move {
            shared.deliver(claimed, lease_ends).await;
            drop(permit);
        });
    }
}

impl Shared {
    /// Keeps each endpoint's view of the shared state (disabled, failing since) fresh, so a change
    /// made by another gateway or the admin API is seen within [`ENDPOINT_REFRESH`].
    async fn refresh_endpoints(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(ENDPOINT_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let table = self.endpoints.load_full();
            let names: Vec<&str> = table.endpoints.keys().map(String::as_str).collect();
            self.resume_returned(&table).await;
            // A failure is left to the claim loop to report; the last known state stays.
            let Ok(states) = self.queue.endpoint_states(&names).await else { continue };
            for (name, state) in names.iter().zip(states) {
                if let Some(endpoint) = table.get(name) {
                    let mut health = endpoint.health();
                    health.disabled = state.disabled.is_some();
                    health.failing_since = state.failing_since;
                }
            }
        }
    }

    /// Puts back the deliveries parked for want of an endpoint that `table` (this gateway's config)
    /// has: it was removed by a reload and came back, or another gateway did not know it yet.
    async fn resume_returned(&self, table: &EndpointTable) {
        // A failure is left to the claim loop to report; the next tick tries again.
        let Ok(gone) = self.queue.gone_endpoints().await else { return };
        for (name, _) in gone.iter().filter(|(name, _)| table.get(name).is_some()) {
            match self.queue.resume_returned(name).await {
                Ok(0) => {}
                Ok(resumed) => tracing::info!(endpoint = %name, resumed,
                    "Endpoint configured again: its parked deliveries are back in the queue."),
                Err(e) => {
                    tracing::debug!(endpoint = %name, error = %e, "Could not resume the endpoint's parked deliveries.")
                }
            }
        }
    }

    /// Delivers one claimed delivery whose lease ends at `lease_ends`.
    async fn deliver(&self, claimed: Claimed, lease_ends: tokio::time::Instant) {
        let delivery_id = id::format_delivery(claimed.id);
        let event_id = id::format_event(claimed.event_id);
        // The table as it is now: the delivery finishes under it even if a reload comes meanwhile.
        let table = self.endpoints.load_full();
        let Some(endpoint) = table.get(&claimed.endpoint) else {
            // No endpoint of this name in this gateway's config (a reload removed it, or a rolling
            // deploy: another gateway already has it): park it, no attempt spent, until a gateway
            // whose config has the endpoint puts it back, or an operator discards it.
            static UNKNOWN: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(held_back) = UNKNOWN.allow() {
                tracing::warn!(%delivery_id, %event_id, endpoint = %claimed.endpoint, similar_since_last = held_back,
                    "Delivery for an endpoint this gateway's config does not have: parked until a config has it again (or it is discarded).");
            }
            self.metrics.put_back("unknown_endpoint");
            self.settle(&claimed, None, Settle::Park, None).await;
            return;
        };
        // A claim counts no attempt, so a delivery whose every lease runs out unsettled (it kills
        // its worker, or the store keeps dropping out mid-delivery) would loop forever: give up once
        // its leases have lapsed more often than its schedule has attempts.
        if claimed.lapsed as usize > endpoint.schedule.len() {
            let reason = format!(
                "its lease ran out {} times before it was settled (workers died or lost the queue while delivering it)",
                claimed.lapsed
            );
            let record = AttemptRecord { outcome: "lapsed".into(), ..failure_record(&claimed, unix_millis(), reason) };
            self.settle(&claimed, Some(&record), Settle::Bury, Some(endpoint)).await;
            return;
        }
        if endpoint.health().disabled {
            tracing::debug!(%delivery_id, %event_id, endpoint = %endpoint.name, "Endpoint disabled: delivery parked.");
            self.settle(&claimed, None, Settle::Pause, Some(endpoint)).await;
            return;
        }
        let permit = match endpoint.gate.admit(endpoint.max_wait).await {
            Admission::Go(permit) => permit,
            Admission::Busy(delay) => {
                tracing::debug!(%delivery_id, %event_id, endpoint = %endpoint.name, ?delay, "Endpoint at its limit: delivery put back.");
                self.metrics.put_back("endpoint_busy");
                self.settle(&claimed, None, Settle::Defer(delay), Some(endpoint)).await;
                return;
            }
        };
        // The lease budget: an attempt that could outlast the lease (its timeout, plus time to
        // settle) would race the next holder; give the delivery back instead, no attempt spent.
        // Settling then fits too: the attempt ends within its timeout, SETTLE_MARGIN before the lease.
        if tokio::time::Instant::now() + endpoint.timeout + SETTLE_MARGIN > lease_ends {
            drop(permit);
            static SHORT: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(held_back) = SHORT.allow() {
                tracing::warn!(%delivery_id, %event_id, endpoint = %endpoint.name, similar_since_last = held_back,
                    "Too little of the lease left for an attempt; delivery put back.");
            }
            self.metrics.put_back("lease_budget");
            self.settle(&claimed, None, Settle::Defer(Duration::ZERO), Some(endpoint)).await;
            return;
        }
        self.metrics.in_flight(1);
        let (outcome, record) = self.attempt(&claimed, endpoint, &delivery_id, unix_millis()).await;
        self.metrics.in_flight(-1);
        drop(permit);
        self.metrics.attempt(&endpoint.name, &record.outcome, Duration::from_secs_f64(record.latency_ms / 1000.0));
        let roll = rand::thread_rng().gen_range(-1.0..=1.0);
        let mut action = match retry::decide(&outcome, claimed.attempt, &endpoint.schedule, table.jitter, roll) {
            RetryAction::Done => Settle::Ack,
            RetryAction::RetryIn(delay) => Settle::Retry(delay),
            RetryAction::GiveUp => Settle::Bury,
        };
        match &outcome {
            Outcome::Success { .. } => self.note_success(endpoint).await,
            Outcome::Status { status: 410, .. } if !endpoint.internal => {
                self.disable(endpoint, "the endpoint answered 410 Gone".into()).await;
                action = Settle::Pause;
            }
            _ => self.note_failure(endpoint).await,
        }
        match &action {
            // Per delivery at DEBUG: at INFO, `summary` sums each endpoint's up (dead letters stay
            // ERROR lines of their own).
            Settle::Ack => {
                tracing::debug!(%delivery_id, %event_id, endpoint = %claimed.endpoint, attempt = claimed.attempt,
                status = record.status, latency_ms = record.latency_ms, "Delivery succeeded.")
            }
            Settle::Retry(delay) => {
                tracing::debug!(%delivery_id, %event_id, endpoint = %claimed.endpoint, attempt = claimed.attempt,
                outcome = %record.outcome, error = record.error.as_deref().unwrap_or_default(), retry_in = ?delay,
                "Delivery attempt failed; will retry.")
            }
            Settle::Bury | Settle::Defer(_) | Settle::Pause | Settle::Park => {}
        }
        self.settle(&claimed, Some(&record), action, Some(endpoint)).await;
    }

    /// A success ends the endpoint's run of failures.
    async fn note_success(&self, endpoint: &Endpoint) {
        if endpoint.health().failing_since.take().is_none() {
            return;
        }
        if let Err(e) = self.queue.clear_failing(&endpoint.name).await {
            // The claim loop reports an unreachable queue once; this would repeat it per delivery.
            tracing::debug!(endpoint = %endpoint.name, error = %e, "Could not record the endpoint's recovery.");
        }
    }

    /// A failed attempt starts (or continues) the endpoint's run of failures; one that has lasted
    /// `disable_after` disables the endpoint.
    async fn note_failure(&self, endpoint: &Endpoint) {
        let Some(limit) = endpoint.disable_after else { return };
        let now = unix_millis();
        let since = {
            let mut health = endpoint.health();
            let since = health.failing_since;
            health.failing_since.get_or_insert(now);
            since
        };
        match since {
            None => {
                if let Err(e) = self.queue.mark_failing(&endpoint.name, now).await {
                    tracing::debug!(endpoint = %endpoint.name, error = %e, "Could not record the endpoint's failure.");
                }
            }
            Some(since) if now.saturating_sub(since) >= limit.as_millis() as u64 => {
                self.disable(endpoint, failing_reason(since, now)).await;
            }
            Some(_) => {}
        }
    }

    /// Disables the endpoint everywhere; the gateway that does it first logs and alerts.
    async fn disable(&self, endpoint: &Endpoint, reason: String) {
        endpoint.health().disabled = true;
        let at = unix_millis();
        match self.queue.disable(&endpoint.name, &reason, at).await {
            Ok(true) => {
                tracing::error!(endpoint = %endpoint.name, url = %crate::redact::url(&endpoint.url), %reason,
                    "Endpoint disabled: its deliveries are parked until it is enabled through the admin API.");
                if let Some(alerter) = &self.alerter {
                    alerter.send_endpoint(EndpointAlert {
                        kind: "endpoint.disabled",
                        endpoint: endpoint.name.clone(),
                        url: crate::redact::url(&endpoint.url),
                        reason,
                        at,
                    });
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(endpoint = %endpoint.name, error = %e, %reason,
                "Could not record that the endpoint is disabled; it will be disabled again on its next failure."),
        }
    }

    async fn settle(
        &self,
        claimed: &Claimed,
        record: Option<&AttemptRecord>,
        action: Settle,
        endpoint: Option<&Endpoint>,
    ) {
        let delivery_id = id::format_delivery(claimed.id);
        match self.queue.settle(claimed, record, action).await {
            Ok(true) => {
                // A retry sooner than the idle poll: wake the claim loop when it falls due.
                if let Settle::Retry(delay) | Settle::Defer(delay) = action {
                    if delay < IDLE_POLL {
                        let wake = self.wake.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            wake.notify_one();
                        });
                    }
                }
            }
            Ok(false) => {
                tracing::warn!(%delivery_id, event_id = %id::format_event(claimed.event_id), endpoint = %claimed.endpoint,
                    "Lease expired before the attempt was recorded; another worker owns it now.");
                return;
            }
            Err(e) => {
                self.metrics.store_error("settle");
                // Nothing is lost: the lease runs out and the delivery is attempted again.
                tracing::warn!(%delivery_id, event_id = %id::format_event(claimed.event_id), endpoint = %claimed.endpoint,
                    error = %e, "Could not record the attempt; it will be retried when the lease expires.");
                return;
            }
        }
        if action == Settle::Bury && endpoint.is_some_and(|e| e.internal) {
            let last_error = record.and_then(|r| r.error.clone()).unwrap_or_default();
            tracing::error!(%delivery_id, event_id = %id::format_event(claimed.event_id), alert = %claimed.event_type,
                attempts = claimed.attempt, %last_error, "Gave up sending an alert: alerts.retry_schedule exhausted.");
        } else if action == Settle::Bury {
            let last_error = record.and_then(|r| r.error.clone()).unwrap_or_default();
            tracing::error!(%delivery_id, event_id = %id::format_event(claimed.event_id), endpoint = %claimed.endpoint,
                attempts = claimed.attempt, %last_error, "Delivery dead-lettered: retries exhausted.");
            if let Some(alerter) = &self.alerter {
                alerter.send(DeadLetterAlert {
                    kind: "delivery.dead",
                    delivery_id,
                    event_id: id::format_event(claimed.event_id),
                    event_type: claimed.event_type.clone(),
                    endpoint: claimed.endpoint.clone(),
                    url: endpoint.map(|e| crate::redact::url(&e.url)).unwrap_or_default(),
                    attempts: claimed.attempt,
                    last_error,
                    at: unix_millis(),
                });
            }
        }
    }
}
