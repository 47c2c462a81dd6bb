//! The Wasm engine and the set of loaded plugins: one wasmtime `Engine` with the pooling allocator
//! and epoch interruption, a ticker thread that advances the epoch while calls run
//! ([`super::epoch`]), the plugin threads
//! ([`super::pool`]) that every plugin call runs on, and per plugin a [`LoadedPlugin`] (its
//! `InstancePre` and warm instances).
//!
//! Plugins can be reloaded while calls are in flight: a call holds the version it started with, new
//! calls get the new one. Each plugin reloads on its own thread, so a slow compile (Python, seconds)
//! does not hold up another plugin's reload. A config reload makes a new set over the same engine
//! and threads ([`PluginSet::reconfigured`]): unchanged plugins keep their warm instances.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin;
use super::epoch::{EpochTicker, TickerThread};
use super::host::HostState;
use super::loaded::{FileStamp, Linkers, LoadedPlugin, SharedLimits};
use super::output::{log_printed, Printed};
use super::pool::{PluginPool, PoolStats};
use super::shadow::{Shadow, ShadowReport};
use super::{core_abi, PluginError, PluginEvent, Verdict};
use crate::config::{PluginConfig, WasmConfig};

/// Instances alive at once beyond the warm ones (calls in progress, instances being replaced).
const SPARE_INSTANCES: u32 = 128;
/// Instances whose memory is returned to the kernel together.
const DECOMMIT_BATCH: usize = 32;
/// Fewest idle warm instances kept per plugin (more with more plugin threads).
const MIN_WARM: usize = 4;
/// Plugins a config reload may add beyond those the gateway started with: the engine's instance
/// pool is sized once, for the plugins at start plus these.
const RELOAD_HEADROOM: usize = 8;
/// Smallest per-instance memory the engine's pool is sized for, so a reload may raise a plugin's
/// `max_memory_mb` up to it (the plugin's own cap is enforced per call, not by the pool).
const POOL_MEMORY_FLOOR_MB: u32 = 256;

type PluginMap = HashMap<Arc<str>, Arc<LoadedPlugin>>;

/// What every version of the plugin set shares: the engine, its linkers and limits, the plugin
/// threads and the epoch ticker (stopped when the last set using them is dropped).
struct Runtime {
    engine: Engine,
    linkers: Linkers,
    limits: SharedLimits,
    pool: PluginPool,
    /// The epoch ticker (stops when the runtime drops).
    epoch: TickerThread,
    /// Most plugins the engine's instance pool was sized for.
    max_plugins: usize,
    /// Largest per-instance memory the engine's pool was sized for, MiB.
    max_memory_mb: u32,
}

/// Every configured plugin, compiled and linked, sharing one engine and one pool of plugin threads.
pub struct PluginSet {
    runtime: Arc<Runtime>,
    configs: Vec<PluginConfig>,
    /// The current version of each plugin. The lock is held only to clone or swap the map.
    plugins: RwLock<Arc<PluginMap>>,
    /// File versions that failed to load, so a broken file is reported once, not on every look.
    failed: Mutex<HashMap<Arc<str>, Option<FileStamp>>>,
    /// Plugins being reloaded right now.
    reloading: Mutex<HashSet<Arc<str>>>,
    /// The candidates run in the shadow of plugins that have one, by plugin name.
    shadows: HashMap<Arc<str>, Arc<Shadow>>,
}

