//! Gateway metrics in the Prometheus text format: events by source (received, accepted, rejected by
//! reason), deliveries by endpoint and outcome, attempt latency, deliveries in flight, and queue
//! store errors by operation. Counters are atomics per configured source and endpoint (label
//! cardinality is bounded by the config: a reload adds the names it brings and keeps those it
//! drops, so counters never go back); only rejections, a slow path, take a lock.
//! Queue depth is read from the queue's store at scrape time (see `http.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::queue::QueueDepth;

/// Upper bounds of the attempt latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Attempt outcomes, in counter order (the attempt log's `outcome` values).
pub const OUTCOMES: [&str; 4] = ["success", "http_error", "timeout", "error"];
/// Queue operations whose store errors are counted.
pub const STORE_OPS: [&str; 4] = ["enqueue", "claim", "settle", "admin"];
/// Why a claimed delivery went back to the queue unattempted (no attempt spent), in counter order.
pub const PUT_BACK_REASONS: [&str; 3] = ["endpoint_busy", "lease_budget", "unknown_endpoint"];
/// The label of events for sources no route serves.
const OTHER_SOURCE: &str = "_unknown";

/// One endpoint's attempt counters.
#[derive(Default)]
struct EndpointStats {
    outcomes: [AtomicU64; 4],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
}

/// One endpoint's attempts so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptTotals {
    /// Attempts by outcome, in [`OUTCOMES`] order.
    pub outcomes: [u64; 4],
    /// Their latencies summed, µs.
    pub sum_micros: u64,
}

/// One source's counters.
#[derive(Default)]
struct SourceStats {
    received: AtomicU64,
    accepted: AtomicU64,
}

/// The counters of every source and endpoint configured so far, by name, in the order first seen
/// (`_unknown` last among the sources).
#[derive(Default)]
struct Labels {
    sources: HashMap<String, Arc<SourceStats>>,
    source_names: Vec<String>,
    endpoints: HashMap<String, Arc<EndpointStats>>,
    endpoint_names: Vec<String>,
}

impl Labels {
    /// These labels with the sources and endpoints of `config` added (the same counters for the
    /// names already here).
    fn with(&self, config: &Config) -> Self {
        let mut sources: Vec<String> = config.routes.iter().map(|r| r.source.clone()).collect();
        sources.sort();
        sources.dedup();
        // Alerts are deliveries to the internal endpoint `_alerts`, counted like the others.
        let alerts = config.alerts.url.as_ref().map(|_| crate::config::ALERTS_ENDPOINT.to_string());
        let endpoints = config.endpoints.iter().map(|e| e.name.clone()).chain(alerts);
        let mut next = Labels {
            sources: self.sources.clone(),
            source_names: self.source_names.iter().filter(|s| *s != OTHER_SOURCE).cloned().collect(),
            endpoints: self.endpoints.clone(),
            endpoint_names: self.endpoint_names.clone(),
        };
        for name in sources.into_iter().chain([OTHER_SOURCE.to_string()]) {
            if name != OTHER_SOURCE && next.sources.contains_key(&name) {
                continue;
            }
            next.sources.entry(name.clone()).or_default();
            next.source_names.push(name);
        }
        for name in endpoints {
            if !next.endpoints.contains_key(&name) {
                next.endpoints.insert(name.clone(), Arc::default());
                next.endpoint_names.push(name);
            }
        }
        next
    }

    fn source(&self, source: &str) -> &SourceStats {
        match self.sources.get(source).or_else(|| self.sources.get(OTHER_SOURCE)) {
            Some(stats) => stats,
            // `with` always adds OTHER_SOURCE; a fresh Labels is never used.
            None => &NO_SOURCE,
        }
    }
}

/// Counts nothing anyone reads: what [`Labels::source`] gives for a source before any labels.
static NO_SOURCE: SourceStats = SourceStats { received: AtomicU64::new(0), accepted: AtomicU64::new(0) };

/// Renders the admin API's failed authentications and the requests throttled for them.
pub fn render_admin_auth((failures, throttled): (u64, u64), out: &mut String) {
    header(out, "sluice_admin_auth_failures_total", "counter", "Admin requests with a missing or wrong bearer token.");
    let _ = writeln!(out, "sluice_admin_auth_failures_total {failures}");
    header(
        out,
        "sluice_admin_auth_throttled_total",
        "counter",
        "Admin requests refused (429) after too many failed authentications from their address.",
    );
    let _ = writeln!(out, "sluice_admin_auth_throttled_total {throttled}");
}

