//! Sluice: a self-hosted webhook gateway.
//!
//! An event arrives over HTTP, Wasm plugins filter, transform or route it, each resulting delivery
//! waits in the queue (a Redis sorted set, or an embedded redb file) keyed by its next-attempt time, and a worker POSTs it, signed, to its
//! endpoint, retrying on the endpoint's schedule until a 2xx, or dead-lettering it and alerting the
//! admin when the schedule runs out.
//!
//! # Layout
//! The modules follow one event through the pipeline:
//!
//! - [`ingest`]: stage 1, HTTP in: limits, JSON, event type, routes → deliveries → queue.
//! - [`plugin`]: stage 2, the Wasm engine and plugin chains.
//! - [`queue`]: stage 3, the queue: Redis (sorted sets, Lua scripts) or embedded (redb), with leases.
//! - [`delivery`]: stage 4, the worker: claim → signed POST → ack / retry / dead letter + alert.
//! - [`history`]: finished deliveries moved to PostgreSQL (`[history]`), read back by the admin API.
//! - [`admin`]: the admin API's lookups. [`http`] serves both and maps errors to statuses.
//! - [`control`]: the running configuration as one value, and its reload (SIGHUP or the admin API).
//! - [`config`], [`route`], [`id`], [`telemetry`], [`redact`]: configuration, the route table, ids,
//!   logging, and keeping credentials out of logs; `clock` (private), wall-clock time shared by
//!   every stage.
//!
//! [`Gateway::start`] wires the stages together with one shutdown signal.
#![deny(missing_docs)]

pub mod admin;
pub(crate) mod clock;
pub mod config;
pub mod control;
pub mod delivery;
pub mod history;
pub mod http;
pub mod id;
pub mod ingest;
pub mod metrics;
pub mod plugin;
pub mod queue;
pub mod redact;
pub mod route;
pub mod signing;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::delivery::Worker;
use crate::http::AppState;
use crate::plugin::{PluginError, PluginSet};
use crate::queue::{QueueError, Store};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// One or more plugins failed to load.
    #[error("plugins failed to load:\n  - {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Plugins(Vec<PluginError>),
    /// The queue could not be opened or holds incompatible data.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The outbound HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The history store (PostgreSQL) could not be set up.
    #[error("history: {0}")]
    History(#[from] history::HistoryError),
}

