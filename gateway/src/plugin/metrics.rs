//! Per-plugin metrics: calls, verdicts, errors by kind and call latency, kept in atomics (no lock on
//! the call path) and rendered in the Prometheus text format. They survive plugin reloads.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{PluginError, Verdict};

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.001, 0.01, 0.1, 1.0];
/// Verdict labels, in counter order.
const VERDICTS: [&str; 3] = ["drop", "pass", "route"];
/// Error kinds, in counter order.
const ERRORS: [&str; 7] = ["trap", "timeout", "memory", "rejected", "output", "invalid_header", "other"];

/// The counters of one plugin.
#[derive(Default)]
pub struct PluginStats {
    verdicts: [AtomicU64; 3],
    errors: [AtomicU64; ERRORS.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    skipped: AtomicU64,
}

impl PluginStats {
    /// Records one call.
    pub fn record(&self, outcome: &Result<Verdict, PluginError>, took: Duration) {
        match outcome {
            Ok(Verdict::Drop(_)) => self.verdicts[0].fetch_add(1, Ordering::Relaxed),
            Ok(Verdict::Pass(_)) => self.verdicts[1].fetch_add(1, Ordering::Relaxed),
            Ok(Verdict::Route(_)) => self.verdicts[2].fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let index = ERRORS.iter().position(|k| *k == e.kind()).unwrap_or(ERRORS.len() - 1);
                self.errors[index].fetch_add(1, Ordering::Relaxed)
            }
        };
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl PluginStats {
    /// Records a failed call whose event went on (`on_error = "skip"`).
    pub fn record_skip(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls and failed calls so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum())
    }
}

/// Renders the metrics of every plugin.
pub fn render<'a>(plugins: impl Iterator<Item = (&'a str, &'a PluginStats)> + Clone, out: &mut String) {
    let _ = writeln!(out, "# HELP sluice_plugin_calls_total Plugin calls by verdict.");
    let _ = writeln!(out, "# TYPE sluice_plugin_calls_total counter");
    for (name, stats) in plugins.clone() {
        for (verdict, counter) in VERDICTS.iter().zip(&stats.verdicts) {
            let n = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_plugin_calls_total{{plugin=\"{name}\",verdict=\"{verdict}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP sluice_plugin_errors_total Plugin calls that failed, by kind.");
    let _ = writeln!(out, "# TYPE sluice_plugin_errors_total counter");
    for (name, stats) in plugins.clone() {
        for (kind, counter) in ERRORS.iter().zip(&stats.errors) {
            let n = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_plugin_errors_total{{plugin=\"{name}\",kind=\"{kind}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP sluice_plugin_skipped_total Failed plugin calls whose event went on as if passed (on_error = \"skip\")."
    );
    let _ = writeln!(out, "# TYPE sluice_plugin_skipped_total counter");
    for (name, stats) in plugins.clone() {
        let n = stats.skipped.load(Ordering::Relaxed);
        let _ = writeln!(out, "sluice_plugin_skipped_total{{plugin=\"{name}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP sluice_plugin_call_seconds Duration of plugin calls, instantiation included.");
    let _ = writeln!(out, "# TYPE sluice_plugin_call_seconds histogram");
    for (name, stats) in plugins {
        let mut cumulative = 0;
        for (bound, counter) in BUCKETS.iter().zip(&stats.buckets) {
            cumulative += counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_plugin_call_seconds_bucket{{plugin=\"{name}\",le=\"{bound}\"}} {cumulative}");
        }
        let count = stats.count.load(Ordering::Relaxed);
        let sum = stats.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "sluice_plugin_call_seconds_bucket{{plugin=\"{name}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "sluice_plugin_call_seconds_sum{{plugin=\"{name}\"}} {sum}");
        let _ = writeln!(out, "sluice_plugin_call_seconds_count{{plugin=\"{name}\"}} {count}");
    }
}

/// Renders the plugin threads' gauges and refusals.
pub fn render_pool(pool: &super::pool::PoolStats, out: &mut String) {
    let _ = writeln!(out, "# HELP sluice_plugin_threads Plugin threads, and how many run a plugin call now.");
    let _ = writeln!(out, "# TYPE sluice_plugin_threads gauge");
    let _ = writeln!(out, "sluice_plugin_threads{{state=\"total\"}} {}", pool.threads);
    let _ = writeln!(out, "sluice_plugin_threads{{state=\"busy\"}} {}", pool.busy);
    let _ = writeln!(out, "# HELP sluice_plugin_queue_depth Plugin work waiting for a plugin thread.");
    let _ = writeln!(out, "# TYPE sluice_plugin_queue_depth gauge");
    let _ = writeln!(out, "sluice_plugin_queue_depth {}", pool.queued);
    let _ = writeln!(
        out,
        "# HELP sluice_plugin_queue_rejected_total Events refused (503) because plugin work was queued to its bound."
    );
    let _ = writeln!(out, "# TYPE sluice_plugin_queue_rejected_total counter");
    let _ = writeln!(out, "sluice_plugin_queue_rejected_total {}", pool.rejected);
}