impl PluginSet {
    /// Compiles (or takes from the on-disk cache) and links every plugin, and starts the plugin
    /// threads. `max_body_bytes` sets the default of `wasm.max_output_bytes`. Returns every failure
    /// at once, each naming its plugin.
    pub fn load(configs: &[PluginConfig], wasm: &WasmConfig, max_body_bytes: usize) -> Result<Self, Vec<PluginError>> {
        let engine_error = |e: &dyn std::fmt::Display| vec![PluginError::Engine(format!("{e:#}"))];
        let threads = wasm.threads();
        let limits =
            SharedLimits { max_output_bytes: wasm.output_limit(max_body_bytes), max_warm: threads.max(MIN_WARM) };
        let max_plugins = slots(configs) + RELOAD_HEADROOM;
        let max_memory_mb = configs.iter().map(|c| c.max_memory_mb).max().unwrap_or(0).max(POOL_MEMORY_FLOOR_MB);
        let engine = new_engine(max_plugins, max_memory_mb, wasm, limits.max_warm).map_err(|e| engine_error(&e))?;
        let mut component = Linker::<HostState>::new(&engine);
        let linked = wasmtime_wasi::p2::add_to_linker_sync(&mut component)
            .and_then(|()| Plugin::add_to_linker::<_, HasSelf<_>>(&mut component, |state| state));
        linked.map_err(|e| engine_error(&e))?;
        let mut core = wasmtime::Linker::<HostState>::new(&engine);
        core_abi::add_to_linker(&mut core).map_err(|e| engine_error(&e))?;
        let linkers = Linkers { component, core };

        let mut plugins = HashMap::new();
        let mut shadows = HashMap::new();
        let mut errors = Vec::new();
        let epoch = EpochTicker::start(engine.clone());
        let ticker = epoch.ticker();
        for config in configs {
            match LoadedPlugin::load(&engine, ticker, &linkers, config, limits, Arc::default(), Arc::default()) {
                Ok(plugin) => {
                    plugins.insert(plugin.name.clone(), Arc::new(plugin));
                }
                Err(e) => errors.push(e),
            }
            match load_shadow(&engine, ticker, &linkers, config, limits) {
                Ok(Some(shadow)) => {
                    shadows.insert(Arc::from(config.name.as_str()), Arc::new(shadow));
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let pool = PluginPool::start(threads, wasm.max_queued).map_err(|e| engine_error(&e))?;
        let runtime = Runtime { engine, linkers, limits, pool, epoch, max_plugins, max_memory_mb };
        Ok(Self::over(Arc::new(runtime), configs, plugins, shadows))
    }

    fn over(
        runtime: Arc<Runtime>,
        configs: &[PluginConfig],
        plugins: PluginMap,
        shadows: HashMap<Arc<str>, Arc<Shadow>>,
    ) -> Self {
        Self {
            runtime,
            configs: configs.to_vec(),
            plugins: RwLock::new(Arc::new(plugins)),
            failed: Mutex::new(HashMap::new()),
            reloading: Mutex::new(HashSet::new()),
            shadows,
        }
    }

    /// The set for `configs` over this one's engine and plugin threads, for a config reload
    /// (blocking: loads what is new). A plugin whose settings and file are unchanged is the same
    /// loaded plugin, warm instances and all; a changed one is loaded again and counts on where its
    /// previous version left off. Returns every failure at once, each naming its plugin; a plugin
    /// beyond what the engine was sized for at start is one (it needs a restart).
    pub fn reconfigured(&self, configs: &[PluginConfig]) -> Result<Self, Vec<PluginError>> {
        let runtime = &self.runtime;
        let current = self.current();
        let mut plugins = HashMap::new();
        let mut shadows = HashMap::new();
        let mut errors = Vec::new();
        if slots(configs) > runtime.max_plugins {
            errors.push(PluginError::Engine(format!(
                "{} plugins configured (shadow candidates included); the running engine was sized for at most {} (those it started with and {RELOAD_HEADROOM} more): restart the gateway to apply",
                slots(configs),
                runtime.max_plugins
            )));
        }
        for config in configs {
            if config.max_memory_mb > runtime.max_memory_mb {
                let message = format!(
                    "max_memory_mb = {} is above the {} MiB the running engine was sized for: restart the gateway to apply",
                    config.max_memory_mb, runtime.max_memory_mb
                );
                errors.push(PluginError::Load { plugin: config.name.clone(), message });
                continue;
            }
            let previous = current.get(config.name.as_str());
            let same_settings =
                |old: &PluginConfig| serde_json::to_value(old).ok() == serde_json::to_value(config).ok();
            let unchanged = previous.filter(|p| {
                self.configs.iter().any(|c| c.name == config.name && same_settings(c))
                    && p.stamp.is_some()
                    && p.stamp == FileStamp::of(&config.path)
            });
            // A candidate is loaded again unless its plugin is unchanged (shadow settings included)
            // and its file too: its counts then carry on.
            let kept_shadow = unchanged.and_then(|_| self.shadows.get(config.name.as_str())).filter(|s| {
                config
                    .shadow
                    .as_ref()
                    .is_some_and(|path| s.candidate.stamp.is_some() && s.candidate.stamp == FileStamp::of(path))
            });
            match kept_shadow {
                Some(shadow) => {
                    shadows.insert(Arc::from(config.name.as_str()), shadow.clone());
                }
                None => {
                    match load_shadow(&runtime.engine, runtime.epoch.ticker(), &runtime.linkers, config, runtime.limits)
                    {
                        Ok(Some(shadow)) => {
                            shadows.insert(Arc::from(config.name.as_str()), Arc::new(shadow));
                        }
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            if let Some(plugin) = unchanged {
                plugins.insert(plugin.name.clone(), plugin.clone());
                continue;
            }
            let (stats, budget) = previous.map(|p| (p.stats.clone(), p.budget.clone())).unwrap_or_default();
            match LoadedPlugin::load(
                &runtime.engine,
                runtime.epoch.ticker(),
                &runtime.linkers,
                config,
                runtime.limits,
                stats,
                budget,
            ) {
                Ok(plugin) => {
                    plugins.insert(plugin.name.clone(), Arc::new(plugin));
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self::over(runtime.clone(), configs, plugins, shadows))
    }

    /// Whether a plugin of this name is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.current().contains_key(name)
    }

    /// The plugin threads: run plugin calls there, never on an async runtime's threads.
    pub fn pool(&self) -> &PluginPool {
        &self.runtime.pool
    }

    /// The pool's threads, busy threads and queue.
    pub fn pool_stats(&self) -> PoolStats {
        self.runtime.pool.stats()
    }

    pub(super) fn current(&self) -> Arc<PluginMap> {
        match self.plugins.read() {
            Ok(map) => map.clone(),
            // A writer panicked mid-swap; the map itself is still whole (swaps are one assignment).
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The plugins whose file changed since it was loaded (every plugin with `force`), leaving out
    /// those being reloaded now and file versions that already failed. Marks them as being reloaded:
    /// pass each to [`Self::reload_one`].
    pub fn changed(&self, force: bool) -> Vec<Arc<str>> {
        let current = self.current();
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let mut reloading = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        for config in &self.configs {
            let Some(loaded) = current.get(config.name.as_str()) else { continue };
            if reloading.contains(&loaded.name) {
                continue;
            }
            let stamp = FileStamp::of(&config.path);
            let unchanged = stamp == loaded.stamp || failed.get(&loaded.name) == Some(&stamp);
            if force || !unchanged {
                reloading.insert(loaded.name.clone());
                changed.push(loaded.name.clone());
            }
        }
        changed
    }

    /// Loads plugin `name` again from its file (blocking: seconds for a large component) and swaps
    /// it in. A version that fails to load leaves the running one in place; the failure is returned.
    pub fn reload_one(&self, name: &str) -> Result<(), PluginError> {
        let outcome = self.load_again(name);
        if let Some(config) = self.configs.iter().find(|c| c.name == name) {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            match &outcome {
                Ok(()) => failed.remove(name),
                Err(_) => failed.insert(Arc::from(name), FileStamp::of(&config.path)),
            };
        }
        self.reloading.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        outcome
    }

    fn load_again(&self, name: &str) -> Result<(), PluginError> {
        let config = self.configs.iter().find(|c| c.name == name).ok_or_else(|| PluginError::Unknown(name.into()))?;
        let old = self.current().get(name).cloned().ok_or_else(|| PluginError::Unknown(name.into()))?;
        // The new version keeps counting, and keeps its log budget, where the old one left off.
        let fresh = LoadedPlugin::load(
            &self.runtime.engine,
            self.runtime.epoch.ticker(),
            &self.runtime.linkers,
            config,
            self.runtime.limits,
            old.stats.clone(),
            old.budget.clone(),
        )?;
        let mut slot = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        let mut map = (**slot).clone();
        map.insert(fresh.name.clone(), Arc::new(fresh));
        *slot = Arc::new(map);
        Ok(())
    }

    /// Calls plugin `name` on `event` and logs what it printed. Blocking (up to the plugin's
    /// deadline): call it on a plugin thread ([`Self::pool`]), not on an async runtime's thread.
    pub fn call(&self, name: &str, event: &PluginEvent) -> Result<Verdict, PluginError> {
        let (outcome, printed) = self.call_printed(name, event);
        if let Some(plugin) = self.current().get(name) {
            log_printed(name, &event.id, &printed, &plugin.budget);
        }
        if let Some(shadow) = self.shadows.get(name).filter(|s| s.picks()) {
            let (shadow, event, live) = (shadow.clone(), event.clone(), outcome.clone());
            let handle = shadow.clone();
            if !self.runtime.pool.try_spawn_spare(move || shadow.run(&event, &live)) {
                handle.skipped();
            }
        }
        outcome
    }

    /// What the shadow runs of plugin `name`'s candidate found; `None` when it has no candidate.
    pub fn shadow(&self, name: &str) -> Option<ShadowReport> {
        self.shadows.get(name).map(|shadow| shadow.report(name))
    }

    /// [`Self::call`], returning what the call printed instead of logging it.
    pub fn call_printed(&self, name: &str, event: &PluginEvent) -> (Result<Verdict, PluginError>, Printed) {
        let plugins = self.current();
        let Some(plugin) = plugins.get(name) else {
            return (Err(PluginError::Unknown(name.to_string())), Printed::default());
        };
        let started = std::time::Instant::now();
        let (outcome, printed) = plugin.call(event);
        plugin.stats.record(&outcome, started.elapsed());
        (outcome, printed)
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

    /// Renders every plugin's metrics, and the plugin threads', in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let current = self.current();
        let stats: Vec<(&str, &super::metrics::PluginStats)> =
            self.configs.iter().filter_map(|c| current.get(c.name.as_str())).map(|p| (&*p.name, &*p.stats)).collect();
        super::metrics::render(stats.iter().copied(), out);
        let shadows = self.configs.iter().filter_map(|c| self.shadows.get_key_value(c.name.as_str()));
        super::shadow::render(shadows.map(|(name, shadow)| (&**name, shadow)), out);
        super::metrics::render_pool(&self.runtime.pool.stats(), out);
    }
}

/// Plugins the engine's pool holds instances for: each plugin, and each shadow candidate.
fn slots(configs: &[PluginConfig]) -> usize {
    configs.len() + configs.iter().filter(|c| c.shadow.is_some()).count()
}

/// The shadow candidate of `config`, loaded like the plugin itself (its settings, another file).
fn load_shadow(
    engine: &Engine,
    ticker: &EpochTicker,
    linkers: &Linkers,
    config: &PluginConfig,
    limits: SharedLimits,
) -> Result<Option<Shadow>, PluginError> {
    let Some(path) = &config.shadow else { return Ok(None) };
    let candidate = PluginConfig { name: format!("{} (shadow)", config.name), path: path.clone(), ..config.clone() };
    let loaded = LoadedPlugin::load(engine, ticker, linkers, &candidate, limits, Arc::default(), Arc::default())?;
    Ok(Some(Shadow::new(loaded, path.clone(), config.shadow_rate)))
}

fn new_engine(max_plugins: usize, max_memory_mb: u32, wasm: &WasmConfig, max_warm: usize) -> wasmtime::Result<Engine> {
    let largest_memory = (max_memory_mb as usize) << 20;
    // Twice the warm instances: during a reload the old version's instances live until its last call ends.
    let instances = 2 * max_plugins as u32 * max_warm as u32 + SPARE_INSTANCES;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::epoch::tests::wait_for;
    use std::time::Duration;

    /// The epoch ticker parks while no call comes (see `epoch.rs`): a call that loops forever
    /// after such a spell must still be cut off at its deadline, and one that returns must pass
    /// (and let the ticker park again).
    #[test]
    fn a_call_after_an_idle_spell_still_meets_its_deadline() {
        let dir = std::env::temp_dir().join(format!("sluice-epoch-idle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, wat: &str| {
            let path = dir.join(format!("{name}.wat"));
            std::fs::write(&path, wat).unwrap();
            path
        };
        // Loops forever.
        let spinner = write(
            "spinner",
            r#"(module (memory (export "memory") 1)
            (func (export "sluice_alloc") (param i32) (result i32) (i32.const 64))
            (func (export "sluice_handle") (param i32 i32) (result i64) (loop br 0) (i64.const 0)))"#,
        );
        // Passes every event at once: its verdict is the 11 bytes at 0.
        let passer = write(
            "passer",
            r#"(module (memory (export "memory") 1) (data (i32.const 0) "{\"pass\":{}}")
            (func (export "sluice_alloc") (param i32) (result i32) (i32.const 64))
            (func (export "sluice_handle") (param i32 i32) (result i64) (i64.const 11)))"#,
        );
        let config = |name: &str, path: std::path::PathBuf| PluginConfig {
            name: name.into(),
            path,
            config: serde_json::json!({}),
            deadline: Duration::from_millis(50),
            startup_deadline: Duration::from_secs(1),
            max_memory_mb: 16,
            max_calls_per_instance: 10,
            grant_clock: false,
            on_error: Default::default(),
            shadow: None,
            shadow_rate: 1.0,
        };
        let configs = [config("spinner", spinner), config("passer", passer)];
        let set = Arc::new(PluginSet::load(&configs, &WasmConfig::default(), 1 << 20).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let ticker = set.runtime.epoch.ticker().clone();
        let event = PluginEvent {
            id: "evt_x".into(),
            source: "s".into(),
            event_type: "t".into(),
            headers: vec![],
            payload: b"{}".to_vec(),
        };

        // The spinner's call, on a thread of its own: were its deadline never to fire, the test
        // fails instead of hanging.
        let spin = || {
            let (set, event) = (set.clone(), event.clone());
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || done.send(set.call("spinner", &event)));
            let result = result.recv_timeout(Duration::from_secs(10));
            result.expect("the spinner ran past its deadline: the epoch did not advance")
        };
        assert!(wait_for(|| ticker.is_parked()), "the ticker never parked with no call");
        let error = spin().unwrap_err();
        assert_eq!(error.kind(), "timeout", "{error}");
        assert!(wait_for(|| ticker.is_parked()), "the ticker did not park again after the call");
        let verdict = set.call("passer", &event);
        assert!(matches!(verdict, Ok(Verdict::Pass(_))), "{verdict:?}");
        assert!(wait_for(|| ticker.is_parked()), "the ticker did not park after a call that returned");
        let error = spin().unwrap_err();
        assert_eq!(error.kind(), "timeout", "after a second idle spell: {error}");
    }
}
