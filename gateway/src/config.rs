//! Configuration: the serde model of `sluice.toml`, its loading (built-in defaults → TOML file →
//! `SLUICE_*` environment) and its validation.
//!
//! Loading and validation are separate steps: [`load`] fails on syntax, unknown keys and wrong types
//! (figment names the key), and [`Config::validate`] then reports every semantic problem at once, each
//! with the path of the key it concerns.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::delivery::client::DestinationGuard;
use crate::delivery::sign::Secret;
use crate::route::TypePattern;

/// Errors from loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, a key is unknown, or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The configuration parsed but is inconsistent; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration of one gateway process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP server: where it listens and what it accepts.
    pub server: ServerConfig,
    /// The Redis server that holds the queue (with the `redis` backend). Given or not, it decides the
    /// backend when `queue.backend` is absent: see [`Config::backend`].
    pub redis: Option<RedisConfig>,
    /// Queue and worker tuning.
    pub queue: QueueConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// The default retry schedule of every endpoint.
    pub retry: RetryConfig,
    /// Where dead-letter alerts go.
    pub alerts: AlertsConfig,
    /// Outbound safety switches.
    pub security: SecurityConfig,
    /// Event sources and how each proves its requests (bearer token or sender signature).
    pub sources: Vec<SourceConfig>,
    /// Subscriber endpoints, each with a unique name.
    pub endpoints: Vec<EndpointConfig>,
    /// Routes: which events go through which plugins to which endpoints.
    pub routes: Vec<RouteConfig>,
    /// Wasm plugins, each with a unique name.
    pub plugins: Vec<PluginConfig>,
    /// Settings shared by all plugins.
    pub wasm: WasmConfig,
}

/// `[wasm]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// Keep compiled plugins on disk, so a restart does not compile them again (a JavaScript or
    /// Python component takes seconds). Default true.
    pub cache: bool,
    /// Where compiled plugins are kept. Default `$XDG_CACHE_HOME/sluice/wasm`, else
    /// `$HOME/.cache/sluice/wasm`.
    pub cache_dir: Option<PathBuf>,
    /// Plugin threads: every plugin call runs on one of them, never on the threads that serve HTTP
    /// and deliveries. Default: the number of cores.
    pub threads: Option<usize>,
    /// Most events whose plugin work may wait for a plugin thread; past it, ingest answers `503
    /// plugins_busy` with `retry-after` instead of queueing without limit. Default 64.
    pub max_queued: usize,
    /// Most bytes the host takes out of one plugin call's verdict (payloads, headers, strings and
    /// list entries, counted as the host copies them); more fails the event with 422 before it is
    /// copied. Default twice `server.max_body_bytes`.
    pub max_output_bytes: Option<usize>,
    /// Put a failing plugin's own words (its error, panic message or traceback) in the 422 the
    /// producer gets. With `false` the producer gets the plugin's name, the kind and an `error_id`
    /// that the gateway's log line also carries. Default true.
    pub expose_errors: bool,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            cache: true,
            cache_dir: None,
            threads: None,
            max_queued: 64,
            max_output_bytes: None,
            expose_errors: true,
        }
    }
}

impl WasmConfig {
    /// Plugin threads in use: `threads`, else the number of cores.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1)
    }

    /// `max_output_bytes`, else twice `max_body_bytes`.
    pub fn output_limit(&self, max_body_bytes: usize) -> usize {
        self.max_output_bytes.unwrap_or(max_body_bytes.saturating_mul(2))
    }

    /// The cache directory in use, `None` when caching is off or no home directory is known.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if !self.cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("sluice").join("wasm"))
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted event body in bytes; larger bodies get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long an `idempotency-key` is remembered: a repeat within this window gets the first
    /// answer instead of a new event. Default `24h`.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key Sluice writes. Default `sluice`.
    pub prefix: String,
    /// Connect and response timeout of one Redis call. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[queue]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Where deliveries wait: `embedded` (one local file, a single gateway) or `redis` (shared by
    /// any number of gateways). Default: `redis` when a `[redis]` section is given, else `embedded`.
    pub backend: Option<Backend>,
    /// The embedded store's file. Relative paths are resolved against the config file's directory.
    /// Default `$XDG_DATA_HOME/sluice/queue.redb`, else `$HOME/.local/share/sluice/queue.redb`, else
    /// `sluice-data/queue.redb` in the working directory.
    pub path: Option<PathBuf>,
    /// Embedded backend: most memory the store's page cache may use, in MiB. Default 128.
    pub cache_mb: usize,
    /// Number of shards (sorted sets with distinct hash tags). Fixed once data exists. One is fastest
    /// on a single Redis; more spread the load over a Redis Cluster. Default 1.
    pub shards: u32,
    /// How long a claimed delivery stays leased to one worker. Must exceed every endpoint timeout
    /// by at least 5 s. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Most deliveries claimed in one round trip. Default 128.
    pub batch: usize,
    /// Most deliveries in flight in this process. Default 512.
    pub concurrency: usize,
    /// Replays per second when all dead letters of an endpoint are replayed at once. Default 100.
    pub replay_rate: u32,
    /// How long finished deliveries and events are kept for the admin API. Default `7d`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

