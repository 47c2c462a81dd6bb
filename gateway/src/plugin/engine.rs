//! The Wasm engine and the loaded plugins: one wasmtime `Engine` with the pooling allocator and epoch
//! interruption, a ticker thread that advances the epoch, and per plugin an `InstancePre` from which
//! instances are made, each in its own `Store` with a memory cap, and each call with a deadline.
//!
//! Instances are kept warm and reused for up to `max_calls_per_instance` calls (a call into a warm
//! instance costs about a microsecond; a fresh one tens). An instance that traps, times out or runs
//! out of memory is never reused. With `max_calls_per_instance = 1` every call gets a fresh instance,
//! so no state can leak from one event to the next.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::host;
use super::bindings::{Plugin, PluginPre};
use super::metrics::PluginStats;
use super::{core_abi, PluginError, PluginEvent, Verdict};
use crate::config::{PluginConfig, WasmConfig};

/// How often the epoch advances; deadlines are rounded up to whole ticks.
const TICK: Duration = Duration::from_millis(1);
/// Instances alive at once beyond the warm ones (calls in progress, instances being replaced).
const SPARE_INSTANCES: u32 = 128;
/// Instances whose memory is returned to the kernel together.
const DECOMMIT_BATCH: usize = 32;
/// Most table elements one instance may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Longest log line a plugin may write; longer lines are cut.
const MAX_LOG_LINE: usize = 4096;

/// Per-instance host state: WASI (granting nothing), the memory limiter and what log lines are tagged with.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    plugin: Arc<str>,
    event_id: String,
}

