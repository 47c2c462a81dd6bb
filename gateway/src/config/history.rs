//! `[history]`: where finished deliveries go to outlive the queue's memory (PostgreSQL).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[history]`: finished deliveries (succeeded and dead), their attempt logs and their events are
/// written to PostgreSQL by a background writer, then leave Redis after `keep_in_redis`. Absent:
/// the queue's store keeps history for `queue.retention`, as it always did.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// `postgres://user:password@host:port/database`. Required.
    pub postgres_url: String,
    /// How long a succeeded delivery stays in Redis once PostgreSQL holds it, so a fresh lookup
    /// is served from memory. Dead letters stay for `queue.dead_retention` (listed, replayable).
    /// Default `15m`.
    #[serde(with = "humantime_serde")]
    pub keep_in_redis: Duration,
    /// How long PostgreSQL keeps history: older day partitions are dropped whole. Default `30d`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most finished deliveries written in one transaction. Default 500.
    pub batch: usize,
    /// Most PostgreSQL connections this process opens. Default 4.
    pub pool_size: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            postgres_url: String::new(),
            keep_in_redis: Duration::from_secs(15 * 60),
            retention: Duration::from_secs(30 * 24 * 3600),
            batch: 500,
            pool_size: 4,
        }
    }
}

impl std::fmt::Debug for HistoryConfig {
    // Written out so a password in the URL never prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryConfig")
            .field("postgres_url", &crate::redact::url_text(&self.postgres_url))
            .field("keep_in_redis", &self.keep_in_redis)
            .field("retention", &self.retention)
            .field("batch", &self.batch)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl HistoryConfig {
    /// Every problem with these settings, each with its key's path.
    pub(super) fn problems(&self, redis_backend: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let scheme_ok = ["postgres://", "postgresql://"].iter().any(|s| self.postgres_url.starts_with(s));
        if !scheme_ok || self.postgres_url.parse::<tokio_postgres::Config>().is_err() {
            problems.push(format!(
                "history.postgres_url: `{}` is not a postgres:// URL",
                crate::redact::url_text(&self.postgres_url)
            ));
        }
        if !redis_backend {
            problems.push(
                "history: needs the redis backend (the embedded store keeps its own history for queue.retention)"
                    .to_string(),
            );
        }
        if self.keep_in_redis < Duration::from_secs(1) {
            problems.push("history.keep_in_redis: must be at least 1s".to_string());
        }
        if self.retention < Duration::from_secs(24 * 3600) {
            problems.push("history.retention: must be at least 1d (history is kept in day partitions)".to_string());
        }
        if self.batch == 0 || self.batch > 10_000 {
            problems.push("history.batch: must be between 1 and 10000".to_string());
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            problems.push("history.pool_size: must be between 1 and 64".to_string());
        }
        problems
    }
}
