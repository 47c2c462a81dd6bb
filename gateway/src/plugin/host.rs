//! What a plugin instance's store holds and what the host offers it: WASI granting nothing (no
//! files, environment, network or stdin; stopped clocks unless granted; stdout and stderr captured by
//! [`super::output`]), the memory limiter, and the `log` import tagged with the plugin and event.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::host;
use super::output::{cut_line, Capture, LineBudget, Printed};

/// Most table elements one instance may hold.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Per-instance host state.
pub(super) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limits,
    plugin: Arc<str>,
    /// The event of the call in progress, for log lines.
    pub(super) event_id: String,
    stdout: Capture,
    stderr: Capture,
    budget: Arc<LineBudget>,
}

impl HostState {
    /// State for a fresh instance of `plugin`.
    pub(super) fn new(plugin: Arc<str>, memory_bytes: usize, grant_clock: bool, budget: Arc<LineBudget>) -> Self {
        let (stdout, stderr) = (Capture::default(), Capture::default());
        let mut wasi = WasiCtx::builder();
        // No network, said explicitly (the default address check already refuses every address).
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !grant_clock {
            // No clock unless granted: both clocks read zero (the Unix epoch), and never move.
            wasi.wall_clock(StoppedClock).monotonic_clock(StoppedClock);
        }
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: Limits { memory_bytes, memory_exceeded: false },
            plugin,
            event_id: String::new(),
            stdout,
            stderr,
            budget,
        }
    }

    /// What the instance printed since the last take.
    pub(super) fn take_printed(&self) -> Printed {
        Printed::take(&self.stdout, &self.stderr)
    }

    /// Writes a plugin's log line, tagged with the plugin's name and the event id, within the
    /// plugin's line budget.
    pub(super) fn log(&self, level: LogLevel, message: &str) {
        let (plugin, event_id) = (&*self.plugin, self.event_id.as_str());
        if !self.budget.allow(plugin) {
            return;
        }
        let message = cut_line(message);
        let stream = "log";
        match level {
            LogLevel::Trace => tracing::trace!(plugin, event_id, stream, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, event_id, stream, "{message}"),
            LogLevel::Info => tracing::info!(plugin, event_id, stream, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, event_id, stream, "{message}"),
            LogLevel::Error => tracing::error!(plugin, event_id, stream, "{message}"),
        }
    }
}

/// The memory cap of one instance; remembers whether it was hit.
pub(super) struct Limits {
    memory_bytes: usize,
    pub(super) memory_exceeded: bool,
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

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let level = match level {
            host::Level::Trace => LogLevel::Trace,
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        HostState::log(self, level, &message);
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

impl LogLevel {
    /// The core ABI's numbering: 0 trace … 4 error (anything higher is error too).
    pub(super) fn from_number(level: i32) -> Self {
        match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }
}

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
