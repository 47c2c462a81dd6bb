//! `GET /v1/deliveries?endpoint=&state=&since=&until=&before_id=&limit=`: deliveries by endpoint,
//! state and creation time, newest first, a page at a time, in any state, on every backend.
//!
//! The store (Redis or the embedded file) is searched for what it holds: pending, parked, and
//! finished deliveries it keeps for `queue.retention` (dead letters for `queue.dead_retention`).
//! With `[history]`, PostgreSQL holds the finished
//! deliveries, and the store is asked only for open ones (pending, parked); a delivery the store
//! holds open is shown as the store has it (a dead letter replayed since is pending, whatever
//! history's row says). A search for finished deliveries only (`state=succeeded` or `dead`) is
//! then served by PostgreSQL alone. While PostgreSQL is away, the store's deliveries, finished
//! ones too, are listed alone and the answer says so (`history_unavailable`).

use serde_json::{json, Value};

use super::{AdminError, MAX_PAGE};
use crate::history::History;
use crate::id;
use crate::queue::search::{self, Found, Scanned, Search, STATES};
use crate::queue::{Queue, Store};

/// Most rows of history one page looks through. Rows the store still holds are skipped; past this
/// many, the page ends early and its cursor says where the next one goes on.
const HISTORY_SCAN: usize = 5000;

/// Searches the store and, with `[history]`, history.
pub async fn deliveries(queue: &Store, history: Option<&History>, query: &str) -> Result<Value, AdminError> {
    let mut search = parse(query)?;
    let finished_wanted = search.state.as_deref().is_none_or(|s| s == "succeeded" || s == "dead");
    // With history, finished deliveries reach PostgreSQL a writer batch after they finish, and its
    // index answers at once: the store is asked for open deliveries only (on Redis, read from the
    // sorted sets that hold them instead of a pass over the keyspace), and not at all for finished
    // ones only.
    search.open_only = history.is_some();
    let mut store = match (history, finished_wanted && search.state.is_some()) {
        (Some(_), true) => None,
        _ => Some(queue.search(&search).await?),
    };
    let mut unavailable = None;
    let from_history = match history.filter(|_| finished_wanted) {
        Some(history) => {
            match only_in_history(queue, history, &search, store.as_ref().unwrap_or(&Scanned::default())).await {
                Ok(rows) => rows,
                Err(AdminError::History(e)) => {
                    // The store answers alone, finished deliveries and all.
                    tracing::warn!(error = %e, "Deliveries searched in the store alone: history did not answer.");
                    unavailable = Some(e.to_string());
                    search.open_only = false;
                    store = Some(queue.search(&search).await?);
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
        kept.found.extend(as_they_stand(queue, rows, search).await?);
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

/// History's rows as they stand: a delivery the store holds open is left out (the store's search
/// lists it as it is now: a dead letter replayed since is pending, whatever history's row says),
/// one it holds finished takes its state there (history may not have its last record yet), and
/// what no longer matches `search` then is left out too. In order.
async fn as_they_stand(queue: &Store, rows: Vec<Found>, search: &Search) -> Result<Vec<Found>, AdminError> {
    let ids = super::history_ids(rows.iter().map(|f| f.id.as_str()), "a delivery")?;
    let states = queue.states_of(&ids).await?;
    // History's rows are finished ones: `open_only` is what the store was asked.
    let wanted = Search { open_only: false, ..search.clone() };
    let mut kept = Vec::with_capacity(rows.len());
    for (mut row, state) in rows.into_iter().zip(states) {
        match state {
            Some(state) if search::is_open(&state) => continue,
            Some(state) => row.state = state,
            None => {}
        }
        if wanted.matches(&row.endpoint, &row.state) {
            kept.push(row);
        }
    }
    Ok(kept)
}
