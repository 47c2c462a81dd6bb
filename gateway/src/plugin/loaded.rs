//! One loaded plugin: its compiled, pre-linked form, its warm instances, and one call into it with
//! the plugin's deadline, memory cap and output bound, classified into a [`PluginError`] when it fails.
//!
//! Instances are kept warm and reused for up to `max_calls_per_instance` calls (a call into a warm
//! instance costs about a microsecond; a fresh one tens). An instance that traps, times out or runs
//! out of memory is never reused. With `max_calls_per_instance = 1` every call gets a fresh instance,
//! so no state can leak from one event to the next.
//!
//! What a plugin returns is bounded before the host copies it: the store's hostcall fuel is set to
//! `wasm.max_output_bytes`, and wasmtime spends it on every byte it lifts out of the guest (payloads,
//! headers, strings, list entries), so a verdict whose deliveries all alias one large guest buffer
//! fails after `max_output_bytes` bytes of copying, not after N copies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

use super::bindings::{Plugin, PluginPre};
use super::core_abi;
use super::epoch::{EpochTicker, TICK};
use super::host::HostState;
use super::metrics::PluginStats;
use super::output::{LineBudget, Printed};
use super::{PluginError, PluginEvent, Verdict};
use crate::config::{OnError, PluginConfig};
use crate::delivery::headers::check_plugin_header;

