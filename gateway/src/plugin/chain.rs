//! Runs a route's plugins in order: each `pass` hands its event to the next plugin; a `drop` or a
//! `route` ends the chain. An empty chain passes the event unchanged. A failed call ends it with
//! the error, unless that plugin is set to `on_error = "skip"`: then the chain goes on with the
//! event as the plugin received it.

use std::sync::Arc;

use super::{PluginError, PluginEvent, PluginSet, RoutedDelivery, Verdict};
use crate::config::OnError;

/// Where a chain ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEnd {
    /// The event as the last plugin saw it (for `pass`, as it passed it on).
    pub event: PluginEvent,
    /// The last verdict: `Pass` (deliver `event` to the route's endpoints), `Drop` or `Route`.
    pub verdict: ChainVerdict,
    /// The plugin that gave it, `None` for an empty chain.
    pub plugin: Option<Arc<str>>,
}

/// How a chain ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainVerdict {
    /// Every plugin passed: deliver the event to the route's endpoints.
    Pass,
    /// A plugin dropped the event, for this reason.
    Drop(String),
    /// A plugin chose these deliveries.
    Route(Vec<RoutedDelivery>),
}

/// Runs `plugins` on `event`.
pub fn run_chain(set: &PluginSet, plugins: &[Arc<str>], event: PluginEvent) -> Result<ChainEnd, PluginError> {
    let mut current = event;
    let mut last = None;
    for name in plugins {
        last = Some(name.clone());
        let outcome = match set.call(name, &current) {
            Err(e) if e.is_call_failure() && set.skip_failure(name) => {
                tracing::warn!(plugin = %name, event_id = %current.id, error = %e,
                    "Plugin failed; on_error = \"skip\": the event goes on as if it had passed.");
                continue;
            }
            outcome => outcome?,
        };
        let verdict = match outcome {
            Verdict::Pass(next) => {
                current = next;
                continue;
            }
            Verdict::Drop(reason) => ChainVerdict::Drop(reason),
            Verdict::Route(deliveries) => ChainVerdict::Route(deliveries),
        };
        return Ok(ChainEnd { event: current, verdict, plugin: last });
    }
    Ok(ChainEnd { event: current, verdict: ChainVerdict::Pass, plugin: last })
}

impl PluginSet {
    /// Whether a failed call of plugin `name` lets its event go on (`on_error = "skip"`); when it
    /// does, the skip is counted.
    pub fn skip_failure(&self, name: &str) -> bool {
        match self.current().get(name) {
            Some(plugin) if plugin.on_error == OnError::Skip => {
                plugin.stats.record_skip();
                true
            }
            _ => false,
        }
    }
}
