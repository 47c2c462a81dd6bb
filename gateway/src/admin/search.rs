//! `GET /v1/deliveries?endpoint=&state=&since=&until=&before_id=&limit=`: deliveries by endpoint,
//! state and creation time, newest first, a page at a time, in any state, on every backend.
//!
//! The store (Redis or the embedded file) is searched for what it holds: pending, parked, and
//! finished deliveries it keeps for `queue.retention` (with `[history]`: for `history.keep_in_redis`,
//! dead letters for `queue.dead_retention`). With `[history]`, PostgreSQL adds the finished
//! deliveries it holds that the store no longer does; a delivery in both is shown as the store has
//! it, and a search for finished deliveries only (`state=succeeded` or `dead`) is served by
//! PostgreSQL alone, less the deliveries the store has taken back (replayed). While PostgreSQL is
//! away, the store's deliveries are listed alone and the answer says so (`history_unavailable`).

use serde_json::{json, Value};

use super::{AdminError, MAX_PAGE};
use crate::history::{History, HistoryError};
use crate::id;
use crate::queue::search::{self, Found, Scanned, Search, STATES};
use crate::queue::{Queue, Store};

/// Most rows of history one page looks through. Rows the store still holds are skipped; past this
/// many, the page ends early and its cursor says where the next one goes on.
const HISTORY_SCAN: usize = 5000;

/// Searches the store and, with `[history]`, history.
pub async fn deliveries(queue: &Store, history: Option<&History>, query: &str) -> Result<Value, AdminError> {
    let search = parse(query)?;
    let finished_wanted = search.state.as_deref().is_none_or(|s| s == "succeeded" || s == "dead");
    // With history, finished deliveries reach PostgreSQL a writer batch after they finish, and its
    // index answers at once; the store's search (on Redis, a pass over the keyspace) is only needed
    // for what history never holds: pending and parked deliveries.
    let mut store = match (history, search.state.as_deref()) {
        (Some(_), Some("succeeded" | "dead")) => None,
        _ => Some(queue.search(&search).await?),
    };
    let mut unavailable = None;
    let from_history = match history.filter(|_| finished_wanted) {
        Some(history) => {
            match only_in_history(queue, history, &search, store.as_ref().unwrap_or(&Scanned::default())).await {
                Ok(rows) => rows,
                Err(AdminError::History(e)) => {
                    tracing::warn!(error = %e, "Deliveries searched in the store alone: history did not answer.");
                    unavailable = Some(e.to_string());
                    if store.is_none() {
                        store = Some(queue.search(&search).await?);
                    }
                    Scanned::default()
                }
                Err(e) => return Err(e),
            }
        }
        None => Scanned::default(),
    };
    let store = store.unwrap_or_default();
    let (page, next) = search::merge(store, from_history, search.limit);
    let mut answer = json!({ "deliveries": page, "next_before_id": next.map(id::format_delivery) });
    if let Some(reason) = unavailable {
        answer["history_unavailable"] = Value::String(reason);
    }
    Ok(answer)
}

/// The search the query asks for.
fn parse(query: &str) -> Result<Search, AdminError> {
    let mut search = Search { limit: 50, ..Search::default() };
    let bad = |what: &str, value: &str| AdminError::BadRequest(format!("bad `{what}`: {value}"));
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            // An empty value means no filter.
            "endpoint" => search.endpoint = Some(value.into_owned()).filter(|e| !e.is_empty()),
            "state" if value.is_empty() => search.state = None,
            "state" if STATES.contains(&&*value) => search.state = Some(value.into_owned()),
            "state" => return Err(bad("state", &format!("{value} (one of {})", STATES.join(", ")))),
            "since" => search.since = Some(value.parse().map_err(|_| bad("since", &value))?),
            "until" => search.until = Some(value.parse().map_err(|_| bad("until", &value))?),
            "before_id" => {
                search.before = Some(id::parse_delivery_cursor(&value).ok_or_else(|| bad("before_id", &value))?)
            }
            "limit" => {
                search.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| AdminError::BadRequest(format!("`limit` must be between 1 and {MAX_PAGE}")))?
            }
            other => return Err(AdminError::BadRequest(format!("unknown query parameter `{other}`"))),
        }
    }
    Ok(search)
}

/// History's matches that the store does not hold, enough to fill the page beside `store`'s.
async fn only_in_history(
    queue: &Store,
    history: &History,
    search: &Search,
    store: &Scanned,
) -> Result<Scanned, AdminError> {
    // Older than the store's last row of a full page, or than where it stopped, history's rows
    // cannot make it into this page.
    let floor = match store.found.len() == search.limit {
        true => store.found.last().and_then(|f| id::parse_delivery(&f.id)),
        false => store.stopped_at,
    };
    let mut kept = Scanned::default();
    let (mut after, mut scanned) = (search.clone(), 0);
    loop {
        let rows = history.search(&after).await?;
        let Some(last) = rows.last().and_then(|f| id::parse_delivery(&f.id)) else { return Ok(kept) };
        let full = rows.len() == after.limit;
        scanned += rows.len();
        kept.found.extend(unheld(queue, rows).await?);
        if !full || kept.found.len() >= search.limit || floor.is_some_and(|floor| last <= floor) {
            return Ok(kept);
        }
        if scanned >= HISTORY_SCAN {
            kept.stopped_at = Some(last);
            return Ok(kept);
        }
        after.before = Some(last);
    }
}

/// The rows of history whose delivery the store no longer holds, in order.
async fn unheld(queue: &Store, rows: Vec<Found>) -> Result<Vec<Found>, AdminError> {
    let ids = rows
        .iter()
        .map(|f| id::parse_delivery(&f.id))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| HistoryError::Corrupt("a delivery in history has a malformed id".to_string()))?;
    let held = queue.holds(&ids).await?;
    Ok(rows.into_iter().zip(held).filter(|(_, held)| !held).map(|(row, _)| row).collect())
}
