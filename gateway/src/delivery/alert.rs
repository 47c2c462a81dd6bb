//! Operational alerts: when a delivery is dead-lettered, an endpoint is disabled or recovers, or a
//! plugin keeps failing, a typed JSON alert goes to `alerts.url`.
//!
//! An alert is queued like any delivery: an event of the internal source `_alerts` with one delivery
//! to the internal endpoint [`ALERTS_ENDPOINT`], which the worker POSTs (signed when `alerts.secret`
//! is set, exempt from the destination guard: the alert URL is the operator's own) and retries on
//! `alerts.retry_schedule`. So an alert survives a restart, and its attempts show in the admin API
//! and the metrics. When the queue cannot take it, it is POSTed from memory with a few quick retries.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use url::Url;

use crate::queue::{NewDelivery, NewEvent, Queue, Store};
use crate::signing::Secret;

pub use crate::config::ALERTS_ENDPOINT;

/// The body of a `plugin.failing` alert.
#[derive(Debug, Clone, Serialize)]
pub struct PluginFailingAlert {
    /// `plugin.failing`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Plugin name.
    pub plugin: String,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls in the window.
    pub errors: u64,
    /// `errors / calls`.
    pub error_rate: f64,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// When, ms since the epoch.
    pub at: u64,
}

/// Delays before the alert's retries.
const ALERT_RETRIES: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)];
/// Timeout of one alert POST.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of a dead-letter alert.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterAlert {
    /// Always `delivery.dead`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Delivery id.
    pub delivery_id: String,
    /// Event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint URL.
    pub url: String,
    /// Attempts made.
    pub attempts: u32,
    /// What the last attempt ended with.
    pub last_error: String,
    /// When it was dead-lettered, ms since the epoch.
    pub at: u64,
}

/// The body of an endpoint alert.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointAlert {
    /// `endpoint.disabled` or `endpoint.recovered`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Endpoint name.
    pub endpoint: String,
    /// Endpoint URL.
    pub url: String,
    /// Why: `HTTP 410 Gone`, the run of failures, or the admin API.
    pub reason: String,
    /// When, ms since the epoch.
    pub at: u64,
}

/// Sends alerts.
#[derive(Clone)]
pub struct Alerter {
    client: reqwest::Client,
    url: Url,
    secret: Option<Secret>,
    queue: Option<(Store, Arc<Notify>)>,
}

impl Alerter {
    /// An alerter that POSTs to `url` from memory, signing with `secret` when given.
    pub fn new(client: reqwest::Client, url: Url, secret: Option<Secret>) -> Self {
        Self { client, url, secret, queue: None }
    }

    /// Queues alerts in `queue` (waking the worker through `wake`) instead of POSTing them from
    /// memory; memory stays the fallback when the queue cannot take one.
    pub fn queued(mut self, queue: Store, wake: Arc<Notify>) -> Self {
        self.queue = Some((queue, wake));
        self
    }

    /// The alerter `[alerts]` describes, `None` when no `alerts.url` is set.
    pub fn from_config(config: &crate::config::Config, client: reqwest::Client) -> Option<Self> {
        let url = config.alerts.url.clone()?;
        let secret = config.alerts.secret.as_deref().and_then(|s| Secret::parse(s).ok());
        Some(Self::new(client, url, secret))
    }

    /// Sends a dead-letter alert in the background; failures are logged at ERROR.
    pub fn send(&self, alert: DeadLetterAlert) {
        let id = format!("alert_{}", alert.delivery_id);
        self.send_json(id, alert.kind, &alert);
    }

    /// Sends an endpoint alert in the background; failures are logged at ERROR.
    pub fn send_endpoint(&self, alert: EndpointAlert) {
        let id = format!("alert_{}_{}_{}", alert.kind, alert.endpoint, alert.at);
        self.send_json(id, alert.kind, &alert);
    }

    /// Sends a `plugin.failing` alert in the background.
    pub fn send_plugin(&self, alert: PluginFailingAlert) {
        let id = format!("alert_{}_{}_{}", alert.kind, alert.plugin, alert.at);
        self.send_json(id, alert.kind, &alert);
    }

    fn send_json(&self, id: String, kind: &'static str, alert: &impl Serialize) {
        let body = match serde_json::to_vec(alert) {
            Ok(body) => body,
            Err(e) => return tracing::error!(error = %e, "Could not encode an alert."),
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Some((queue, wake)) = &this.queue {
                match enqueue(queue, kind, &body).await {
                    Ok(()) => return wake.notify_one(),
                    Err(e) => tracing::warn!(error = %e, "Could not queue an alert; sending it from memory."),
                }
            }
            this.send_now(id, body).await
        });
    }

    async fn send_now(&self, alert_id: String, body: Vec<u8>) {
        for (attempt, delay) in std::iter::once(Duration::ZERO).chain(ALERT_RETRIES).enumerate() {
            tokio::time::sleep(delay).await;
            let mut request = self
                .client
                .post(self.url.clone())
                .timeout(ALERT_TIMEOUT)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(secret) = &self.secret {
                let timestamp = crate::clock::unix_seconds();
                request = request
                    .header("webhook-id", &alert_id)
                    .header("webhook-timestamp", timestamp)
                    .header("webhook-signature", secret.sign(&alert_id, timestamp, &body));
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => {
                    tracing::warn!(attempt, status = response.status().as_u16(), "Alert receiver refused the alert.")
                }
                Err(e) => tracing::warn!(attempt, error = %super::error_chain(&e), "Alert could not be sent."),
            }
        }
        tracing::error!(%alert_id, url = %crate::redact::url(&self.url), "Gave up sending an alert.");
    }
}

/// Stores an alert as an event of the source `_alerts` with one delivery to [`ALERTS_ENDPOINT`].
async fn enqueue(queue: &Store, kind: &str, body: &[u8]) -> Result<(), crate::queue::QueueError> {
    let event = crate::id::new_event();
    let stored = NewEvent {
        id: event,
        source: ALERTS_ENDPOINT,
        event_type: kind,
        headers: &[],
        payload: body,
        idempotency: None,
    };
    let delivery = NewDelivery {
        id: crate::id::delivery_of(event, 1),
        endpoint: Arc::from(ALERTS_ENDPOINT),
        payload: None,
        headers: Vec::new(),
        delay: Duration::ZERO,
    };
    queue.enqueue(&stored, &[delivery]).await
}
