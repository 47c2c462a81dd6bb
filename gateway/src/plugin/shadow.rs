//! Shadow runs: a candidate version of a plugin (`[[plugins]] shadow = "candidate.wasm"`) runs on
//! the same events as the live one and its verdicts are compared, so a new version is tried on
//! real traffic before it goes live.
//!
//! The candidate runs after the live call returned, as spare work on a plugin thread
//! ([`super::pool::PluginPool::try_spawn_spare`]): never while the live chain waits, never in a
//! place of the queue that live work needs (with the queue half full it is skipped, and counted),
//! and within the plugin's own deadline and memory cap. Its verdict is compared and dropped: it
//! reaches no delivery. Counts of same, different, failed and skipped runs, and the latest
//! differences (bounded), are what `GET /v1/plugins/{name}/shadow` shows.

use std::collections::VecDeque;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::loaded::LoadedPlugin;
use super::{PluginError, PluginEvent, Verdict};

/// Differences kept per plugin: the latest.
const KEPT: usize = 100;
/// Outcomes of a shadow run, in counter order.
const OUTCOMES: [&str; 4] = ["same", "different", "failed", "skipped"];

/// A plugin's candidate and what its runs found.
pub struct Shadow {
    pub(super) candidate: LoadedPlugin,
    path: PathBuf,
    rate: f64,
    counts: [AtomicU64; 4],
    differences: Mutex<VecDeque<Difference>>,
}

/// One event on which the candidate's verdict differed from the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// When, ms since the epoch.
    pub at: u64,
    /// The live verdict, summarised.
    pub live: String,
    /// The candidate's, summarised (`failed: …` when it failed).
    pub candidate: String,
}

/// What `GET /v1/plugins/{name}/shadow` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// The plugin.
    pub plugin: String,
    /// The candidate's file.
    pub candidate: String,
    /// Share of live calls it runs on.
    pub shadow_rate: f64,
    /// Runs whose verdict matched the live one.
    pub same: u64,
    /// Runs whose verdict differed.
    pub different: u64,
    /// Runs where the candidate failed (trap, deadline, memory, error) and the live call did not.
    pub failed: u64,
    /// Live calls with no shadow run because plugin work was queued past half its bound.
    pub skipped: u64,
    /// The latest differences, newest first (at most 100).
    pub differences: Vec<Difference>,
}

impl Shadow {
    /// A shadow of `candidate` (loaded from `path`) on `rate` of the live calls.
    pub(super) fn new(candidate: LoadedPlugin, path: PathBuf, rate: f64) -> Self {
        Self { candidate, path, rate, counts: Default::default(), differences: Mutex::new(VecDeque::new()) }
    }

    /// Whether this live call gets a shadow run.
    pub(super) fn picks(&self) -> bool {
        self.rate >= 1.0 || rand::random::<f64>() < self.rate
    }

    /// A live call that found no room for its shadow run.
    pub(super) fn skipped(&self) {
        self.counts[3].fetch_add(1, Ordering::Relaxed);
    }

    /// Runs the candidate on `event` (blocking: on a plugin thread) and compares its verdict with
    /// the live call's `live`.
    pub(super) fn run(&self, event: &PluginEvent, live: &Result<Verdict, PluginError>) {
        let (candidate, _printed) = self.candidate.call(event);
        let outcome = match (live, &candidate) {
            (Ok(a), Ok(b)) if a == b => 0,
            (Err(a), Err(b)) if a.kind() == b.kind() => 0,
            (Ok(_), Err(_)) => 2,
            _ => 1,
        };
        self.counts[outcome].fetch_add(1, Ordering::Relaxed);
        if outcome == 0 {
            return;
        }
        let difference = Difference {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            at: crate::clock::unix_millis(),
            live: summary(live),
            candidate: summary(&candidate),
        };
        let mut kept = self.differences.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == KEPT {
            kept.pop_back();
        }
        kept.push_front(difference);
    }

    /// The report of plugin `name`.
    pub fn report(&self, name: &str) -> ShadowReport {
        let count = |i: usize| self.counts[i].load(Ordering::Relaxed);
        ShadowReport {
            plugin: name.to_string(),
            candidate: self.path.display().to_string(),
            shadow_rate: self.rate,
            same: count(0),
            different: count(1),
            failed: count(2),
            skipped: count(3),
            differences: self.differences.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
        }
    }
}

/// A verdict in a line: `pass: type …, N bytes, headers [...]`, `drop: reason`, `route: [endpoints]`,
/// `failed: kind: message`.
fn summary(verdict: &Result<Verdict, PluginError>) -> String {
    match verdict {
        Ok(Verdict::Pass(event)) => {
            let headers: Vec<String> = event.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let mut text = format!("pass: type {}, {} bytes", event.event_type, event.payload.len());
            if !headers.is_empty() {
                let _ = write!(text, ", headers [{}]", headers.join(", "));
            }
            text
        }
        Ok(Verdict::Drop(reason)) => format!("drop: {reason}"),
        Ok(Verdict::Route(deliveries)) => {
            let endpoints: Vec<&str> = deliveries.iter().map(|d| d.endpoint.as_str()).collect();
            format!("route: [{}]", endpoints.join(", "))
        }
        Err(e) => format!("failed: {}: {e}", e.kind()),
    }
}

/// Renders every shadow's counts in the Prometheus text format.
pub fn render<'a>(shadows: impl Iterator<Item = (&'a str, &'a Arc<Shadow>)>, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP sluice_plugin_shadow_runs_total Shadow runs of a plugin's candidate by outcome (same, different, failed; skipped: no spare room)."
    );
    let _ = writeln!(out, "# TYPE sluice_plugin_shadow_runs_total counter");
    for (name, shadow) in shadows {
        for (outcome, n) in OUTCOMES.iter().zip(&shadow.counts) {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_plugin_shadow_runs_total{{plugin=\"{name}\",outcome=\"{outcome}\"}} {n}");
        }
    }
}
