//! Configuration: the serde model of `sluice.toml`, its loading (built-in defaults → TOML file →
//! `SLUICE_*` environment) and its validation.
//!
//! Loading and validation are separate steps: [`load`](fn@load) fails on syntax, unknown keys and
//! wrong types, each reported once with its key, file and line, all of them in one pass; and
//! [`Config::validate`] then reports every semantic problem at once, each with the path of the key
//! it concerns. [`report`] gives both kinds at once, for `sluice check`.
//!
//! - [`process`]: the process-wide sections (`[server]`, `[redis]`, `[queue]`, `[admin]`, `[retry]`,
//!   `[alerts]`, `[security]`, `[wasm]`).
//! - [`history`]: `[history]`, finished deliveries in PostgreSQL.
//! - [`pipeline`]: what events flow through (`[[sources]]`, `[[endpoints]]`, `[[routes]]`, `[[plugins]]`).
//! - [`load`](fn@load) and [`report`]: reading the file and the environment, every problem in one pass.
//! - [`Shown`]: the configuration as `GET /v1/config` shows it (secrets masked, a content hash), and
//!   [`plan`](fn@plan): what applying another one would change.
//! - `validate` (private): [`Config::validate`], every semantic check.

mod history;
mod load;
mod pipeline;
mod plan;
mod process;
mod shown;
mod validate;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use history::HistoryConfig;
pub use load::{from_toml, load, report, Report};
pub use pipeline::{EndpointConfig, OnError, PluginConfig, PreviousSecret, RouteConfig, SignatureScheme, SourceConfig};
pub use plan::{needs_restart, plan, Plan, Running, RELOADABLE};
pub use process::{
    AdminConfig, AlertsConfig, Backend, QueueConfig, RedisConfig, RetryConfig, SecurityConfig, ServerConfig,
    WasmConfig, ALERTS_ENDPOINT,
};
pub use shown::Shown;

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
    /// Finished deliveries in PostgreSQL (optional): see [`HistoryConfig`].
    pub history: Option<HistoryConfig>,
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

/// The smallest margin by which a lease must outlast an endpoint's timeout.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

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
}
