//! Configuration: the serde model of `sluice.toml`, its loading (built-in defaults → TOML file →
//! `SLUICE_*` environment) and its validation.
//!
//! Loading and validation are separate steps: [`load`] fails on syntax, unknown keys and wrong types
//! (figment names the key), and [`Config::validate`] then reports every semantic problem at once, each
//! with the path of the key it concerns.
//!
//! - [`process`]: the process-wide sections (`[server]`, `[redis]`, `[queue]`, `[admin]`, `[retry]`,
//!   `[alerts]`, `[security]`, `[wasm]`).
//! - [`history`]: `[history]`, finished deliveries in PostgreSQL.
//! - [`pipeline`]: what events flow through (`[[sources]]`, `[[endpoints]]`, `[[routes]]`, `[[plugins]]`).
//! - `validate` (private): [`Config::validate`], every semantic check.

mod history;
mod pipeline;
mod process;
mod validate;

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use history::HistoryConfig;
pub use pipeline::{EndpointConfig, PluginConfig, RouteConfig, SignatureScheme, SourceConfig};
pub use process::{
    AdminConfig, AlertsConfig, Backend, QueueConfig, RedisConfig, RetryConfig, SecurityConfig, ServerConfig, WasmConfig,
};

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
}
