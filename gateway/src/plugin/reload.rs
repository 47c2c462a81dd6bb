//! Hot reload: plugins are reloaded when their file changes (checked every [`POLL`]) or when the
//! process gets SIGHUP. Each plugin loads on a blocking thread of its own, so requests keep being
//! served and plugins reload independently; calls in flight finish on the version they started with;
//! a version that fails to load leaves the running one in place, and the failure is logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::PluginSet;

/// How often plugin files are checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// Watches the plugin files (and SIGHUP) until `shutdown` turns true.
pub async fn watch(plugins: Arc<PluginSet>, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = hangup_signal();
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            _ = ticker.tick() => false,
            // SIGHUP: reload every plugin, changed or not.
            Some(()) = recv(&mut hangup) => true,
            _ = shutdown.changed() => return,
        };
        // Each changed plugin reloads on a blocking thread of its own, so a JavaScript plugin does
        // not wait behind a Python compile; a plugin still loading is not picked up again.
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
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}