/// A running gateway: HTTP server and delivery worker.
pub struct Gateway {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Validates `config`, loads plugins, opens the queue, binds the listener and starts serving
    /// and delivering. With no file to read again, a reload is refused (SIGHUP reloads the plugins'
    /// files instead): see [`Gateway::start_file`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, None).await
    }

    /// [`Gateway::start`] with the configuration of the file at `path` (and the environment's
    /// overrides), which SIGHUP and `POST /v1/config/reload` read again.
    pub async fn start_file(path: &std::path::Path) -> Result<Self, StartError> {
        let config = config::load(Some(path))?;
        Self::start_with(config, Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))).await
    }

    async fn start_with(config: Config, file: Option<std::path::PathBuf>) -> Result<Self, StartError> {
        config.validate()?;
        let plugins = Arc::new(
            PluginSet::load(&config.plugins, &config.wasm, config.server.max_body_bytes)
                .map_err(StartError::Plugins)?,
        );
        if config.routes.is_empty() {
            tracing::warn!(
                "No routes configured: every event is refused (unknown source). Pass --config; see config/sluice.toml."
            );
        }
        let queue = Store::open(&config)?;
        let history = config.history.as_ref().map(history::History::open).transpose()?;
        // Redis that does not answer yet is checked once it does (by a task started below).
        let mut check_later = None;
        match &queue {
            Store::Redis(redis) => match redis.check_layout().await {
                Ok(()) => warn_risky_settings(redis).await,
                Err(e @ (QueueError::Layout { .. } | QueueError::ServerTooOld { .. })) => return Err(e.into()),
                // Redis may come later; the gateway answers 503 until it does.
                Err(e) => {
                    tracing::warn!(error = %e, "Redis is not reachable at start-up; ingest answers 503 until it is.");
                    check_later = Some(redis.clone());
                }
            },
            Store::Embedded(store) => {
                tracing::info!(path = %store.path().display(), "Queue: embedded store (single node).")
            }
        }
        let http = delivery::client::build_delivery(delivery::client::DestinationGuard::from(&config.security));
        let alerts_http = delivery::client::build_alerts()?;
        let wake = Arc::new(Notify::new());
        // Before the listener: once a client can see this gateway, SIGHUP means reload.
        let hangup = control::hangup_signal();
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.server.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.server.listen, source })?;

        let (shutdown, watcher) = watch::channel(false);
        let metrics = Arc::new(metrics::Metrics::new(&config));
        let alerter = delivery::alert::Alerter::from_config(&config, alerts_http)
            .map(|alerter| alerter.queued(queue.clone(), wake.clone()));
        let control = Arc::new(Control::new(
            &config,
            plugins,
            control::Parts { file, queue: queue.clone(), wake: wake.clone(), metrics: metrics.clone() },
        ));
        let worker = Worker::new(
            &config,
            queue.clone(),
            http,
            alerter.clone(),
            wake.clone(),
            metrics.clone(),
            control.worker_endpoints(),
        );
        let state = Arc::new(AppState {
            control: control.clone(),
            queue: queue.clone(),
            history: history.clone(),
            admin_token: config.admin.token.clone(),
            replay_spacing: Duration::from_secs_f64(1.0 / f64::from(config.queue.replay_rate.max(1))),
            metrics: metrics.clone(),
            alerter: alerter.clone(),
            expose_plugin_errors: config.wasm.expose_errors,
            admin_throttle: Default::default(),
            limits: http::ConnectionLimits::from_config(&config),
        });
        let mut tasks = Vec::new();
        if let Some(redis) = check_later {
            tasks.push(tokio::spawn(check_when_reachable(redis, shutdown.clone(), watcher.clone())));
        }
        if let (Some(history), Some(settings)) = (history, &config.history) {
            let writer = history::writer::run(queue, history, settings.clone(), watcher.clone());
            tasks.push(tokio::spawn(writer));
        }
        let running_plugins = || {
            let control = control.clone();
            move || control.live().plugins.clone()
        };
        if let Some(alerter) = &alerter {
            let watch =
                plugin::failing::watch(running_plugins(), alerter.clone(), config.alerts.clone(), watcher.clone());
            tasks.push(tokio::spawn(watch));
        }
        tasks.extend([
            tokio::spawn(http::serve(listener, state, watcher.clone())),
            tokio::spawn(plugin::reload::watch(running_plugins(), watcher.clone())),
            tokio::spawn(control.reload_on_hangup(hangup, watcher.clone())),
            tokio::spawn(delivery::summary::run(metrics, config.queue.log_summary_every, watcher.clone())),
            tokio::spawn(worker.run(watcher)),
        ]);
        tracing::info!(%addr, endpoints = config.endpoints.len(), routes = config.routes.len(),
            plugins = config.plugins.len(), "Sluice is listening.");
        Ok(Self { addr, shutdown, tasks })
    }

    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolves when the gateway stopped by itself (a Redis found holding another layout once it
    /// became reachable); the caller should then [`Gateway::shutdown`] and exit non-zero.
    pub async fn stopped(&self) {
        let mut stopped = self.shutdown.subscribe();
        let _ = stopped.wait_for(|stop| *stop).await;
    }

    /// Stops accepting and claiming, and waits for the server and worker loops to end.
    /// Deliveries in flight keep their leases; unfinished ones fall due again when the lease expires.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Logs a WARN for each Redis setting that puts deliveries at risk.
async fn warn_risky_settings(redis: &queue::redis::RedisQueue) {
    for risk in redis.risky_settings().await {
        tracing::warn!("Redis setting puts deliveries at risk: {risk}");
    }
}

/// The start-up checks of a Redis that did not answer at start-up, run once it first does: the
/// shard layout (a mismatch stops the gateway, as it would have refused to start) and the risky
/// settings.
async fn check_when_reachable(
    redis: queue::redis::RedisQueue,
    stop: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match redis.check_layout().await {
            Ok(()) => {
                tracing::info!("Redis is reachable; its layout matches the config.");
                return warn_risky_settings(&redis).await;
            }
            Err(e @ (QueueError::Layout { .. } | QueueError::ServerTooOld { .. })) => {
                tracing::error!(error = %e, "Redis cannot hold this queue; this gateway stops.");
                let _ = stop.send(true);
                return;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads the config file at `path` (with the environment's overrides) and loads its plugins,
/// reporting every problem in one list, each once: keys, types and values that do not load (with
/// file and line), what [`Config::validate`] finds in the rest, and plugins that do not load.
/// Returns the configuration when there is no problem.
pub fn check_file(path: &std::path::Path) -> Result<Config, ConfigError> {
    let (config, mut problems) = config_problems(path);
    if let Some(config) = &config {
        if let Err(errors) = PluginSet::load(&config.plugins, &config.wasm, config.server.max_body_bytes) {
            problems.extend(errors.iter().map(ToString::to_string));
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// The problems of the config file at `path` short of its plugins: keys, types and values that do
/// not load (with file and line) and what [`Config::validate`] finds in the rest, each once; and
/// the configuration, when the file loads at all.
pub fn config_problems(path: &std::path::Path) -> (Option<Config>, Vec<String>) {
    let report = config::report(Some(path));
    let mut problems = report.problems;
    if let Some(config) = &report.config {
        if let Err(ConfigError::Invalid(found)) = config.validate() {
            problems.extend(found);
        }
    }
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    (report.config, problems)
}