/// The queue backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One local redb file: no other service, one gateway.
    Embedded,
    /// Redis or Redis Cluster: several gateways share it.
    Redis,
}

impl QueueConfig {
    /// The embedded store's file: `path` when given, else the default under the data directory.
    pub fn path(&self) -> PathBuf {
        if let Some(path) = &self.path {
            return path.clone();
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("share")));
        match data {
            Some(dir) => dir.join("sluice").join("queue.redb"),
            None => PathBuf::from("sluice-data").join("queue.redb"),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required by the admin API. Without it the admin API answers 401.
    pub token: Option<String>,
}

/// `[retry]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delay before each attempt: the first entry for the first attempt, so N entries = N attempts.
    /// Default `["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]`.
    #[serde(with = "durations")]
    pub schedule: Vec<Duration>,
    /// Random spread applied to each delay, as a fraction: 0.1 = ±10 %. Default 0.1.
    pub jitter: f64,
}

/// `[alerts]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// URL that receives a JSON POST for every dead-lettered delivery.
    pub url: Option<Url>,
    /// Secret (`whsec_…`) used to sign alerts like deliveries; unsigned when absent.
    pub secret: Option<String>,
    /// `plugin.failing` fires when this fraction of a plugin's calls in one window fail. Default 0.5.
    pub plugin_error_rate: f64,
    /// ... and the window saw at least this many calls. Default 20.
    pub plugin_min_calls: u64,
    /// The window over which a plugin's error rate is measured. Default `1m`.
    #[serde(with = "humantime_serde")]
    pub plugin_window: Duration,
    /// Delay before each attempt to deliver an alert (alerts are queued like deliveries, to the
    /// internal endpoint `_alerts`). Default `["0s", "1s", "5s", "30s", "2m", "10m", "30m", "1h", "2h", "6h"]`.
    #[serde(with = "durations")]
    pub retry_schedule: Vec<Duration>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            plugin_error_rate: 0.5,
            plugin_min_calls: 20,
            plugin_window: Duration::from_secs(60),
            retry_schedule: ["0s", "1s", "5s", "30s", "2m", "10m", "30m", "1h", "2h", "6h"]
                .iter()
                .map(|s| humantime::parse_duration(s).unwrap_or_default())
                .collect(),
        }
    }
}

/// `[security]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Allow deliveries to loopback, private, link-local and other non-public addresses. Default false.
    pub allow_private_destinations: bool,
    /// Non-public networks (CIDR, e.g. `"10.1.0.0/16"`, `"127.0.0.1/32"`, `"fd00::/8"`) deliveries may
    /// reach although `allow_private_destinations` is false. Default none.
    pub allowed_destinations: Vec<IpNet>,
    /// Accept events for sources with no `[[sources]]` entry (or an entry with no credential).
    /// Default false: every source must check a token or a signature.
    pub allow_unauthenticated_sources: bool,
}

impl SecurityConfig {
    /// The destination guard these settings describe.
    pub fn guard(&self) -> DestinationGuard {
        DestinationGuard { allow_private: self.allow_private_destinations, allowed: self.allowed_destinations.clone() }
    }
}

