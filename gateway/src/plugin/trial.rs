//! One plugin, one event, outside the gateway: what `sluice plugin test` runs. The plugin loads
//! exactly as the gateway loads it (same engine, limits and WIT), so a verdict seen here is the
//! verdict the gateway would act on, and what it prints is what the gateway would log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::HeaderMap;

use super::output::Printed;
use super::{PluginError, PluginEvent, PluginSet, Verdict};
use crate::config::{PluginConfig, WasmConfig};
use crate::ingest::parse;

/// What one trial call produced.
#[derive(Debug)]
pub struct Trial {
    /// The event handed to the plugin.
    pub event: PluginEvent,
    /// The plugin's verdict, or why it failed.
    pub outcome: Result<Verdict, PluginError>,
    /// What the first call wrote to stdout and stderr.
    pub printed: Printed,
    /// Time of the first call, including instantiation.
    pub first_call: Duration,
    /// Time of a second call into the warm instance, when the first succeeded.
    pub warm_call: Option<Duration>,
}

/// How to run a trial.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plugin's config (a JSON object).
    pub config: serde_json::Value,
    /// The event type; `None` types the payload as ingest would.
    pub event_type: Option<String>,
    /// Deadline of the call.
    pub deadline: Duration,
    /// Memory cap in MiB.
    pub max_memory_mb: u32,
    /// Where compiled plugins are cached; `None` for the default (`wasm.cache_dir`).
    pub cache_dir: Option<PathBuf>,
}

/// Loads the plugin at `path` and calls it once (then once more, warm) on an event whose payload is
/// `payload`.
pub fn run(path: &Path, payload: Vec<u8>, settings: Settings) -> Result<Trial, PluginError> {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
    let plugin = PluginConfig {
        name: name.clone(),
        path: path.to_path_buf(),
        config: settings.config,
        deadline: settings.deadline,
        max_memory_mb: settings.max_memory_mb,
        max_calls_per_instance: 1000,
        grant_clock: false,
        on_error: Default::default(),
        startup_deadline: Duration::from_secs(1),
        shadow: None,
        shadow_rate: 1.0,
    };
    let wasm = WasmConfig { cache_dir: settings.cache_dir, threads: Some(1), ..WasmConfig::default() };
    let max_body_bytes = crate::config::ServerConfig::default().max_body_bytes;
    let set = PluginSet::load(std::slice::from_ref(&plugin), &wasm, max_body_bytes)
        .map_err(|errors| errors.into_iter().next().unwrap_or(PluginError::Unknown(name.clone())))?;
    let event_type = match settings.event_type {
        Some(t) => t,
        None => parse::event_type(&HeaderMap::new(), &payload).map_err(|e| PluginError::Rejected {
            plugin: name.clone(),
            message: format!("the event file is not a valid event: {e}"),
        })?,
    };
    let event = PluginEvent {
        id: crate::id::format_event(crate::id::new_event()),
        source: "test".to_string(),
        event_type,
        headers: vec![("content-type".to_string(), "application/json".to_string())],
        payload,
    };
    // This thread is outside any async runtime, as the gateway's plugin threads are.
    let started = Instant::now();
    let (outcome, printed) = set.call_printed(&name, &event);
    let first_call = started.elapsed();
    let warm_call = outcome.is_ok().then(|| {
        let started = Instant::now();
        let _ = set.call_printed(&name, &event);
        started.elapsed()
    });
    Ok(Trial { event, outcome, printed, first_call, warm_call })
}
