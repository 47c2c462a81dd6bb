//! Stage 2: Wasm plugins that filter, transform or route events.
//!
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch deadlines) and the set of loaded
//!   plugins, with their reloads.
//! - `loaded` (private): one plugin's warm instances and one call (deadline, memory cap, output bound).
//! - `host` (private): what an instance's store holds and the host's imports (WASI granting nothing).
//! - [`output`]: a guest's stdout and stderr, captured per call and logged as the plugin's lines.
//! - [`pool`]: the plugin threads every plugin call runs on, off the async runtime.
//! - `bindings` (private): the only `bindgen!` site; `convert` maps its types to the ones below.
//! - [`chain`]: runs a route's plugins in order.
//! - [`metrics`]: per-plugin counters and latency histogram.
//! - `core_abi` (private): the JSON-in-memory ABI for core-module plugins (AssemblyScript, Zig, WAT, …).
//! - [`trial`]: one plugin on one event, for `sluice plugin test`.
//! - [`reload`]: reloads plugins whose file changed.
//! - [`scaffold`]: `sluice plugin new` skeletons in every language, and `sluice plugin wit`.
//! - [`shadow`]: a candidate version run beside the live one, its verdicts compared.

mod bindings;
pub mod chain;
mod convert;
mod core_abi;
pub mod engine;
mod epoch;
pub mod failing;
pub mod fixtures;
mod host;
mod loaded;
pub mod metrics;
pub mod output;
pub mod pool;
pub mod reload;
pub mod scaffold;
pub mod shadow;
pub mod trial;

use std::time::Duration;

pub use chain::{run_chain, ChainEnd, ChainVerdict};
pub use engine::PluginSet;
pub use loaded::MAX_ADDED_HEADERS;
pub use pool::{PluginPool, PoolError};

/// An event as plugins see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEvent {
    /// Event id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub payload: Vec<u8>,
}

/// One delivery chosen by a routing plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedDelivery {
    /// Endpoint name.
    pub endpoint: String,
    /// Body; the event's payload when `None`.
    pub payload: Option<Vec<u8>>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

/// A plugin's decision about an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Deliver nothing, for this reason.
    Drop(String),
    /// Go on with this (possibly rewritten) event.
    Pass(PluginEvent),
    /// Deliver exactly these.
    Route(Vec<RoutedDelivery>),
}

/// Why a plugin failed an event (or failed to load). Every variant names the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The plugin trapped (e.g. `unreachable`, out-of-bounds access, a panic in the guest, an
    /// uncaught exception), with what it wrote to stderr first (a panic message, a traceback).
    #[error("plugin `{plugin}` trapped: {message}{}", stderr_suffix(.stderr))]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap.
        message: String,
        /// The end of what the guest wrote to stderr in that call; empty when it wrote nothing.
        stderr: String,
    },
    /// The plugin ran past its deadline and was interrupted.
    #[error("plugin `{plugin}` exceeded its deadline of {deadline:?} (interrupted after {took:?})")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The configured deadline.
        deadline: Duration,
        /// How long it ran.
        took: Duration,
    },
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_mb} MiB")]
    Memory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        limit_mb: usize,
    },
    /// The plugin returned an error.
    #[error("plugin `{plugin}` rejected the event: {message}")]
    Rejected {
        /// Plugin name.
        plugin: String,
        /// Its message.
        message: String,
    },
    /// The plugin returned more than the host takes (`wasm.max_output_bytes`, or too many headers or
    /// deliveries); refused before it was copied.
    #[error("plugin `{plugin}` returned too much: {what}")]
    Output {
        /// Plugin name.
        plugin: String,
        /// What was over which limit.
        what: String,
    },
    /// The plugin added a header it may not set (one the gateway sets, or not valid HTTP).
    #[error("plugin `{plugin}` added an invalid header: {message}")]
    Header {
        /// Plugin name.
        plugin: String,
        /// Which header, and why.
        message: String,
    },
    /// The plugin routed to an endpoint that is not configured.
    #[error("plugin `{plugin}` routed to unknown endpoint `{endpoint}`")]
    UnknownEndpoint {
        /// Plugin name.
        plugin: String,
        /// The name it returned.
        endpoint: String,
    },
    /// No plugin of this name is loaded.
    #[error("no plugin named `{0}` is loaded")]
    Unknown(String),
    /// The plugin could not be loaded.
    #[error("plugin `{plugin}` failed to load: {message}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The engine itself could not be set up.
    #[error("the Wasm engine could not be set up: {0}")]
    Engine(String),
}

/// `; it wrote to stderr: …` when the guest wrote something, else nothing.
fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; it wrote to stderr: {stderr}")
    }
}

impl PluginError {
    /// A short machine-readable kind: `trap`, `timeout`, `memory`, `rejected`, `output`,
    /// `unknown_endpoint`, …
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap { .. } => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::Memory { .. } => "memory",
            PluginError::Rejected { .. } => "rejected",
            PluginError::Output { .. } => "output",
            PluginError::Header { .. } => "invalid_header",
            PluginError::UnknownEndpoint { .. } => "unknown_endpoint",
            PluginError::Unknown(_) => "unknown_plugin",
            PluginError::Load { .. } => "load",
            PluginError::Engine(_) => "engine",
        }
    }

    /// Whether this is a call that failed (trap, deadline, memory, an error returned, what it
    /// returned refused), as opposed to a plugin that is not there or did not load.
    pub fn is_call_failure(&self) -> bool {
        !matches!(self, PluginError::Unknown(_) | PluginError::Load { .. } | PluginError::Engine(_))
    }

    /// The plugin's name, where the error concerns one.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PluginError::Trap { plugin, .. }
            | PluginError::Timeout { plugin, .. }
            | PluginError::Memory { plugin, .. }
            | PluginError::Rejected { plugin, .. }
            | PluginError::Output { plugin, .. }
            | PluginError::Header { plugin, .. }
            | PluginError::UnknownEndpoint { plugin, .. }
            | PluginError::Load { plugin, .. } => Some(plugin),
            PluginError::Unknown(plugin) => Some(plugin),
            PluginError::Engine(_) => None,
        }
    }
}
