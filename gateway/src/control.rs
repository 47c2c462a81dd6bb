//! The control plane: the running configuration as one value, [`Live`], and its replacement by a
//! reload (SIGHUP, or `POST /v1/config/reload`).
//!
//! Ingest, the admin API and the worker read the running configuration through [`Control`]: an
//! ingest request takes the [`Live`] of the moment once and finishes under it, and a delivery does
//! the same with its endpoint table, so a reload never splits one event or one attempt between two
//! configurations. A reload reads the file again (and the environment's overrides), checks it the
//! way `sluice check` does, refuses it whole when any key outside [`config::RELOADABLE`] changed
//! (those need a restart), loads the plugins that are new or changed, and only then swaps: the
//! worker's endpoints first, then the rest, so no delivery the new routes create meets a worker
//! that does not know its endpoint. A reload that fails in any step applies nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::{self, Config};
use crate::delivery::worker::EndpointTable;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::plugin::PluginSet;
use crate::queue::Store;
use crate::redact;

/// The running configuration, built and ready: everything a reload replaces at once.
pub struct Live {
    /// The ingest step: routes, plugin chains, source credentials and rate limits.
    pub ingest: Ingest,
    /// The plugins.
    pub plugins: Arc<PluginSet>,
    /// The endpoints as the worker delivers to them.
    pub endpoints: Arc<EndpointTable>,
    /// Configured endpoint names, in config order.
    pub endpoint_names: Vec<String>,
    /// Endpoint name → URL with credentials masked, for alerts.
    pub endpoint_urls: HashMap<String, String>,
    /// The configuration as `GET /v1/config` shows it: secrets masked, and its hash.
    pub shown: config::Shown,
}

/// Why a reload applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was started from a configuration value, not a file: there is nothing to read again.
    #[error("this gateway was not started from a config file; there is nothing to reload")]
    NoFile,
    /// The file has problems (every one listed, as `sluice check` lists them).
    #[error("the configuration has problems; nothing was applied:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// Keys that only a restart applies changed (each with its old and new value).
    #[error("these keys need a restart; nothing was applied:\n  - {}", .0.join("\n  - "))]
    NeedsRestart(Vec<String>),
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Whether anything changed (false: the file holds the running configuration).
    pub changed: bool,
    /// The hash of the configuration now running.
    pub hash: String,
    /// The hash before.
    pub previous_hash: String,
    /// What changed, one line each, as `sluice config plan` prints it.
    pub changes: Vec<String>,
    /// What the changes do to traffic.
    pub warnings: Vec<String>,
}

/// The running configuration and what a reload needs to replace it.
pub struct Control {
    live: ArcSwap<Live>,
    file: Option<PathBuf>,
    /// The worker's view of the endpoints, swapped with [`Live`].
    worker_endpoints: Arc<ArcSwap<EndpointTable>>,
    queue: Store,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// One reload at a time: a SIGHUP and an API call arriving together run one after the other.
    reloading: tokio::sync::Mutex<()>,
}

/// What [`Control::new`] is built from, besides the first configuration.
pub struct Parts {
    /// The config file a reload reads again; `None` when the gateway was started from a value.
    pub file: Option<PathBuf>,
    /// The queue ingest stores events in.
    pub queue: Store,
    /// Wakes the worker when ingest enqueues due work.
    pub wake: Arc<Notify>,
    /// The gateway's metrics (a reload adds labels for new sources and endpoints).
    pub metrics: Arc<Metrics>,
}

