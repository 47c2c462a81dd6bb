//! Searching deliveries by endpoint, state and creation time, newest first, a page at a time: what
//! `GET /v1/deliveries` asks of the store (every state) and of history (finished ones).
//!
//! Delivery ids are ULIDs whose high 48 bits are the event's creation time (ms) and whose low 16
//! bits number the delivery in its event ([`crate::id`]), so "newest first" is "highest id first",
//! and a page resumes below the last id it showed (`before`). A store reads at most a bounded
//! number of records per page ([`Scanned`]); when that ends the page early, the page says how far
//! it got, so the next one resumes there instead of reading the same records again.

use serde::Serialize;
use ulid::Ulid;

/// States a delivery can be searched by.
pub const STATES: [&str; 4] = ["pending", "paused", "succeeded", "dead"];

/// What to look for; every field narrows the search.
#[derive(Debug, Default, Clone)]
pub struct Search {
    /// Only deliveries to this endpoint.
    pub endpoint: Option<String>,
    /// Only deliveries in this state (one of [`STATES`]).
    pub state: Option<String>,
    /// Created at or after this time, ms since the epoch.
    pub since: Option<u64>,
    /// Created before this time, ms since the epoch.
    pub until: Option<u64>,
    /// Older than this delivery (the `next_before_id` of the previous page).
    pub before: Option<Ulid>,
    /// Most rows.
    pub limit: usize,
    /// Only pending and parked deliveries: history has the finished ones, so a store need not
    /// look for those (on Redis, that spares a pass over the keyspace).
    pub open_only: bool,
}

impl Search {
    /// The ids a delivery matching the time range and the cursor can have: `lo..hi` as `u128`.
    pub fn id_range(&self) -> (u128, u128) {
        let lo = u128::from(self.since.unwrap_or(0).min(MAX_MS)) << 80;
        let until = match self.until {
            Some(until) if until <= MAX_MS => u128::from(until) << 80,
            _ => u128::MAX,
        };
        let hi = self.before.map_or(until, |before| before.0.min(until));
        (lo, hi)
    }

    /// Whether a delivery to `endpoint` in `state` matches what is asked for.
    pub fn matches(&self, endpoint: &str, state: &str) -> bool {
        self.endpoint.as_deref().is_none_or(|e| e == endpoint)
            && self.state.as_deref().is_none_or(|s| s == state)
            && (!self.open_only || is_open(state))
    }

    /// Whether only pending or parked deliveries can match.
    pub fn wants_open_only(&self) -> bool {
        self.open_only || self.state.as_deref().is_some_and(is_open)
    }
}

/// Whether a delivery in `state` is still to be delivered (pending, or parked).
pub fn is_open(state: &str) -> bool {
    state == "pending" || state == "paused"
}

/// The largest time a ULID holds (48 bits of ms).
const MAX_MS: u64 = (1 << 48) - 1;

/// One delivery in a page of search results.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// Delivery id.
    pub id: String,
    /// Event id.
    pub event_id: String,
    /// Endpoint name.
    pub endpoint: String,
    /// `pending`, `paused`, `succeeded` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts_made: u32,
    /// When it was created, ms since the epoch.
    pub created_at: u64,
    /// When it finished (succeeded or dead), ms since the epoch.
    pub finished_at: Option<u64>,
    /// When a worker may next attempt it, ms since the epoch (pending deliveries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// A page of search results from one store.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Matches, newest first, at most the search's limit.
    pub found: Vec<Found>,
    /// When the store stopped reading before it filled the page (its per-page budget ran out):
    /// the lowest id it read. Every delivery from there up to the search's cursor was considered;
    /// those below it were not.
    pub stopped_at: Option<Ulid>,
}

