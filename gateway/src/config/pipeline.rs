//! What events flow through: sources and their credentials, endpoints, routes and plugins.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::process::opt_durations;

/// `[[sources]]`: one event source (`POST /v1/events/{name}`) and its credential.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source name, as in the ingest URL and `[[routes]] source`.
    pub name: String,
    /// Require `Authorization: Bearer <token>` (at least 16 characters), compared in constant time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Verify the sender's signature instead of a token: `"github"`, `"stripe"` or `"standard-webhooks"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SignatureScheme>,
    /// The signing secret shared with the sender (`whsec_…` for Standard Webhooks; GitHub's webhook
    /// secret; Stripe's endpoint secret as shown by Stripe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Largest accepted distance between a signature's timestamp and now (Stripe, Standard
    /// Webhooks; GitHub signs no timestamp). Default `5m`, as both specify.
    #[serde(default = "default_signature_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
    /// Most events per second this source may send to this process (fractions allowed; bursts of
    /// up to one second's worth); past it, 429 with `retry-after` and nothing stored. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
}

impl std::fmt::Debug for SourceConfig {
    // Written out so the token and the secret never print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("token", &crate::redact::Hidden(&self.token))
            .field("verify", &self.verify)
            .field("secret", &crate::redact::Hidden(&self.secret))
            .field("tolerance", &self.tolerance)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// A sender's signature scheme that a source can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(rename = "github")]
    GitHub,
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
    #[serde(rename = "stripe")]
    Stripe,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
}

/// `[[endpoints]]`
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique name, used by routes and plugins.
    pub name: String,
    /// Where deliveries are POSTed (http or https).
    pub url: Url,
    /// Signing secret, `whsec_<base64>` (Standard Webhooks).
    pub secret: String,
    /// Secrets being rotated out: until its `until`, each delivery also carries a signature made
    /// with it (`webhook-signature` holds one per secret, space-separated, as the Standard Webhooks
    /// spec allows), so a receiver verifies with either while it switches. Past `until` it is no
    /// longer used, with nothing to edit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
    /// Timeout of one delivery attempt. Default `30s`.
    #[serde(default = "default_endpoint_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// This endpoint's retry schedule; `[retry] schedule` when absent.
    #[serde(default, with = "opt_durations", skip_serializing_if = "Option::is_none")]
    pub retry_schedule: Option<Vec<Duration>>,
    /// Most attempts to this endpoint in flight at once, per gateway process. Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Most attempts per second to this endpoint, per gateway process, evenly spaced (fractions
    /// allowed: 0.5 = one every 2 s). Default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Circuit breaker: disable the endpoint once its attempts have failed without a success for this
    /// long (`"0s"`: never). Default `5d`.
    #[serde(default = "default_disable_after", with = "humantime_serde")]
    pub disable_after: Duration,
}

/// A signing secret being rotated out: see [`EndpointConfig::previous_secrets`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    /// The old secret, `whsec_<base64>`.
    pub secret: String,
    /// When deliveries stop carrying its signature (RFC 3339, e.g. `2026-12-31T00:00:00Z`).
    #[serde(with = "humantime_serde")]
    pub until: std::time::SystemTime,
}

impl std::fmt::Debug for PreviousSecret {
    // Written out so the secret never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("secret", &crate::redact::MASK)
            .field("until", &humantime::format_rfc3339_seconds(self.until))
            .finish()
    }
}

impl std::fmt::Debug for EndpointConfig {
    // Written out so the secret and any credentials in the URL never print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &crate::redact::url(&self.url))
            .field("secret", &crate::redact::MASK)
            .field("previous_secrets", &self.previous_secrets)
            .field("timeout", &self.timeout)
            .field("retry_schedule", &self.retry_schedule)
            .field("max_in_flight", &self.max_in_flight)
            .field("rate_limit", &self.rate_limit)
            .field("disable_after", &self.disable_after)
            .finish()
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The source this route serves: `POST /v1/events/{source}`.
    pub source: String,
    /// Event types this route takes, `*` matching any run of characters. Default `["*"]`.
    #[serde(default = "default_event_types")]
    pub event_types: Vec<String>,
    /// Plugins to run, in order, as a chain.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Endpoints that receive what passes the chain.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// `[[plugins]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name, used by routes and in error messages.
    pub name: String,
    /// Path of the `.wasm` component (relative paths are relative to the config file).
    pub path: PathBuf,
    /// Table handed to the plugin as JSON on every call.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
    /// Wall-clock deadline of one call. Default `100ms`.
    #[serde(default = "default_plugin_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Wall-clock deadline of making a fresh instance (the plugin's start-up code, e.g. a JavaScript
    /// or Python runtime initialising). Default `1s`.
    #[serde(default = "default_plugin_startup", with = "humantime_serde")]
    pub startup_deadline: Duration,
    /// Linear memory cap of one instance, in MiB. Default 64.
    #[serde(default = "default_plugin_memory")]
    pub max_memory_mb: u32,
    /// Calls one warm instance serves before it is replaced; 1 gives every call a fresh instance
    /// (strict isolation between events, at tens of µs per call). Default 1000.
    #[serde(default = "default_plugin_reuse")]
    pub max_calls_per_instance: u32,
    /// Let the plugin read the wall and monotonic clocks. Without it both read zero. Plugins never
    /// get files, environment variables or network. Default false.
    #[serde(default)]
    pub grant_clock: bool,
    /// What a failed call (trap, deadline, memory cap, an error returned, output over the limits)
    /// does to the event: `reject` (default) refuses it with 422; `skip` goes on with the chain as
    /// if this plugin had passed the event unchanged, counted (`sluice_plugin_skipped_total`) and
    /// logged. For a plugin whose work is optional (enrichment, tagging): availability over
    /// strictness.
    #[serde(default)]
    pub on_error: OnError,
    /// A candidate version of this plugin (`.wasm`), run in the shadow of the live one: each live
    /// call also runs it on the same event, on a spare plugin thread and within this plugin's
    /// limits, and compares the verdicts; what it returns never reaches a delivery. See `GET
    /// /v1/plugins/{name}/shadow`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<PathBuf>,
    /// Share of live calls the candidate also runs on, 0 to 1. Default 1.
    #[serde(default = "default_shadow_rate")]
    pub shadow_rate: f64,
}

fn default_shadow_rate() -> f64 {
    1.0
}

/// What a plugin's failed call does to its event: see [`PluginConfig::on_error`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse the event (HTTP 422), as without the setting.
    #[default]
    Reject,
    /// Go on as if the plugin had passed the event unchanged.
    Skip,
}

fn default_endpoint_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_disable_after() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}
fn default_signature_tolerance() -> Duration {
    Duration::from_secs(300)
}
fn default_event_types() -> Vec<String> {
    vec!["*".to_string()]
}
fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_plugin_deadline() -> Duration {
    Duration::from_millis(100)
}
fn default_plugin_startup() -> Duration {
    Duration::from_secs(1)
}
fn default_plugin_memory() -> u32 {
    64
}
fn default_plugin_reuse() -> u32 {
    1000
}