struct Limits {
    memory_bytes: usize,
    memory_exceeded: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // Remember why, so the trap that follows is reported as a memory overrun.
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit of {} bytes exceeded (wanted {desired})", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl super::bindings::sluice::plugin::types::Host for HostState {}

/// The clock a plugin sees when it was not granted one: always zero.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy)]
pub(super) enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl HostState {
    /// Writes a plugin's log line, tagged with the plugin's name and the event id.
    pub(super) fn log(&self, level: LogLevel, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let (plugin, event_id) = (&*self.plugin, self.event_id.as_str());
        match level {
            LogLevel::Trace => tracing::trace!(plugin, event_id, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, event_id, "{message}"),
            LogLevel::Info => tracing::info!(plugin, event_id, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, event_id, "{message}"),
            LogLevel::Error => tracing::error!(plugin, event_id, "{message}"),
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let level = match level {
            host::Level::Trace => LogLevel::Trace,
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        HostState::log(self, level, message);
    }
}

/// One loaded plugin, ready to instantiate, with its warm instances.
struct LoadedPlugin {
    name: Arc<str>,
    pre: Pre,
    config_json: String,
    deadline: Duration,
    deadline_ticks: u64,
    startup_deadline: Duration,
    startup_ticks: u64,
    memory_bytes: usize,
    max_calls: u32,
    grant_clock: bool,
    /// This plugin's metrics, handed on to the next version when it is reloaded.
    stats: Arc<PluginStats>,
    /// Idle warm instances. The lock is held only to push or pop, never during a call.
    warm: Mutex<Vec<Warm>>,
    /// The file as it was when loaded, to notice a replacement.
    stamp: Option<FileStamp>,
}

/// What identifies one version of a plugin file: modification time and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<Self> {
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

/// Most idle warm instances kept per plugin (calls run on the runtime's few worker threads).
const MAX_WARM: usize = 4;

type PluginMap = HashMap<Arc<str>, Arc<LoadedPlugin>>;

/// Every configured plugin, compiled and linked, sharing one engine. Plugins can be reloaded while
/// calls are in flight: a call holds the version it started with, new calls get the new one.
pub struct PluginSet {
    engine: Engine,
    linker: Linker<HostState>,
    core_linker: wasmtime::Linker<HostState>,
    configs: Vec<PluginConfig>,
    /// The current version of each plugin. The lock is held only to clone or swap the map.
    plugins: RwLock<Arc<PluginMap>>,
    /// File versions that failed to load, so a broken file is reported once, not on every look.
    failed: Mutex<HashMap<Arc<str>, Option<FileStamp>>>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginSet {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PluginSet {
    /// Compiles (or takes from the on-disk cache) and links every plugin. Returns every failure at
    /// once, each naming its plugin.
    pub fn load(configs: &[PluginConfig], wasm: &WasmConfig) -> Result<Self, Vec<PluginError>> {
        let engine = new_engine(configs, wasm).map_err(|e| vec![PluginError::Engine(format!("{e:#}"))])?;
        let mut linker = Linker::<HostState>::new(&engine);
        let linked = wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state));
        linked.map_err(|e| vec![PluginError::Engine(format!("{e:#}"))])?;
        let mut core_linker = wasmtime::Linker::<HostState>::new(&engine);
        core_abi::add_to_linker(&mut core_linker).map_err(|e| vec![PluginError::Engine(format!("{e:#}"))])?;

        let mut plugins = HashMap::new();
        let mut errors = Vec::new();
        for config in configs {
            match load_one(&engine, &linker, &core_linker, config, Arc::default()) {
                Ok(plugin) => {
                    plugins.insert(plugin.name.clone(), Arc::new(plugin));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());
        Ok(Self {
            engine,
            linker,
            core_linker,
            configs: configs.to_vec(),
            plugins: RwLock::new(Arc::new(plugins)),
            failed: Mutex::new(HashMap::new()),
            stop_ticker,
        })
    }

    /// Whether a plugin of this name is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.current().contains_key(name)
    }

    fn current(&self) -> Arc<PluginMap> {
        match self.plugins.read() {
            Ok(map) => map.clone(),
            // A writer panicked mid-swap; the map itself is still whole (swaps are one assignment).
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads every plugin whose file changed since it was loaded (or every plugin, with `force`).
    /// A plugin that fails to load keeps its previous version running; the failure is returned.
    pub fn reload(&self, force: bool) -> Vec<Result<Arc<str>, PluginError>> {
        let current = self.current();
        let mut outcomes = Vec::new();
        let mut replaced = Vec::new();
        for config in &self.configs {
            let Some(loaded) = current.get(config.name.as_str()) else { continue };
            let stamp = FileStamp::of(&config.path);
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            let unchanged = stamp == loaded.stamp || failed.get(&loaded.name) == Some(&stamp);
            if unchanged && !force {
                continue;
            }
            // The new version keeps counting where the old one left off.
            match load_one(&self.engine, &self.linker, &self.core_linker, config, loaded.stats.clone()) {
                Ok(fresh) => {
                    failed.remove(&loaded.name);
                    outcomes.push(Ok(fresh.name.clone()));
                    replaced.push(Arc::new(fresh));
                }
                Err(e) => {
                    failed.insert(loaded.name.clone(), stamp);
                    outcomes.push(Err(e));
                }
            }
        }
        if !replaced.is_empty() {
            let mut map = (*self.current()).clone();
            for plugin in replaced {
                map.insert(plugin.name.clone(), plugin);
            }
            match self.plugins.write() {
                Ok(mut slot) => *slot = Arc::new(map),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(map),
            }
        }
        outcomes
    }

    /// Calls plugin `name` on `event` within its deadline and memory cap, in a warm instance when
    /// one is idle and may be reused, else in a fresh one.
    pub fn call(&self, name: &str, event: &PluginEvent) -> Result<Verdict, PluginError> {
        let plugins = self.current();
        let plugin = plugins.get(name).ok_or_else(|| PluginError::Unknown(name.to_string()))?;
        let started = Instant::now();
        let outcome = self.call_in(plugin, event, started);
        plugin.stats.record(&outcome, started.elapsed());
        outcome
    }

    /// Each plugin's (name, calls, errors) so far, in config order.
    pub fn totals(&self) -> Vec<(String, u64, u64)> {
        let current = self.current();
        self.configs
            .iter()
            .filter_map(|c| current.get(c.name.as_str()))
            .map(|p| {
                let (calls, errors) = p.stats.totals();
                (p.name.to_string(), calls, errors)
            })
            .collect()
    }

    /// Renders every plugin's metrics in the Prometheus text format, in config order.
    pub fn render_metrics(&self, out: &mut String) {
        let current = self.current();
        let stats: Vec<(&str, &PluginStats)> =
            self.configs.iter().filter_map(|c| current.get(c.name.as_str())).map(|p| (&*p.name, &*p.stats)).collect();
        super::metrics::render(stats.iter().copied(), out);
    }

    fn call_in(&self, plugin: &LoadedPlugin, event: &PluginEvent, started: Instant) -> Result<Verdict, PluginError> {
        let name = &*plugin.name;
        let idle = plugin.warm.lock().map(|mut warm| warm.pop()).unwrap_or(None);
        let mut warm = match idle {
            Some(warm) => warm,
            None => self
                .instantiate(plugin, &event.id)
                .map_err(|e| classify(plugin, None, e, started.elapsed(), plugin.startup_deadline))?,
        };
        let state = warm.store.data_mut();
        state.event_id.clone_from(&event.id);
        state.limits.memory_exceeded = false;
        warm.store.set_epoch_deadline(plugin.deadline_ticks);
        warm.calls += 1;
        let result = match &warm.instance {
            Entry::Component(instance) => instance
                .call_handle(&mut warm.store, &event.into(), &plugin.config_json)
                .map(|answer| answer.map(Verdict::from)),
            Entry::Core(entry) => entry.call(&mut warm.store, event, &plugin.config_json),
        };
        let outcome = match result {
            Ok(Ok(verdict)) => Ok(verdict),
            Ok(Err(message)) => Err(PluginError::Rejected { plugin: name.to_string(), message }),
            // A trapped instance is poisoned: drop it.
            Err(error) => return Err(classify(plugin, Some(&warm.store), error, started.elapsed(), plugin.deadline)),
        };
        if warm.calls < plugin.max_calls {
            if let Ok(mut idle) = plugin.warm.lock() {
                if idle.len() < MAX_WARM {
                    idle.push(warm);
                }
            }
        }
        outcome
    }

    fn instantiate(&self, plugin: &LoadedPlugin, event_id: &str) -> wasmtime::Result<Warm> {
        let mut wasi = WasiCtx::builder();
        if !plugin.grant_clock {
            // No clock unless granted: both clocks read zero (the Unix epoch), and never move.
            wasi.wall_clock(StoppedClock).monotonic_clock(StoppedClock);
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: Limits { memory_bytes: plugin.memory_bytes, memory_exceeded: false },
            plugin: plugin.name.clone(),
            event_id: event_id.to_string(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(plugin.startup_ticks);
        let instance = match &plugin.pre {
            Pre::Component(pre) => Entry::Component(pre.instantiate(&mut store)?),
            Pre::Core(pre) => {
                let instance = pre.instantiate(&mut store)?;
                Entry::Core(core_abi::Entry::new(&mut store, &instance)?)
            }
        };
        Ok(Warm { store, instance, calls: 0 })
    }
}

/// Turns a failed call into the error that says why.
fn classify(
    plugin: &LoadedPlugin,
    store: Option<&Store<HostState>>,
    error: wasmtime::Error,
    took: Duration,
    deadline: Duration,
) -> PluginError {
    let name = plugin.name.to_string();
    if store.is_some_and(|s| s.data().limits.memory_exceeded) {
        return PluginError::Memory { plugin: name, limit_mb: plugin.memory_bytes >> 20 };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout { plugin: name, deadline, took },
        Some(trap) => PluginError::Trap { plugin: name, message: trap.to_string() },
        None => PluginError::Trap { plugin: name, message: format!("{error:#}") },
    }
}

fn new_engine(configs: &[PluginConfig], wasm: &WasmConfig) -> wasmtime::Result<Engine> {
    let largest_memory = configs.iter().map(|c| c.max_memory_mb as usize).max().unwrap_or(64) << 20;
    // Twice the warm instances: during a reload the old version's instances live until its last call ends.
    let instances = 2 * configs.len() as u32 * MAX_WARM as u32 + SPARE_INSTANCES;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 4)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_memories_per_component(4)
        .max_memory_size(largest_memory.max(1 << 20))
        // Give returned memories back to the kernel in batches: one madvise for many instances.
        .decommit_batch_size(DECOMMIT_BATCH);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(dir) = wasm.cache_dir() {
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    Engine::new(&config)
}

fn load_one(
    engine: &Engine,
    linker: &Linker<HostState>,
    core_linker: &wasmtime::Linker<HostState>,
    config: &PluginConfig,
    stats: Arc<PluginStats>,
) -> Result<LoadedPlugin, PluginError> {
    let failed = |message: String| PluginError::Load { plugin: config.name.clone(), message };
    let path = config.path.display();
    let stamp = FileStamp::of(&config.path);
    let bytes = std::fs::read(&config.path).map_err(|e| failed(format!("cannot read {path}: {e}")))?;
    let pre = if core_abi::is_core_module(&bytes) {
        let module = wasmtime::Module::new(engine, &bytes)
            .map_err(|e| failed(format!("{path} is neither a Wasm component nor a valid core module: {e:#}")))?;
        let pre = core_linker.instantiate_pre(&module).map_err(|e| {
            failed(format!("{path} is a core module that imports more than the core ABI allows: {e:#}"))
        })?;
        Pre::Core(pre)
    } else {
        let component = Component::new(engine, &bytes)
            .map_err(|e| failed(format!("{path} is not a valid Wasm component: {e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| failed(format!("{path} does not fit the sluice:plugin world: {e:#}")))?;
        let pre = PluginPre::new(instance_pre)
            .map_err(|e| failed(format!("{path} does not export `handle` as the WIT says: {e:#}")))?;
        Pre::Component(pre)
    };
    let ticks = |d: Duration| d.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
    Ok(LoadedPlugin {
        name: Arc::from(config.name.as_str()),
        pre,
        config_json: config.config.to_string(),
        deadline: config.deadline,
        deadline_ticks: ticks(config.deadline),
        startup_deadline: config.startup_deadline,
        startup_ticks: ticks(config.startup_deadline),
        memory_bytes: (config.max_memory_mb as usize) << 20,
        max_calls: config.max_calls_per_instance.max(1),
        grant_clock: config.grant_clock,
        warm: Mutex::new(Vec::new()),
        stats,
        stamp,
    })
}

/// Advances the engine's epoch every [`TICK`] until `stop` is set. A plain thread, not a task: it
/// must keep ticking while a runaway plugin occupies a runtime worker.
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "Could not start the plugin epoch ticker; plugin deadlines will not fire.");
    }
}
