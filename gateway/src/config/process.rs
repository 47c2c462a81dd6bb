//! The process-wide sections of the config: where the gateway listens, which store holds the queue,
//! admin, retry defaults, alerts, outbound security and the shared Wasm settings, each with its
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

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
    /// How long a client has to send a request's headers, counted from when the server starts
    /// waiting for them; then the connection is closed. The wait for the next request on an idle
    /// keep-alive connection counts too, so this is also the idle timeout. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's body once its headers are in; then 408. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most inbound connections open at once; past it, new connections wait in the listen backlog.
    /// Default: derived from the process's file limit, leaving descriptors for deliveries, the
    /// store and Redis (see [`ServerConfig::connection_cap`]).
    pub max_connections: Option<usize>,
}

impl ServerConfig {
    /// Descriptors kept free of inbound connections: deliveries in flight and idle (per
    /// `queue.concurrency`, plus the idle pool), Redis, the store, plugin and log files.
    pub fn reserved_descriptors(queue_concurrency: usize) -> u64 {
        queue_concurrency as u64 + 256 + 64
    }

    /// `max_connections`, else the soft file limit less [`Self::reserved_descriptors`] (at least
    /// 16), with `limit` the soft `RLIMIT_NOFILE` (`None` when unknown: 10,000).
    pub fn connection_cap(&self, limit: Option<u64>, queue_concurrency: usize) -> usize {
        if let Some(cap) = self.max_connections {
            return cap;
        }
        match limit {
            Some(limit) => {
                limit.saturating_sub(Self::reserved_descriptors(queue_concurrency)).clamp(16, 1 << 20) as usize
            }
            None => 10_000,
        }
    }
}

/// `[redis]`
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Prefix of every key Sluice writes. Default `sluice`.
    pub prefix: String,
    /// Connect and response timeout of one Redis call. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each). When set, Sluice talks to the
    /// cluster (slots, MOVED/ASK redirects, topology refreshed after a failover) and `url` is not
    /// used. Default: none (one Redis at `url`).
    pub cluster_nodes: Vec<String>,
    /// Replicas that must hold each enqueue and settlement before it is answered (`WAIT`): with
    /// 1, a 202 survives the loss of its primary. Default 0 (the primary alone).
    pub replicas_ack: u32,
    /// Longest wait for `replicas_ack` replicas; past it the enqueue answers 503 (the event may
    /// still be stored: an idempotency key settles which). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub replicas_timeout: Duration,
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
    /// How long a dead letter is kept (replayable, listed) before it is removed with its record, so
    /// a store that never evicts does not fill up with them. Default `30d`.
    #[serde(with = "humantime_serde")]
    pub dead_retention: Duration,
    /// How often each endpoint's deliveries are summed up in one INFO line (succeeded, failed
    /// attempts by outcome, mean latency); each delivery's own line is at DEBUG. `0s`: never.
    /// Default `60s`.
    #[serde(with = "humantime_serde")]
    pub log_summary_every: Duration,
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
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required by the admin API. Without it the admin API answers 401.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    // Written out so the token never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("token", &crate::redact::Hidden(&self.token)).finish()
    }
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

/// The internal endpoint (and source) alerts are queued for: alerts ride the same queue and worker
/// as deliveries.
pub const ALERTS_ENDPOINT: &str = "_alerts";

/// `[alerts]`
#[derive(Clone, Serialize, Deserialize)]
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

impl std::fmt::Debug for AlertsConfig {
    // Written out so the secret and any credentials in the URL never print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("url", &self.url.as_ref().map(crate::redact::url))
            .field("secret", &crate::redact::Hidden(&self.secret))
            .field("plugin_error_rate", &self.plugin_error_rate)
            .field("plugin_min_calls", &self.plugin_min_calls)
            .field("plugin_window", &self.plugin_window)
            .field("retry_schedule", &self.retry_schedule)
            .finish()
    }
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            idempotency_window: Duration::from_secs(24 * 3600),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: None,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    // Written out so a password in the URL never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url_for_display())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("cluster_nodes", &self.cluster_nodes.iter().map(|n| crate::redact::url_text(n)).collect::<Vec<_>>())
            .field("replicas_ack", &self.replicas_ack)
            .field("replicas_timeout", &self.replicas_timeout)
            .finish()
    }
}

impl RedisConfig {
    /// The URL with its password (if any) masked, for messages.
    pub fn url_for_display(&self) -> String {
        crate::redact::url_text(&self.url)
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".to_string(),
            prefix: "sluice".to_string(),
            timeout: Duration::from_secs(2),
            cluster_nodes: Vec::new(),
            replicas_ack: 0,
            replicas_timeout: Duration::from_secs(1),
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
            dead_retention: Duration::from_secs(30 * 24 * 3600),
            log_summary_every: Duration::from_secs(60),
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
/// (De)serialises a list of human-readable durations such as `["0s", "5m"]`.
pub(super) mod durations {
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
pub(super) mod opt_durations {
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