impl Control {
    /// The control plane of a gateway starting with `config` (validated) and its loaded `plugins`.
    pub fn new(config: &Config, plugins: Arc<PluginSet>, parts: Parts) -> Self {
        let endpoints = Arc::new(EndpointTable::new(config, None));
        let shown = config::Shown::of(config);
        let live = build(config, shown, plugins, endpoints.clone(), &parts.queue, &parts.wake, None);
        Self {
            live: ArcSwap::from_pointee(live),
            file: parts.file,
            worker_endpoints: Arc::new(ArcSwap::new(endpoints)),
            queue: parts.queue,
            wake: parts.wake,
            metrics: parts.metrics,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The running configuration. Take it once per request and keep it to the end.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The worker's endpoint table, which reloads replace.
    pub fn worker_endpoints(&self) -> Arc<ArcSwap<EndpointTable>> {
        self.worker_endpoints.clone()
    }

    /// Reads the config file again and applies it whole, or nothing when it has any problem or
    /// changes a key that needs a restart. Loading new or changed plugins runs on a blocking
    /// thread; requests keep being served under the running configuration meanwhile.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let file = self.file.clone().ok_or(ReloadError::NoFile)?;
        let running = self.live();
        let checked = {
            let running = running.clone();
            tokio::task::spawn_blocking(move || check(&file, &running)).await
        };
        let (config, shown, plugins) = match checked {
            Ok(result) => result?,
            Err(e) => return Err(ReloadError::Invalid(vec![format!("the reload stopped: {e}")])),
        };
        if shown.hash == running.shown.hash {
            let hash = shown.hash.clone();
            return Ok(Reloaded {
                changed: false,
                previous_hash: hash.clone(),
                hash,
                changes: Vec::new(),
                warnings: Vec::new(),
            });
        }
        let paused = self.paused(&running.endpoint_names).await;
        let plan = config::plan(&running.shown.config, &shown.config, &config::Running { paused });
        let endpoints = Arc::new(EndpointTable::new(&config, Some(&running.endpoints)));
        self.metrics.add_labels(&config);
        let next = build(&config, shown, Arc::new(plugins), endpoints.clone(), &self.queue, &self.wake, Some(&running));
        let hash = next.shown.hash.clone();
        self.worker_endpoints.store(endpoints);
        self.live.store(Arc::new(next));
        self.wake.notify_one();
        tracing::info!(previous_hash = %running.shown.hash, %hash, changes = ?plan.changes, warnings = ?plan.warnings,
            "Configuration reloaded; new events and attempts use it.");
        Ok(Reloaded {
            changed: true,
            hash,
            previous_hash: running.shown.hash.clone(),
            changes: plan.changes,
            warnings: plan.warnings,
        })
    }

    /// Deliveries parked per endpoint, for the plan's warnings (empty when the store does not answer).
    async fn paused(&self, endpoints: &[String]) -> Vec<(String, u64)> {
        use crate::queue::Queue;
        let mut paused = Vec::new();
        for name in endpoints {
            if let Ok(count) = self.queue.paused_count(name).await {
                paused.push((name.clone(), count));
            }
        }
        paused
    }

    /// Reloads on every SIGHUP until `shutdown` turns true, logging the outcome. A gateway started
    /// without a config file reloads its plugins' files instead. `hangup` is [`hangup_signal`],
    /// taken before the gateway listens: from then on a SIGHUP reloads and never ends the process
    /// (its default action), however late this task first runs.
    pub async fn reload_on_hangup(self: Arc<Self>, mut hangup: Hangup, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                Some(()) = recv(&mut hangup) => {}
                _ = shutdown.changed() => return,
            }
            tracing::info!("SIGHUP: reloading the configuration.");
            match self.reload().await {
                Ok(_) => {}
                Err(ReloadError::NoFile) => {
                    crate::plugin::reload::reload_changed(self.live().plugins.clone(), true).await
                }
                Err(e) => tracing::error!(error = %e, "Reload refused; the running configuration stays."),
            }
        }
    }
}

/// The file at `file` checked against the running configuration: every problem in it (as `sluice
/// check` finds them, plugins loading included), or the keys that need a restart, or the
/// configuration with its plugins loaded (over the running set's engine). Blocking.
fn check(file: &std::path::Path, running: &Live) -> Result<(Config, config::Shown, PluginSet), ReloadError> {
    let (config, mut problems) = crate::config_problems(file);
    let Some(config) = config else { return Err(ReloadError::Invalid(problems)) };
    let shown = config::Shown::of(&config);
    if problems.is_empty() {
        let restart = config::needs_restart(&running.shown.config, &shown.config);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
    }
    match running.plugins.reconfigured(&config.plugins) {
        Ok(plugins) if problems.is_empty() => Ok((config, shown, plugins)),
        Ok(_) => Err(ReloadError::Invalid(problems)),
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            Err(ReloadError::Invalid(problems))
        }
    }
}

/// The [`Live`] of `config` (shown as `shown`). `previous`: the one it replaces, whose rate
/// limiters carry on.
fn build(
    config: &Config,
    shown: config::Shown,
    plugins: Arc<PluginSet>,
    endpoints: Arc<EndpointTable>,
    queue: &Store,
    wake: &Arc<Notify>,
    previous: Option<&Live>,
) -> Live {
    let ingest = Ingest::new(config, plugins.clone(), queue.clone(), wake.clone(), previous.map(|p| &p.ingest));
    Live {
        ingest,
        plugins,
        endpoints,
        endpoint_names: config.endpoints.iter().map(|e| e.name.clone()).collect(),
        endpoint_urls: config.endpoints.iter().map(|e| (e.name.clone(), redact::url(&e.url))).collect(),
        shown,
    }
}

/// SIGHUP as a stream (`None` where it cannot be had).
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
/// SIGHUP as a stream (`None` where it cannot be had).
#[cfg(not(unix))]
pub type Hangup = Option<()>;

/// Handles SIGHUP from now on (instead of its default, ending the process); the signals arrive
/// through what it returns.
#[cfg(unix)]
pub fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// Handles SIGHUP from now on (instead of its default, ending the process); the signals arrive
/// through what it returns.
#[cfg(not(unix))]
pub fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
