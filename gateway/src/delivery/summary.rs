//! The delivery summary: every `queue.log_summary_every`, one INFO line per endpoint that had
//! attempts since the last one (succeeded, failed by outcome, mean latency), so the log stays
//! useful at any rate while each delivery's own line is at DEBUG. Read from the attempt counters
//! the metrics keep, so it costs the delivery path nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::{AttemptTotals, Metrics};

/// One endpoint's attempts between two summaries.
#[derive(Debug, PartialEq)]
pub struct Summary {
    /// Endpoint name.
    pub endpoint: String,
    /// Attempts by outcome, in [`crate::metrics::OUTCOMES`] order (`success` first).
    pub outcomes: [u64; 4],
    /// Mean latency of those attempts, ms.
    pub mean_latency_ms: f64,
}

/// Logs a summary every `every` until `shutdown` (and once more then, for the last stretch).
pub async fn run(metrics: Arc<Metrics>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    if every.is_zero() {
        return;
    }
    let mut last: HashMap<String, AttemptTotals> = metrics.attempt_totals().into_iter().collect();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let now = metrics.attempt_totals();
        for summary in since(&last, &now) {
            let [succeeded, http_error, timeout, error] = summary.outcomes;
            tracing::info!(endpoint = %summary.endpoint, succeeded, failed = http_error + timeout + error, http_error,
                timeout, error, mean_latency_ms = summary.mean_latency_ms, period = %humantime::format_duration(every),
                "Deliveries since the last summary.");
        }
        last = now.into_iter().collect();
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// The attempts each endpoint made between `before` and `now`, for those that made any.
pub fn since(before: &HashMap<String, AttemptTotals>, now: &[(String, AttemptTotals)]) -> Vec<Summary> {
    now.iter()
        .filter_map(|(endpoint, totals)| {
            let was = before.get(endpoint).copied().unwrap_or_default();
            let outcomes: [u64; 4] = std::array::from_fn(|i| totals.outcomes[i].saturating_sub(was.outcomes[i]));
            let attempts: u64 = outcomes.iter().sum();
            (attempts > 0).then(|| Summary {
                endpoint: endpoint.clone(),
                outcomes,
                mean_latency_ms: totals.sum_micros.saturating_sub(was.sum_micros) as f64 / attempts as f64 / 1000.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::OUTCOMES;

    #[test]
    fn a_summary_counts_what_each_endpoint_did_since_the_last_and_skips_idle_ones() {
        let totals = |outcomes: [u64; 4], sum_micros| AttemptTotals { outcomes, sum_micros };
        let before: HashMap<String, AttemptTotals> =
            [("orders".to_string(), totals([10, 1, 0, 0], 11_000)), ("idle".to_string(), totals([5, 0, 0, 0], 500))]
                .into_iter()
                .collect();
        let now = vec![
            ("orders".to_string(), totals([13, 2, 1, 0], 23_000)),
            ("idle".to_string(), totals([5, 0, 0, 0], 500)),
            ("new".to_string(), totals([0, 0, 0, 2], 4_000)),
        ];
        let summaries = since(&before, &now);
        assert_eq!(
            summaries,
            [
                Summary { endpoint: "orders".into(), outcomes: [3, 1, 1, 0], mean_latency_ms: 2.4 },
                Summary { endpoint: "new".into(), outcomes: [0, 0, 0, 2], mean_latency_ms: 2.0 },
            ]
        );
        assert_eq!(OUTCOMES[0], "success", "the order the log line reads them in");
    }
}
