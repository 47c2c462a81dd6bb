//! Watches each plugin's error rate: when, over one `alerts.plugin_window`, at least
//! `alerts.plugin_min_calls` calls were made and `alerts.plugin_error_rate` of them failed, a
//! `plugin.failing` alert is sent (once, until the rate falls back under the threshold).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::PluginSet;
use crate::config::AlertsConfig;
use crate::delivery::alert::{Alerter, PluginFailingAlert};

/// Checks every plugin of the set `plugins` returns (the running one: a config reload replaces it)
/// once per window until `shutdown`; alerts through `alerter`.
pub async fn watch(
    plugins: impl Fn() -> Arc<PluginSet>,
    alerter: Alerter,
    config: AlertsConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: HashMap<String, (u64, u64)> =
        plugins().totals().into_iter().map(|(name, calls, errors)| (name, (calls, errors))).collect();
    let mut failing: HashMap<String, bool> = HashMap::new();
    let mut tick = tokio::time::interval(config.plugin_window);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (name, calls, errors) in plugins().totals() {
            let (calls_before, errors_before) = last.insert(name.clone(), (calls, errors)).unwrap_or_default();
            let (calls, errors) = (calls.saturating_sub(calls_before), errors.saturating_sub(errors_before));
            let rate = if calls == 0 { 0.0 } else { errors as f64 / calls as f64 };
            let over = calls >= config.plugin_min_calls && rate >= config.plugin_error_rate;
            let was = failing.insert(name.clone(), over).unwrap_or(false);
            if over && !was {
                tracing::error!(plugin = %name, calls, errors, "Plugin failing: its error rate crossed the alert threshold.");
                alerter.send_plugin(PluginFailingAlert {
                    kind: "plugin.failing",
                    plugin: name,
                    calls,
                    errors,
                    error_rate: (rate * 1000.0).round() / 1000.0,
                    window_seconds: config.plugin_window.as_secs(),
                    at: crate::clock::unix_millis(),
                });
            } else if was && !over {
                tracing::info!(plugin = %name, calls, errors, "Plugin error rate is back under the alert threshold.");
            }
        }
    }
}