/// Most headers a plugin may add to one event or delivery.
pub const MAX_ADDED_HEADERS: usize = 100;
/// Longest error message of a plugin's `err` kept (the rest is cut).
const MAX_ERROR_MESSAGE: usize = 4096;
/// What wasmtime says when a lift ran out of hostcall fuel.
const FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Limits every plugin shares, from `[wasm]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct SharedLimits {
    /// Most bytes the host lifts out of one call's verdict.
    pub max_output_bytes: usize,
    /// Most idle warm instances kept per plugin.
    pub max_warm: usize,
}

/// One loaded plugin, ready to instantiate, with its warm instances.
pub(super) struct LoadedPlugin {
    pub(super) name: Arc<str>,
    engine: Engine,
    /// Ticks while a call runs, so its deadline can fire.
    ticker: EpochTicker,
    pre: Pre,
    config_json: String,
    deadline: Duration,
    deadline_ticks: u64,
    startup_deadline: Duration,
    startup_ticks: u64,
    memory_bytes: usize,
    max_calls: u32,
    grant_clock: bool,
    limits: SharedLimits,
    /// This plugin's metrics, handed on to the next version when it is reloaded.
    pub(super) stats: Arc<PluginStats>,
    /// What a failed call does to its event.
    pub(super) on_error: OnError,
    /// This plugin's log budget, handed on likewise.
    pub(super) budget: Arc<LineBudget>,
    /// Idle warm instances. The lock is held only to push or pop, never during a call.
    warm: Mutex<Vec<Warm>>,
    /// The file as it was when loaded, to notice a replacement.
    pub(super) stamp: Option<FileStamp>,
}

/// What identifies one version of a plugin file: modification time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: SystemTime,
    len: u64,
}

impl FileStamp {
    pub(super) fn of(path: &std::path::Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self { modified: meta.modified().ok()?, len: meta.len() })
    }
}

/// A plugin ready to instantiate: a component of the WIT world, or a core module of the core ABI.
enum Pre {
    Component(PluginPre<HostState>),
    Core(wasmtime::InstancePre<HostState>),
}

/// An instance's entry point.
enum Entry {
    Component(Plugin),
    Core(core_abi::Entry),
}

/// An instance with its store, ready for another call.
struct Warm {
    store: Store<HostState>,
    instance: Entry,
    calls: u32,
}

/// The two linkers plugins are linked with.
pub(super) struct Linkers {
    pub component: Linker<HostState>,
    pub core: wasmtime::Linker<HostState>,
}

impl LoadedPlugin {
    /// Reads, compiles (or takes from the engine's cache) and links the plugin of `config`.
    pub(super) fn load(
        engine: &Engine,
        ticker: &EpochTicker,
        linkers: &Linkers,
        config: &PluginConfig,
        limits: SharedLimits,
        stats: Arc<PluginStats>,
        budget: Arc<LineBudget>,
    ) -> Result<Self, PluginError> {
        let failed = |message: String| PluginError::Load { plugin: config.name.clone(), message };
        let path = config.path.display();
        let stamp = FileStamp::of(&config.path);
        let bytes = std::fs::read(&config.path).map_err(|e| failed(format!("cannot read {path}: {e}")))?;
        let started = Instant::now();
        tracing::info!(plugin = %config.name, path = %path, bytes = bytes.len(),
            "Loading plugin (compiling it unless the cache has it; a JavaScript or Python one takes seconds).");
        let pre = if core_abi::is_core_module(&bytes) {
            let module = wasmtime::Module::new(engine, &bytes)
                .map_err(|e| failed(format!("{path} is neither a Wasm component nor a valid core module: {e:#}")))?;
            let pre = linkers.core.instantiate_pre(&module).map_err(|e| {
                failed(format!("{path} is a core module that imports more than the core ABI allows: {e:#}"))
            })?;
            Pre::Core(pre)
        } else {
            let component = Component::new(engine, &bytes)
                .map_err(|e| failed(format!("{path} is not a valid Wasm component: {e:#}")))?;
            let instance_pre = linkers
                .component
                .instantiate_pre(&component)
                .map_err(|e| failed(format!("{path} does not fit the sluice:plugin world: {e:#}")))?;
            let pre = PluginPre::new(instance_pre)
                .map_err(|e| failed(format!("{path} does not export `handle` as the WIT says: {e:#}")))?;
            Pre::Component(pre)
        };
        tracing::info!(plugin = %config.name, seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "Plugin loaded.");
        let ticks = |d: Duration| d.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        Ok(Self {
            name: Arc::from(config.name.as_str()),
            engine: engine.clone(),
            ticker: ticker.clone(),
            pre,
            config_json: config.config.to_string(),
            deadline: config.deadline,
            deadline_ticks: ticks(config.deadline),
            startup_deadline: config.startup_deadline,
            startup_ticks: ticks(config.startup_deadline),
            memory_bytes: (config.max_memory_mb as usize) << 20,
            max_calls: config.max_calls_per_instance.max(1),
            grant_clock: config.grant_clock,
            on_error: config.on_error,
            limits,
            warm: Mutex::new(Vec::new()),
            stats,
            budget,
            stamp,
        })
    }

    /// Calls the plugin on `event` within its deadline, memory cap and output bound, in a warm
    /// instance when one is idle and may be reused, else in a fresh one. Returns the outcome and
    /// what the call printed.
    pub(super) fn call(&self, event: &PluginEvent) -> (Result<Verdict, PluginError>, Printed) {
        // From before the deadline is set (here or in `instantiate`) until the guest is left.
        let _running = self.ticker.running();
        let started = Instant::now();
        let idle = self.warm.lock().map(|mut warm| warm.pop()).unwrap_or(None);
        let mut warm = match idle {
            Some(warm) => warm,
            None => match self.instantiate(&event.id) {
                Ok(warm) => warm,
                Err((store, error)) => {
                    let printed = store.data().take_printed();
                    let error = self.classify(&store, error, started.elapsed(), self.startup_deadline, &printed);
                    return (Err(error), printed);
                }
            },
        };
        let state = warm.store.data_mut();
        state.event_id.clone_from(&event.id);
        state.limits.memory_exceeded = false;
        warm.store.set_epoch_deadline(self.deadline_ticks);
        warm.calls += 1;
        let result = match &warm.instance {
            Entry::Component(instance) => instance
                .call_handle(&mut warm.store, &event.into(), &self.config_json)
                .map(|answer| answer.map(Verdict::from)),
            Entry::Core(entry) => entry.call(&mut warm.store, event, &self.config_json, self.limits.max_output_bytes),
        };
        let printed = warm.store.data().take_printed();
        let outcome = match result {
            Ok(Ok(verdict)) => self.check_verdict(event, verdict),
            Ok(Err(mut message)) => {
                if message.len() > MAX_ERROR_MESSAGE {
                    message = super::output::cut_line(&message[..message.floor_char_boundary(MAX_ERROR_MESSAGE)]);
                }
                Err(PluginError::Rejected { plugin: self.name.to_string(), message })
            }
            // A trapped instance is poisoned: drop it.
            Err(error) => {
                let error = self.classify(&warm.store, error, started.elapsed(), self.deadline, &printed);
                return (Err(error), printed);
            }
        };
        if warm.calls < self.max_calls {
            if let Ok(mut idle) = self.warm.lock() {
                if idle.len() < self.limits.max_warm {
                    idle.push(warm);
                }
            }
        }
        (outcome, printed)
    }

    /// Refuses a verdict that adds more headers or makes more deliveries than the host takes, or
    /// adds a header a plugin may not set.
    fn check_verdict(&self, event: &PluginEvent, verdict: Verdict) -> Result<Verdict, PluginError> {
        let added: Box<dyn Iterator<Item = &(String, String)>> = match &verdict {
            Verdict::Pass(next) => Box::new(next.headers.iter().filter(|h| !event.headers.contains(h))),
            Verdict::Route(deliveries) => Box::new(deliveries.iter().flat_map(|d| &d.headers)),
            Verdict::Drop(_) => Box::new(std::iter::empty()),
        };
        for (name, value) in added {
            check_plugin_header(name, value)
                .map_err(|message| PluginError::Header { plugin: self.name.to_string(), message })?;
        }
        let too_many = |what: String| PluginError::Output { plugin: self.name.to_string(), what };
        match &verdict {
            Verdict::Pass(next) if next.headers.len() > event.headers.len() + MAX_ADDED_HEADERS => {
                Err(too_many(format!(
                    "{} headers, more than the event's {} plus {MAX_ADDED_HEADERS}",
                    next.headers.len(),
                    event.headers.len()
                )))
            }
            Verdict::Route(deliveries) if deliveries.len() > crate::id::MAX_DELIVERIES_PER_EVENT => Err(too_many(
                format!("{} deliveries, more than {}", deliveries.len(), crate::id::MAX_DELIVERIES_PER_EVENT),
            )),
            Verdict::Route(deliveries) => match deliveries.iter().find(|d| d.headers.len() > MAX_ADDED_HEADERS) {
                Some(d) => Err(too_many(format!(
                    "{} headers on a delivery to `{}`, more than {MAX_ADDED_HEADERS}",
                    d.headers.len(),
                    d.endpoint
                ))),
                None => Ok(verdict),
            },
            _ => Ok(verdict),
        }
    }

    /// A fresh instance; on failure, the store (for what the start-up code printed) and the error.
    fn instantiate(&self, event_id: &str) -> Result<Warm, (Store<HostState>, wasmtime::Error)> {
        let mut state = HostState::new(self.name.clone(), self.memory_bytes, self.grant_clock, self.budget.clone());
        state.event_id = event_id.to_string();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(self.startup_ticks);
        store.set_hostcall_fuel(self.limits.max_output_bytes);
        let instance = match &self.pre {
            Pre::Component(pre) => pre.instantiate(&mut store).map(Entry::Component),
            Pre::Core(pre) => pre
                .instantiate(&mut store)
                .and_then(|instance| core_abi::Entry::new(&mut store, &instance))
                .map(Entry::Core),
        };
        match instance {
            Ok(instance) => Ok(Warm { store, instance, calls: 0 }),
            Err(e) => Err((store, e)),
        }
    }

    /// Turns a failed call into the error that says why, with what the guest wrote to stderr.
    fn classify(
        &self,
        store: &Store<HostState>,
        error: wasmtime::Error,
        took: Duration,
        deadline: Duration,
        printed: &Printed,
    ) -> PluginError {
        let plugin = self.name.to_string();
        if store.data().limits.memory_exceeded {
            return PluginError::Memory { plugin, limit_mb: self.memory_bytes >> 20 };
        }
        if let Some(too_large) = error.downcast_ref::<core_abi::OutputTooLarge>() {
            return PluginError::Output { plugin, what: too_large.to_string() };
        }
        let text = format!("{error:#}");
        if text.contains(FUEL_EXHAUSTED) {
            let what = format!("more than wasm.max_output_bytes = {} bytes", self.limits.max_output_bytes);
            return PluginError::Output { plugin, what };
        }
        let stderr = printed.stderr_tail();
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout { plugin, deadline, took },
            Some(trap) => PluginError::Trap { plugin, message: trap.to_string(), stderr },
            None => PluginError::Trap { plugin, message: text, stderr },
        }
    }
}
