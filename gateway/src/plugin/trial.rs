//! One plugin, one event, outside the gateway: what `sluice plugin test` runs. The plugin loads
//! exactly as the gateway loads it (same engine, limits and WIT), so a verdict seen here is the
//! verdict the gateway would act on.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::HeaderMap;

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
    /// Time of the first call, including instantiation.
    pub first_call: Duration,
    /// Time of a second call into the warm instance, when the first succeeded.
    pub warm_call: Option<Duration>,
}

/// Loads the component at `path` with `config` (a JSON object) and calls it once on an event whose
/// payload is `payload`, typed as ingest would type it (or `event_type` when given).
pub fn run(
    path: &Path,
    payload: Vec<u8>,
    event_type: Option<String>,
    config: serde_json::Value,
    deadline: Duration,
    max_memory_mb: u32,
) -> Result<Trial, PluginError> {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
    let plugin = PluginConfig {
        name: name.clone(),
        path: path.to_path_buf(),
        config,
        deadline,
        max_memory_mb,
        max_calls_per_instance: 1000,
        grant_clock: false,
        startup_deadline: Duration::from_secs(1),
    };
    let set = PluginSet::load(std::slice::from_ref(&plugin), &WasmConfig::default())
        .map_err(|errors| errors.into_iter().next().unwrap_or(PluginError::Unknown(name.clone())))?;
    let event_type = match event_type {
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
    let started = Instant::now();
    let outcome = set.call(&name, &event);
    let first_call = started.elapsed();
    let warm_call = outcome.is_ok().then(|| {
        let started = Instant::now();
        let _ = set.call(&name, &event);
        started.elapsed()
    });
    Ok(Trial { event, outcome, first_call, warm_call })
}
