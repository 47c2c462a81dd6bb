//! Searching history: finished deliveries by endpoint, state and time range, newest first, a page
//! at a time. The cursor is a delivery id alone: its ULID carries its `created_at`, so
//! `(created_at, id) < (time of the id, id)` resumes exactly where the last page ended, and the
//! time range prunes day partitions. Served by the index on (endpoint, state, created_at, id) when
//! an endpoint is given, by each partition's primary key otherwise.

use std::time::SystemTime;

use super::store::{millis, time};
use super::{History, HistoryError};
use crate::id;
use crate::queue::search::{Found, Search};

impl History {
    /// Finished deliveries matching `search`, newest first (a state other than `succeeded` or
    /// `dead` matches none).
    pub async fn search(&self, search: &Search) -> Result<Vec<Found>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        let since = time(search.since.unwrap_or(0));
        let until = time(search.until.unwrap_or(u64::MAX >> 20));
        let (before_at, before_id) = match search.before {
            Some(id) => (Some(time(id.timestamp_ms())), Some(id::format_delivery(id))),
            None => (None, None),
        };
        let limit = search.limit as i64;
        let rows = client
            .query(
                "SELECT id, event_id, endpoint, state, attempts_made, created_at, finished_at, last_error \
                 FROM sluice_deliveries \
                 WHERE ($1::text IS NULL OR endpoint = $1) AND ($2::text IS NULL OR state = $2) \
                 AND created_at >= $3 AND created_at < $4 \
                 AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::text)) \
                 ORDER BY created_at DESC, id DESC LIMIT $7",
                &[&search.endpoint, &search.state, &since, &until, &before_at, &before_id, &limit],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Found {
                id: row.get(0),
                event_id: row.get(1),
                endpoint: row.get(2),
                state: row.get(3),
                attempts_made: row.get::<_, i32>(4).max(0) as u32,
                created_at: millis(row.get(5)),
                finished_at: row.get::<_, Option<SystemTime>>(6).map(millis),
                next_attempt_at: None,
                last_error: row.get(7),
            })
            .collect())
    }
}
