//! The endpoints as the delivery worker holds them: each one's URL, secret, timeout, schedule and
//! limits from the config, and this process's view of its shared state (disabled, failing since).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use url::Url;

use super::super::alert::{ALERTS_ENDPOINT, ALERT_TIMEOUT};
use super::super::limits::Gate;
use super::super::sign::Secret;
use crate::config::{Config, LEASE_MARGIN};

/// An endpoint as the worker needs it.
pub(super) struct Endpoint {
    pub(super) name: String,
    pub(super) url: Url,
    pub(super) uri: hyper::Uri,
    /// Signs the deliveries; `None` for alerts without `alerts.secret`.
    pub(super) secret: Option<Secret>,
    /// Secrets being rotated out, each signing too until its time.
    pub(super) previous: Vec<(Secret, std::time::SystemTime)>,
    pub(super) timeout: Duration,
    pub(super) schedule: Vec<Duration>,
    pub(super) gate: Gate,
    /// Longest a claimed delivery may wait for the gate: what its lease leaves after the attempt.
    pub(super) max_wait: Duration,
    /// `None`: the circuit breaker is off.
    pub(super) disable_after: Option<Duration>,
    health: Mutex<Health>,
    /// The internal alerts endpoint: not subject to the destination guard, never disabled, and its
    /// dead letters raise no alert of their own.
    pub(super) internal: bool,
}

/// This process's view of an endpoint's shared state, refreshed every second by the worker.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub(super) disabled: bool,
    pub(super) failing_since: Option<u64>,
}

impl Endpoint {
    /// The `webhook-signature` value of one message: the current secret's signature, then one per
    /// previous secret still before its `until`, space-separated. `None` when it signs nothing.
    pub(super) fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
        let mut signature = self.secret.as_ref()?.sign(id, timestamp, body);
        let now = std::time::SystemTime::now();
        for (secret, until) in &self.previous {
            if now < *until {
                signature.push(' ');
                signature.push_str(&secret.sign(id, timestamp, body));
            }
        }
        Some(signature)
    }

    /// This process's view of the endpoint's shared state.
    pub(super) fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Every endpoint of a validated config by name, with the internal alerts endpoint when
/// `alerts.url` is set.
pub(super) fn configured(config: &Config) -> HashMap<String, Endpoint> {
    config
        .endpoints
        .iter()
        .filter_map(|e| {
            let secret = Secret::parse(&e.secret).ok()?;
            let previous =
                e.previous_secrets.iter().filter_map(|p| Some((Secret::parse(&p.secret).ok()?, p.until))).collect();
            let uri = e.url.as_str().parse().ok()?;
            let schedule = e.retry_schedule.clone().unwrap_or_else(|| config.retry.schedule.clone());
            let max_wait = config.queue.lease.saturating_sub(e.timeout + LEASE_MARGIN);
            let endpoint = Endpoint {
                name: e.name.clone(),
                url: e.url.clone(),
                uri,
                secret: Some(secret),
                previous,
                timeout: e.timeout,
                schedule,
                gate: Gate::new(e.max_in_flight, e.rate_limit, max_wait),
                max_wait,
                disable_after: Some(e.disable_after).filter(|d| !d.is_zero()),
                health: Mutex::new(Health::default()),
                internal: false,
            };
            Some((e.name.clone(), endpoint))
        })
        .chain(alerts_endpoint(config))
        .collect()
}

/// The internal endpoint alerts are queued for, when `alerts.url` is set.
fn alerts_endpoint(config: &Config) -> Option<(String, Endpoint)> {
    let url = config.alerts.url.clone()?;
    let uri = url.as_str().parse().ok()?;
    let timeout = ALERT_TIMEOUT.min(config.queue.lease.saturating_sub(LEASE_MARGIN));
    let max_wait = config.queue.lease.saturating_sub(timeout + LEASE_MARGIN);
    let endpoint = Endpoint {
        name: ALERTS_ENDPOINT.to_string(),
        url,
        uri,
        secret: config.alerts.secret.as_deref().and_then(|s| Secret::parse(s).ok()),
        previous: Vec::new(),
        timeout,
        schedule: config.alerts.retry_schedule.clone(),
        gate: Gate::new(None, None, max_wait),
        max_wait,
        disable_after: None,
        health: Mutex::new(Health::default()),
        internal: true,
    };
    Some((ALERTS_ENDPOINT.to_string(), endpoint))
}

/// Why the circuit breaker disabled an endpoint.
pub(super) fn failing_reason(since: u64, now: u64) -> String {
    let secs = Duration::from_secs(now.saturating_sub(since) / 1000);
    format!("every attempt has failed for {} without a success", humantime::format_duration(secs))
}