/// `[[sources]]`: one event source (`POST /v1/events/{name}`) and its credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Unique name, used by routes and plugins.
    pub name: String,
    /// Where deliveries are POSTed (http or https).
    pub url: Url,
    /// Signing secret, `whsec_<base64>` (Standard Webhooks).
    pub secret: String,
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            idempotency_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl RedisConfig {
    /// The URL with its password (if any) masked, for messages.
    pub fn url_for_display(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            Ok(url) => url.to_string(),
            Err(_) => "(unparsable URL)".to_string(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".to_string(),
            prefix: "sluice".to_string(),
            timeout: Duration::from_secs(2),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: None,
            path: None,
            cache_mb: 128,
            shards: 1,
            lease: Duration::from_secs(60),
            batch: 128,
            concurrency: 512,
            replay_rate: 100,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        let schedule = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
            .iter()
            .map(|s| humantime::parse_duration(s).unwrap_or_default())
            .collect();
        Self { schedule, jitter: 0.1 }
    }
}

/// The smallest margin by which a lease must outlast an endpoint's timeout.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Loads the configuration: built-in defaults, then the TOML file (if given), then `SLUICE_*`
/// environment variables (`SLUICE_SERVER__LISTEN` overrides `server.listen`). Relative plugin paths
/// are resolved against the file's directory.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::Invalid(vec![format!("config file {} does not exist", path.display())]));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let figment = figment.merge(Env::prefixed("SLUICE_").split("__"));
    let mut config: Config = figment.extract().map_err(Box::new)?;
    if let Some(dir) = path.and_then(Path::parent) {
        for plugin in &mut config.plugins {
            if plugin.path.is_relative() {
                plugin.path = dir.join(&plugin.path);
            }
        }
        if let Some(store) = config.queue.path.as_mut().filter(|p| p.is_relative()) {
            *store = dir.join(&*store);
        }
    }
    Ok(config)
}

/// Parses a configuration from TOML text alone (no file, no environment); for tests and tools.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Load(Box::new(e)))
}

impl Config {
    /// The queue backend: `queue.backend` when given, else `redis` when a `[redis]` section is
    /// given, else `embedded`.
    pub fn backend(&self) -> Backend {
        self.queue.backend.unwrap_or(if self.redis.is_some() { Backend::Redis } else { Backend::Embedded })
    }

    /// The `[redis]` settings, with their defaults when the section is absent.
    pub fn redis_settings(&self) -> RedisConfig {
        self.redis.clone().unwrap_or_default()
    }

