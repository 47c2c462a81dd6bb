//! Dead letters in history: listed newest first (by time buried, then id), as the queue lists its
//! own, so the admin API can merge the two; and read whole, with their events, for a restore into
//! the queue once Redis no longer holds them (`queue.dead_retention` shorter than
//! `history.retention`). Served by the partial indexes on dead rows (migration 2).

use std::time::SystemTime;

use ulid::Ulid;

use super::store::{delivery_view, millis, time, VIEW_COLUMNS};
use super::{History, HistoryError};
use crate::id;
use crate::queue::{DeadCursor, DeadLetter, Own, Restore};

impl History {
    /// Dead letters history holds, newest first, that come after `before` in that order,
    /// optionally only `endpoint`'s; at most `limit`.
    pub async fn dead_letters(
        &self,
        endpoint: Option<&str>,
        before: Option<DeadCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        // No id in the cursor: everything buried in its millisecond is left out, and every id
        // sorts after the empty string.
        let (at, after) = match before {
            Some(DeadCursor { at, id }) => (time(at), id.map(id::format_delivery).unwrap_or_default()),
            None => (time(u64::MAX >> 20), String::new()),
        };
        let rows = client
            .query(
                "SELECT id, endpoint, finished_at, attempts_made, last_error FROM sluice_deliveries \
                 WHERE state = 'dead' AND ($1::text IS NULL OR endpoint = $1) AND (finished_at, id) < ($2, $3) \
                 ORDER BY finished_at DESC, id DESC LIMIT $4",
                &[&endpoint, &at, &after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| DeadLetter {
                id: row.get(0),
                endpoint: row.get(1),
                dead_at: row.get::<_, Option<SystemTime>>(2).map(millis).unwrap_or(0),
                attempts: row.get::<_, i32>(3).max(0) as u32,
                last_error: row.get(4),
            })
            .collect())
    }

    /// A dead letter as history holds it, with its own headers and body, its event and the
    /// endpoints of the event's deliveries: all a restore into the queue needs. `None` when history
    /// holds no dead delivery of that id.
    pub async fn restorable(&self, delivery: Ulid) -> Result<Option<Restore>, HistoryError> {
        self.ensure_migrated().await?;
        let client = self.inner.pool.get().await?;
        let name = id::format_delivery(delivery);
        let Some(row) = client
            .query_opt(
                &format!(
                    "SELECT {VIEW_COLUMNS}, own_headers, own_payload FROM sluice_deliveries \
                     WHERE created_at = $1 AND id = $2 AND state = 'dead'"
                ),
                &[&time(delivery.timestamp_ms()), &name],
            )
            .await?
        else {
            return Ok(None);
        };
        drop(client);
        let view = delivery_view(delivery, &row)?;
        let event = id::event_of(delivery);
        let event_view = self
            .event(event)
            .await?
            .ok_or_else(|| HistoryError::Corrupt(format!("history holds dead letter {name} but not its event")))?;
        let mut endpoints = Vec::new();
        for summary in &event_view.deliveries {
            let Some(k) = id::parse_delivery(&summary.id).map(id::number_of).filter(|&k| k > 0) else { continue };
            if endpoints.len() < k {
                endpoints.resize(k, String::new());
            }
            endpoints[k - 1] = summary.endpoint.clone();
        }
        Ok(Some(Restore {
            delivery: view,
            own: Own {
                headers: row.try_get("own_headers")?,
                payload: row.try_get::<_, Option<Vec<u8>>>("own_payload")?.map(Into::into),
            },
            event: event_view,
            endpoints,
        }))
    }
}
