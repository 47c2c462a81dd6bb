//! The endpoints as the delivery worker holds them: each one's URL, secret, timeout, schedule and
//! limits from the config, and this process's view of its shared state (disabled, failing since).
//! A config reload replaces the whole [`EndpointTable`]; an endpoint whose settings did not change
//! stays the same value (its in-flight cap, rate limit and health carry on), a changed one keeps
//! its health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

use super::super::alert::{ALERTS_ENDPOINT, ALERT_TIMEOUT};
use super::super::limits::Gate;
use crate::config::{Config, LEASE_MARGIN};
use crate::signing::Secret;

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
    /// Its settings as configured (with the defaults it takes), to tell whether a reload changed it.
    settings: String,
}

/// The endpoints of one configuration, by name, and the retry jitter: what the worker delivers
/// with until a reload replaces it.
pub struct EndpointTable {
    pub(super) endpoints: HashMap<String, Arc<Endpoint>>,
    pub(super) jitter: f64,
}

impl EndpointTable {
    /// The endpoints of a validated `config`, with the internal alerts endpoint when `alerts.url`
    /// is set. An endpoint of `previous` whose settings are unchanged is kept as it is; a changed
    /// one starts from its health there.
    pub fn new(config: &Config, previous: Option<&EndpointTable>) -> Self {
        let endpoints = configured(config)
            .into_iter()
            .map(|(name, endpoint)| {
                let before = previous.and_then(|p| p.endpoints.get(&name));
                let endpoint = match before {
                    Some(old) if old.settings == endpoint.settings => old.clone(),
                    Some(old) => {
                        let (disabled, failing_since) = {
                            let health = old.health();
                            (health.disabled, health.failing_since)
                        };
                        *endpoint.health() = Health { disabled, failing_since };
                        Arc::new(endpoint)
                    }
                    None => Arc::new(endpoint),
                };
                (name, endpoint)
            })
            .collect();
        Self { endpoints, jitter: config.retry.jitter }
    }

    /// The endpoint called `name`.
    pub(super) fn get(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.get(name).map(|e| &**e)
    }

    /// The longest endpoint timeout (zero without endpoints).
    pub(super) fn longest_timeout(&self) -> Duration {
        self.endpoints.values().map(|e| e.timeout).max().unwrap_or_default()
    }
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
fn configured(config: &Config) -> HashMap<String, Endpoint> {
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
            let settings = settings_of(&(e, &schedule, config.queue.lease));
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
                settings,
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
        settings: settings_of(&(&config.alerts, config.queue.lease)),
    };
    Some((ALERTS_ENDPOINT.to_string(), endpoint))
}

/// What tells one endpoint's settings from another's: the JSON of everything it is built from.
fn settings_of(parts: &impl serde::Serialize) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

/// Why the circuit breaker disabled an endpoint.
pub(super) fn failing_reason(since: u64, now: u64) -> String {
    let secs = Duration::from_secs(now.saturating_sub(since) / 1000);
    format!("every attempt has failed for {} without a success", humantime::format_duration(secs))
}