    /// Checks everything that types alone cannot: names, references, secrets, URLs, timings.
    /// Returns every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.validate_sections(&mut problems);
        let endpoints = unique_names(self.endpoints.iter().map(|e| e.name.as_str()), "endpoints", &mut problems);
        let plugins = unique_names(self.plugins.iter().map(|p| p.name.as_str()), "plugins", &mut problems);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            self.validate_endpoint(i, endpoint, &mut problems);
        }
        self.validate_sources(&mut problems);
        for (i, route) in self.routes.iter().enumerate() {
            validate_route(i, route, &endpoints, &plugins, &mut problems);
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", plugin.name);
            if !plugin.config.is_object() {
                problems.push(format!("{at}.config: must be a table"));
            }
            if plugin.deadline.is_zero() || plugin.startup_deadline.is_zero() {
                problems.push(format!("{at}.deadline and startup_deadline: must be greater than zero"));
            }
            if plugin.max_memory_mb == 0 || plugin.max_memory_mb > 4096 {
                problems.push(format!("{at}.max_memory_mb: must be between 1 and 4096"));
            }
            if plugin.max_calls_per_instance == 0 {
                problems.push(format!("{at}.max_calls_per_instance: must be at least 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_sections(&self, problems: &mut Vec<String>) {
        match self.backend() {
            Backend::Redis => {
                let redis = self.redis_settings();
                if let Err(e) = redis::Client::open(redis.url.as_str()) {
                    problems.push(format!("redis.url: {e}"));
                }
                if redis.prefix.is_empty() || redis.prefix.contains(['{', '}']) {
                    problems.push("redis.prefix: must be non-empty and free of `{` and `}`".to_string());
                }
            }
            Backend::Embedded => {
                if self.queue.shards != 1 {
                    problems.push(
                        "queue.shards: applies to the redis backend only; the embedded backend keeps one ordered \
                         table (leave shards at 1, or set queue.backend = \"redis\")"
                            .to_string(),
                    );
                }
                if self.queue.cache_mb == 0 || self.queue.cache_mb > 65_536 {
                    problems.push("queue.cache_mb: must be between 1 and 65536".to_string());
                }
                if self.queue.path.as_ref().is_some_and(|p| p.as_os_str().is_empty() || p.is_dir()) {
                    problems.push("queue.path: must name a file (the embedded store), not a directory".to_string());
                }
            }
        }
        if self.queue.shards == 0 || self.queue.shards > 1024 {
            problems.push("queue.shards: must be between 1 and 1024".to_string());
        }
        if self.queue.batch == 0 || self.queue.concurrency == 0 {
            problems.push("queue.batch and queue.concurrency: must be at least 1".to_string());
        }
        if self.server.max_body_bytes == 0 {
            problems.push("server.max_body_bytes: must be at least 1".to_string());
        }
        if matches!(self.wasm.threads, Some(n) if n == 0 || n > 1024) {
            problems.push("wasm.threads: must be between 1 and 1024".to_string());
        }
        if self.wasm.max_output_bytes == Some(0) {
            problems.push("wasm.max_output_bytes: must be at least 1".to_string());
        }
        validate_schedule("retry.schedule", &self.retry.schedule, problems);
        validate_schedule("alerts.retry_schedule", &self.alerts.retry_schedule, problems);
        if !(0.0..1.0).contains(&self.retry.jitter) {
            problems.push("retry.jitter: must be at least 0 and below 1".to_string());
        }
        if let Some(url) = &self.alerts.url {
            validate_url("alerts.url", url, problems);
        }
        if !(self.alerts.plugin_error_rate > 0.0 && self.alerts.plugin_error_rate <= 1.0) {
            problems.push("alerts.plugin_error_rate: must be above 0 and at most 1".to_string());
        }
        if self.alerts.plugin_window.is_zero() {
            problems.push("alerts.plugin_window: must be greater than zero".to_string());
        }
        if let Some(secret) = &self.alerts.secret {
            if let Err(e) = Secret::parse(secret) {
                problems.push(format!("alerts.secret: {e}"));
            }
        }
        if matches!(&self.admin.token, Some(t) if t.len() < 8) {
            problems.push("admin.token: must be at least 8 characters".to_string());
        }
    }

    fn validate_endpoint(&self, i: usize, endpoint: &EndpointConfig, problems: &mut Vec<String>) {
        let at = format!("endpoints[{i}] ({})", endpoint.name);
        if endpoint.name.starts_with('_') {
            problems.push(format!(
                "{at}.name: names starting with `_` are reserved (`{}` carries alerts)",
                crate::delivery::alert::ALERTS_ENDPOINT
            ));
        }
        validate_url(&format!("{at}.url"), &endpoint.url, problems);
        if let Err(e) = Secret::parse(&endpoint.secret) {
            problems.push(format!("{at}.secret: {e}"));
        }
        if endpoint.timeout.is_zero() {
            problems.push(format!("{at}.timeout: must be greater than zero"));
        }
        if endpoint.timeout + LEASE_MARGIN > self.queue.lease {
            problems.push(format!(
                "{at}.timeout: {} plus a {}s margin exceeds queue.lease ({}); a lease shorter than a request \
                 would let a second worker deliver the same attempt",
                humantime::format_duration(endpoint.timeout),
                LEASE_MARGIN.as_secs(),
                humantime::format_duration(self.queue.lease)
            ));
        }
        if let Some(schedule) = &endpoint.retry_schedule {
            validate_schedule(&format!("{at}.retry_schedule"), schedule, problems);
        }
        if endpoint.max_in_flight == Some(0) {
            problems.push(format!("{at}.max_in_flight: must be at least 1"));
        }
        if endpoint.rate_limit.is_some_and(|r| !r.is_finite() || r < 0.001) {
            problems.push(format!("{at}.rate_limit: must be a number of attempts per second, at least 0.001"));
        }
    }

    fn validate_sources(&self, problems: &mut Vec<String>) {
        let names = unique_names(self.sources.iter().map(|s| s.name.as_str()), "sources", problems);
        let routed: HashSet<&str> = self.routes.iter().map(|r| r.source.as_str()).collect();
        for (i, source) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}] ({})", source.name);
            if !source.name.is_empty() && !routed.contains(source.name.as_str()) {
                problems.push(format!("{at}: no route serves this source"));
            }
            match (&source.token, source.verify, &source.secret) {
                (Some(_), Some(_), _) => problems.push(format!("{at}: set either token or verify, not both")),
                (Some(token), None, secret) => {
                    if token.len() < 16 {
                        problems.push(format!("{at}.token: must be at least 16 characters"));
                    }
                    if secret.is_some() {
                        problems.push(format!("{at}.secret: only used with verify; a token source has no secret"));
                    }
                }
                (None, Some(_), None) => problems.push(format!("{at}.secret: required with verify")),
                (None, Some(SignatureScheme::StandardWebhooks), Some(secret)) => {
                    if let Err(e) = Secret::parse(secret) {
                        problems.push(format!("{at}.secret: {e}"));
                    }
                }
                (None, Some(_), Some(secret)) => {
                    if secret.len() < 8 {
                        problems.push(format!("{at}.secret: must be at least 8 characters"));
                    }
                }
                (None, None, _) if !self.security.allow_unauthenticated_sources => problems.push(format!(
                    "{at}: has neither token nor verify; set one, or set security.allow_unauthenticated_sources = true"
                )),
                (None, None, _) => {}
            }
        }
        if !self.security.allow_unauthenticated_sources {
            let mut missing: Vec<&str> = routed.iter().copied().filter(|s| !names.contains(s)).collect();
            missing.sort_unstable();
            for source in missing {
                problems.push(format!(
                    "routes: source `{source}` has no [[sources]] entry with a token or signature check; add one, \
                     or set security.allow_unauthenticated_sources = true"
                ));
            }
        }
    }

    /// The endpoint named `name`, if configured.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