/// Every gateway metric except the plugins' (which live with the plugins).
pub struct Metrics {
    labels: ArcSwap<Labels>,
    rejected: Mutex<BTreeMap<(String, &'static str), u64>>,
    in_flight: AtomicI64,
    store_errors: [AtomicU64; 4],
    connections_open: AtomicI64,
    connection_cap_waits: AtomicU64,
    put_back: [AtomicU64; 3],
}

impl Metrics {
    /// Counters for the sources and endpoints of `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            labels: ArcSwap::from_pointee(Labels::default().with(config)),
            rejected: Mutex::new(BTreeMap::new()),
            in_flight: AtomicI64::new(0),
            store_errors: Default::default(),
            connections_open: AtomicI64::new(0),
            connection_cap_waits: AtomicU64::new(0),
            put_back: Default::default(),
        }
    }

    /// Adds counters for the sources and endpoints of `config`, a reloaded configuration; those of
    /// names it no longer has stay (a counter never goes back).
    pub fn add_labels(&self, config: &Config) {
        self.labels.store(Arc::new(self.labels.load().with(config)));
    }

    /// An inbound connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbound connection ended.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The accept loop found every connection slot taken and waits for one.
    pub fn connection_cap_reached(&self) {
        self.connection_cap_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// An ingest request for `source` arrived.
    pub fn received(&self, source: &str) {
        self.labels.load().source(source).received.fetch_add(1, Ordering::Relaxed);
    }

    /// An event of `source` was stored (answered 202).
    pub fn accepted(&self, source: &str) {
        self.labels.load().source(source).accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// An event of `source` was refused; `reason` is the error code of the answer.
    pub fn rejected(&self, source: &str, reason: &'static str) {
        let labels = self.labels.load();
        let known = labels.sources.get_key_value(source).map(|(name, _)| name.as_str());
        let key = (known.unwrap_or(OTHER_SOURCE).to_string(), reason);
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
    }

    /// One delivery attempt to `endpoint` ended with `outcome` (one of [`OUTCOMES`]) after `took`.
    pub fn attempt(&self, endpoint: &str, outcome: &str, took: Duration) {
        let labels = self.labels.load();
        let Some(stats) = labels.endpoints.get(endpoint) else { return };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            stats.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        stats.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Each endpoint's attempts so far in this process, by name in the order first configured.
    pub fn attempt_totals(&self) -> Vec<(String, AttemptTotals)> {
        let labels = self.labels.load();
        labels
            .endpoint_names
            .iter()
            .filter_map(|name| {
                let stats = labels.endpoints.get(name)?;
                let outcomes = std::array::from_fn(|i| stats.outcomes[i].load(Ordering::Relaxed));
                Some((name.clone(), AttemptTotals { outcomes, sum_micros: stats.sum_micros.load(Ordering::Relaxed) }))
            })
            .collect()
    }

    /// A delivery attempt started (`+1`) or ended (`-1`) in this process.
    pub fn in_flight(&self, change: i64) {
        self.in_flight.fetch_add(change, Ordering::Relaxed);
    }

    /// A claimed delivery went back unattempted, for `reason` (one of [`PUT_BACK_REASONS`]).
    pub fn put_back(&self, reason: &str) {
        if let Some(i) = PUT_BACK_REASONS.iter().position(|r| *r == reason) {
            self.put_back[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A queue operation (one of [`STORE_OPS`]) failed.
    pub fn store_error(&self, op: &str) {
        if let Some(i) = STORE_OPS.iter().position(|o| *o == op) {
            self.store_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends every metric in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let labels = self.labels.load_full();
        let sources = || labels.source_names.iter().map(|name| (name, &labels.sources[name]));
        let endpoints = || labels.endpoint_names.iter().map(|name| (name, &labels.endpoints[name]));
        header(
            out,
            "sluice_events_received_total",
            "counter",
            "Ingest requests by source (_unknown: no route serves it).",
        );
        for (name, stats) in sources() {
            let _ =
                writeln!(out, "sluice_events_received_total{{source=\"{}\"}} {}", escape(name), load(&stats.received));
        }
        header(out, "sluice_events_accepted_total", "counter", "Events stored and answered 202, by source.");
        for (name, stats) in sources() {
            let _ =
                writeln!(out, "sluice_events_accepted_total{{source=\"{}\"}} {}", escape(name), load(&stats.accepted));
        }
        header(
            out,
            "sluice_events_rejected_total",
            "counter",
            "Events refused, by source and reason (the error code).",
        );
        for ((source, reason), n) in self.rejected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let name = escape(source);
            let _ = writeln!(out, "sluice_events_rejected_total{{source=\"{name}\",reason=\"{reason}\"}} {n}");
        }
        header(out, "sluice_delivery_attempts_total", "counter", "Delivery attempts by endpoint and outcome.");
        for (name, stats) in endpoints() {
            for (outcome, n) in OUTCOMES.iter().zip(&stats.outcomes) {
                let _ = writeln!(
                    out,
                    "sluice_delivery_attempts_total{{endpoint=\"{}\",outcome=\"{outcome}\"}} {}",
                    escape(name),
                    load(n)
                );
            }
        }
        header(out, "sluice_delivery_attempt_seconds", "histogram", "Duration of delivery attempts, by endpoint.");
        for (name, stats) in endpoints() {
            let name = escape(name);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(&stats.buckets) {
                cumulative += load(n);
                let _ = writeln!(
                    out,
                    "sluice_delivery_attempt_seconds_bucket{{endpoint=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count: u64 = stats.outcomes.iter().map(load).sum();
            let sum = load(&stats.sum_micros) as f64 / 1e6;
            let _ = writeln!(out, "sluice_delivery_attempt_seconds_bucket{{endpoint=\"{name}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "sluice_delivery_attempt_seconds_sum{{endpoint=\"{name}\"}} {sum}");
            let _ = writeln!(out, "sluice_delivery_attempt_seconds_count{{endpoint=\"{name}\"}} {count}");
        }
        header(out, "sluice_deliveries_in_flight", "gauge", "Delivery attempts in flight in this process.");
        let _ = writeln!(out, "sluice_deliveries_in_flight {}", self.in_flight.load(Ordering::Relaxed).max(0));
        header(out, "sluice_http_connections_open", "gauge", "Inbound HTTP connections open now.");
        let _ = writeln!(out, "sluice_http_connections_open {}", self.connections_open.load(Ordering::Relaxed).max(0));
        header(
            out,
            "sluice_http_connection_cap_waits_total",
            "counter",
            "Times the accept loop found server.max_connections connections open and waited for one to close.",
        );
        let _ = writeln!(
            out,
            "sluice_http_connection_cap_waits_total {}",
            self.connection_cap_waits.load(Ordering::Relaxed)
        );
        header(
            out,
            "sluice_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the log writer's queue was full (stderr read too slowly).",
        );
        let _ = writeln!(out, "sluice_log_lines_dropped_total {}", crate::telemetry::dropped_lines());
        header(
            out,
            "sluice_deliveries_put_back_total",
            "counter",
            "Claimed deliveries put back unattempted, no attempt spent: the endpoint at its limit, too little lease left, or parked for an endpoint this gateway's config lacks.",
        );
        for (reason, n) in PUT_BACK_REASONS.iter().zip(&self.put_back) {
            let _ = writeln!(out, "sluice_deliveries_put_back_total{{reason=\"{reason}\"}} {}", load(n));
        }
        header(
            out,
            "sluice_store_errors_total",
            "counter",
            "Failed queue store (Redis or embedded) operations, by operation.",
        );
        for (op, n) in STORE_OPS.iter().zip(&self.store_errors) {
            let _ = writeln!(out, "sluice_store_errors_total{{op=\"{op}\"}} {}", load(n));
        }
    }
}

/// Appends the queue gauges of `depth`.
pub fn render_queue_depth(depth: &QueueDepth, out: &mut String) {
    header(
        out,
        "sluice_queue_deliveries",
        "gauge",
        "Deliveries in the queue by state (due now, scheduled or leased, dead).",
    );
    for (state, n) in [("due", depth.due), ("scheduled", depth.scheduled), ("dead", depth.dead)] {
        let _ = writeln!(out, "sluice_queue_deliveries{{state=\"{state}\"}} {n}");
    }
    header(out, "sluice_queue_paused_deliveries", "gauge", "Deliveries parked because their endpoint is disabled.");
    for (endpoint, n) in &depth.paused {
        let _ = writeln!(out, "sluice_queue_paused_deliveries{{endpoint=\"{}\"}} {n}", escape(endpoint));
    }
    if let Some(bytes) = depth.store_bytes {
        header(
                out,
                "sluice_store_memory_bytes",
                "gauge",
                "Memory the queue's store uses: Redis used_memory (summed over a cluster's primaries), or the embedded store's file size.",
            );
        let _ = writeln!(out, "sluice_store_memory_bytes {bytes}");
    }
    if let Some(n) = depth.history_backlog {
        header(
            out,
            "sluice_history_backlog",
            "gauge",
            "Finished deliveries waiting in the queue's store to be written to PostgreSQL ([history]).",
        );
        let _ = writeln!(out, "sluice_history_backlog {n}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn load(n: &AtomicU64) -> u64 {
    n.load(Ordering::Relaxed)
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_source_endpoint_and_outcome() {
        let config = crate::config::from_toml(
            "[[endpoints]]\nname = \"a\\\"b\"\nurl = \"http://x/\"\nsecret = \"s\"\n[[routes]]\nsource = \"shop\"\nendpoints = [\"a\"]\n",
        )
        .unwrap();
        let metrics = Metrics::new(&config);
        metrics.received("shop");
        metrics.received("nope");
        metrics.accepted("shop");
        metrics.rejected("nope", "unknown_source");
        metrics.attempt("a\"b", "timeout", Duration::from_millis(30));
        metrics.store_error("claim");
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            r#"sluice_events_received_total{source="shop"} 1"#,
            r#"sluice_events_received_total{source="_unknown"} 1"#,
            r#"sluice_events_accepted_total{source="shop"} 1"#,
            r#"sluice_events_rejected_total{source="_unknown",reason="unknown_source"} 1"#,
            r#"sluice_delivery_attempts_total{endpoint="a\"b",outcome="timeout"} 1"#,
            r#"sluice_delivery_attempt_seconds_bucket{endpoint="a\"b",le="0.025"} 0"#,
            r#"sluice_delivery_attempt_seconds_bucket{endpoint="a\"b",le="0.05"} 1"#,
            r#"sluice_store_errors_total{op="claim"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in:\n{text}");
        }
    }
}