/// Merges the store's page with history's (finished deliveries the store no longer holds), newest
/// first, at most `limit`; returns the page and the cursor of the next one (`None`: nothing older
/// matches). A delivery both hold is shown as the store has it (it may have been replayed since).
pub fn merge(store: Scanned, history: Scanned, limit: usize) -> (Vec<Found>, Option<Ulid>) {
    let mut rows: Vec<(Ulid, Found)> = store
        .found
        .into_iter()
        .chain(history.found)
        .filter_map(|f| Some((crate::id::parse_delivery(&f.id)?, f)))
        .collect();
    // Stable: of two equal ids, the store's (listed first) is kept.
    rows.sort_by_key(|row| std::cmp::Reverse(row.0));
    rows.dedup_by(|later, earlier| later.0 == earlier.0);
    // Below where either source stopped, what it holds is unknown: the other's rows there wait for
    // the page that resumes from that point.
    let stopped = store.stopped_at.max(history.stopped_at);
    if let Some(stopped) = stopped {
        rows.retain(|(id, _)| *id >= stopped);
    }
    rows.truncate(limit);
    let next = if rows.len() == limit { rows.last().map(|(id, _)| *id) } else { stopped };
    (rows.into_iter().map(|(_, f)| f).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id;

    fn found(event_ms: u64, k: usize, state: &str) -> Found {
        let delivery = id::delivery_of(Ulid::from_parts(event_ms, 0), k);
        Found {
            id: id::format_delivery(delivery),
            event_id: id::format_event(id::event_of(delivery)),
            endpoint: "orders".into(),
            state: state.into(),
            attempts_made: 1,
            created_at: event_ms,
            finished_at: None,
            next_attempt_at: None,
            last_error: None,
        }
    }

    fn ids(rows: &[Found]) -> Vec<(u64, String)> {
        rows.iter().map(|f| (f.created_at, f.state.clone())).collect()
    }

    #[test]
    fn the_range_is_the_time_range_cut_at_the_cursor() {
        let search = Search { since: Some(10), until: Some(20), ..Search::default() };
        assert_eq!(search.id_range(), (10u128 << 80, 20u128 << 80));
        let cursor = id::delivery_of(Ulid::from_parts(15, 0), 2);
        let (lo, hi) = Search { before: Some(cursor), ..search.clone() }.id_range();
        assert_eq!((lo, hi), (10u128 << 80, cursor.0));
        assert_eq!(Search::default().id_range(), (0, u128::MAX));
        assert_eq!(Search { until: Some(u64::MAX), ..Search::default() }.id_range(), (0, u128::MAX));
    }

    #[test]
    fn the_store_wins_over_history_and_history_fills_the_rest_newest_first() {
        let store = Scanned { found: vec![found(30, 1, "pending"), found(10, 1, "pending")], stopped_at: None };
        let history = vec![found(30, 1, "dead"), found(20, 2, "succeeded"), found(5, 1, "dead")];
        let (page, next) = merge(store, Scanned { found: history, stopped_at: None }, 3);
        assert_eq!(ids(&page), [(30, "pending".into()), (20, "succeeded".into()), (10, "pending".into())]);
        assert_eq!(next, id::parse_delivery(&page[2].id));
    }

    #[test]
    fn a_store_that_stopped_early_holds_history_back_below_where_it_stopped() {
        let stopped = id::delivery_of(Ulid::from_parts(20, 0), 1);
        let store = Scanned { found: vec![found(30, 1, "dead")], stopped_at: Some(stopped) };
        let history = Scanned { found: vec![found(25, 1, "dead"), found(5, 1, "dead")], stopped_at: None };
        let (page, next) = merge(store, history, 10);
        assert_eq!(ids(&page), [(30, "dead".into()), (25, "dead".into())]);
        assert_eq!(next, Some(stopped), "the next page resumes where the store stopped");
        let history = Scanned { found: vec![found(5, 1, "dead")], stopped_at: None };
        let (page, next) = merge(Scanned::default(), history, 10);
        assert_eq!((page.len(), next), (1, None));
        // History stopped higher than the store: the store's older rows wait too.
        let store = Scanned { found: vec![found(30, 1, "dead"), found(10, 1, "dead")], stopped_at: None };
        let (page, next) = merge(store, Scanned { found: vec![], stopped_at: Some(stopped) }, 10);
        assert_eq!((ids(&page), next), (vec![(30, "dead".into())], Some(stopped)));
    }
}
