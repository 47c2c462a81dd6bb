//! Hot reload of plugin files: a plugin is reloaded when its file changes (checked every
//! [`POLL`]). Each plugin loads on a blocking thread of its own, so requests keep being served and
//! plugins reload independently; calls in flight finish on the version they started with; a version
//! that fails to load leaves the running one in place, and the failure is logged. (SIGHUP reloads
//! the whole config file, plugins included: see [`crate::control`].)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::PluginSet;

/// How often plugin files are checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// Watches the files of the plugin set `current` returns (the running one: a config reload
/// replaces it) until `shutdown` turns true.
pub async fn watch(current: impl Fn() -> Arc<PluginSet>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        reload_changed(current(), false).await;
    }
}

/// Reloads the plugins of `plugins` whose file changed (every plugin with `force`), each on a
/// blocking thread of its own, so a JavaScript plugin does not wait behind a Python compile; a
/// plugin still loading is not picked up again. Returns once each has been started, not loaded.
pub async fn reload_changed(plugins: Arc<PluginSet>, force: bool) {
    let set = plugins.clone();
    let changed = tokio::task::spawn_blocking(move || set.changed(force)).await.unwrap_or_default();
    for name in changed {
        tracing::info!(plugin = %name, forced = force, "Plugin file changed; reloading it.");
        let set = plugins.clone();
        tokio::task::spawn_blocking(move || match set.reload_one(&name) {
            Ok(()) => tracing::info!(plugin = %name, "Plugin reloaded; new events use the new version."),
            Err(e) => tracing::error!(plugin = %name, error = %e,
                "Plugin reload failed; the previous version keeps running."),
        });
    }
}
