//! Searching the embedded store: its `deliveries` table is keyed by delivery id, which orders
//! deliveries by creation time, so a search is one reverse range scan from the cursor, filtered.

use ulid::Ulid;

use super::records::{get_delivery, DeliveryRec, DEAD_STATE, DELIVERIES, LOW_MASK, PENDING, SUCCEEDED};
use super::EmbeddedQueue;
use crate::clock::unix_millis;
use crate::id;
use crate::queue::search::{Found, Scanned, Search};
use crate::queue::QueueError;

/// Most delivery records one page reads before it stops and says where (a selective filter over a
/// long history would otherwise read it all in one request).
const SEARCH_SCAN: usize = 10_000;

impl EmbeddedQueue {
    /// Deliveries matching `search`, newest first; see [`crate::queue::Queue::search`].
    pub(super) async fn search_deliveries(&self, search: &Search) -> Result<Scanned, QueueError> {
        let search = search.clone();
        self.read(move |txn| {
            let now = unix_millis();
            let table = txn.open_table(DELIVERIES)?;
            let (lo, hi) = search.id_range();
            let mut page = Scanned::default();
            let (mut read, mut lowest) = (0, None);
            for entry in table.range(lo..hi)?.rev() {
                let (key, _) = entry?;
                let delivery = key.value();
                if delivery & LOW_MASK == 0 {
                    continue; // not a delivery id
                }
                if read == SEARCH_SCAN {
                    page.stopped_at = lowest.map(Ulid);
                    break;
                }
                read += 1;
                lowest = Some(delivery);
                let Some(rec) = get_delivery(&table, delivery)? else { continue };
                if rec.expires.is_some_and(|at| at <= now) || !search.matches(&rec.endpoint, &rec.state) {
                    continue;
                }
                page.found.push(found(Ulid(delivery), rec));
                if page.found.len() >= search.limit {
                    break;
                }
            }
            Ok(page)
        })
        .await
    }
}

/// A delivery record as a search result.
fn found(delivery: Ulid, rec: DeliveryRec) -> Found {
    let finished = rec.state == SUCCEEDED || rec.state == DEAD_STATE;
    Found {
        id: id::format_delivery(delivery),
        event_id: id::format_event(id::event_of(delivery)),
        next_attempt_at: (rec.state == PENDING).then_some(rec.due),
        finished_at: rec.updated.filter(|_| finished),
        endpoint: rec.endpoint,
        state: rec.state,
        attempts_made: rec.attempts,
        created_at: delivery.timestamp_ms(),
        last_error: Some(rec.last_error).filter(|e| !e.is_empty()),
    }
}