fn validate_route(
    i: usize,
    route: &RouteConfig,
    endpoints: &HashSet<&str>,
    plugins: &HashSet<&str>,
    problems: &mut Vec<String>,
) {
    let at = format!("routes[{i}] ({})", route.source);
    if route.source.is_empty() || !route.source.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        problems.push(format!("{at}.source: must be non-empty ASCII letters, digits, `-`, `_` or `.`"));
    }
    if route.event_types.is_empty() {
        problems.push(format!("{at}.event_types: must list at least one pattern (\"*\" for all)"));
    }
    for pattern in &route.event_types {
        if let Err(e) = TypePattern::parse(pattern) {
            problems.push(format!("{at}.event_types: {e}"));
        }
    }
    for name in &route.endpoints {
        if !endpoints.contains(name.as_str()) {
            problems.push(format!("{at}.endpoints: unknown endpoint `{name}`"));
        }
    }
    for name in &route.plugins {
        if !plugins.contains(name.as_str()) {
            problems.push(format!("{at}.plugins: unknown plugin `{name}`"));
        }
    }
    if route.endpoints.is_empty() && route.plugins.is_empty() {
        problems.push(format!("{at}: names neither endpoints nor plugins, so it can deliver nothing"));
    }
}

fn unique_names<'a>(names: impl Iterator<Item = &'a str>, what: &str, problems: &mut Vec<String>) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.is_empty() {
            problems.push(format!("{what}[{i}].name: must not be empty"));
        } else if !seen.insert(name) {
            problems.push(format!("{what}[{i}].name: `{name}` is used twice"));
        }
    }
    seen
}

fn validate_url(at: &str, url: &Url, problems: &mut Vec<String>) {
    if !matches!(url.scheme(), "http" | "https") {
        problems.push(format!("{at}: scheme must be http or https, not `{}`", url.scheme()));
    }
    if url.host().is_none() {
        problems.push(format!("{at}: has no host"));
    }
}

fn validate_schedule(at: &str, schedule: &[Duration], problems: &mut Vec<String>) {
    if schedule.is_empty() {
        problems.push(format!("{at}: must have at least one entry (one per attempt)"));
    }
    if schedule.len() > 100 {
        problems.push(format!("{at}: at most 100 attempts"));
    }
}

/// (De)serialises a list of human-readable durations such as `["0s", "5m"]`.
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(value.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))))
            .collect()
    }
}

/// Like [`durations`], for an optional list.
mod opt_durations {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<Duration>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::durations::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
        super::durations::deserialize(d).map(Some)
    }
}
