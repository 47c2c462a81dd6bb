//! Dead letters in the admin API: listed newest first and replayed, one or all of an endpoint.
//!
//! With `[history]`, a dead letter lives in two places for a while: Redis (until
//! `queue.dead_retention`) and PostgreSQL (until `history.retention`). The listing merges both,
//! ordered by (time buried, id), each dead letter once: a row of history counts only while Redis
//! no longer holds that delivery (Redis lists its own dead letters, and one it replayed is not dead
//! any more, whatever history still says). A replay of a dead letter only history holds restores it
//! into the queue with its event. While PostgreSQL is away, listing and replaying all of an
//! endpoint go on with Redis' dead letters alone, and the answer says so (`history_unavailable`).

use std::time::Duration;

use serde_json::{json, Value};
use ulid::Ulid;

use super::{unknown_endpoint, AdminError, MAX_PAGE};
use crate::history::History;
use crate::id;
use crate::queue::{DeadCursor, DeadLetter, Queue, Store};

/// Most rows of history one page of the listing looks through. Rows Redis still holds (replayed
/// ones, mostly) are skipped; past this many, the page ends early and its cursor says where the
/// next one goes on.
const HISTORY_SCAN: usize = 5000;

/// Where a dead letter sorts: by time buried, then by id (newest first is descending).
fn place(dead: &DeadLetter) -> (u64, &str) {
    (dead.dead_at, dead.id.as_str())
}

/// `GET /v1/dead-letters?endpoint=&before=&before_id=&limit=`: newest first; `next_before` (with
/// `next_before_id`) pages on.
pub async fn dead_letters(queue: &Store, history: Option<&History>, query: &str) -> Result<Value, AdminError> {
    let (mut endpoint, mut before, mut before_id, mut limit) = (None, None, None, 50);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            // An empty `endpoint=` means no filter.
            "endpoint" => endpoint = Some(value.into_owned()).filter(|e| !e.is_empty()),
            "before" => {
                before = Some(value.parse().map_err(|_| AdminError::BadRequest(format!("bad `before`: {value}")))?)
            }
            "before_id" => {
                before_id = Some(
                    id::parse_delivery_cursor(&value)
                        .ok_or_else(|| AdminError::BadRequest(format!("bad `before_id`: {value}")))?,
                )
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| AdminError::BadRequest(format!("`limit` must be between 1 and {MAX_PAGE}")))?
            }
            other => return Err(AdminError::BadRequest(format!("unknown query parameter `{other}`"))),
        }
    }
    if before_id.is_some() && before.is_none() {
        return Err(AdminError::BadRequest("`before_id` goes with `before`".to_string()));
    }
    let cursor = before.map(|at| DeadCursor { at, id: before_id });
    let (page, next, unavailable) = match page(queue, history, endpoint.as_deref(), cursor, limit).await {
        // PostgreSQL away: Redis' dead letters are still listed, and the answer says what is missing.
        Err(AdminError::History(e)) => {
            tracing::warn!(error = %e, "Dead letters listed from Redis alone: history did not answer.");
            let (page, next) = page(queue, None, endpoint.as_deref(), cursor, limit).await?;
            (page, next, Some(e.to_string()))
        }
        other => {
            let (page, next) = other?;
            (page, next, None)
        }
    };
    let mut answer = json!({
        "dead_letters": page,
        "next_before": next.map(|n| n.at),
        "next_before_id": next.and_then(|n| n.id).map(id::format_delivery),
    });
    if let Some(reason) = unavailable {
        answer["history_unavailable"] = Value::String(reason);
    }
    Ok(answer)
}

/// A page of dead letters from Redis and, with `[history]`, from history, and the cursor of the
/// next page (none when this one is the last).
async fn page(
    queue: &Store,
    history: Option<&History>,
    endpoint: Option<&str>,
    cursor: Option<DeadCursor>,
    limit: usize,
) -> Result<(Vec<DeadLetter>, Option<DeadCursor>), AdminError> {
    let mut merged = queue.dead_letters(endpoint, cursor, limit).await?;
    // Where history's scan stopped short, if it did: the page ends there.
    let mut cut: Option<DeadLetter> = None;
    if let Some(history) = history {
        // A full page from Redis ends here: older rows of history cannot make it into the page.
        let floor = (merged.len() == limit).then(|| merged.last().cloned()).flatten();
        let (mut after, mut scanned, mut kept) = (cursor, 0, 0);
        loop {
            let rows = history.dead_letters(endpoint, after, limit).await?;
            let Some(last) = rows.last().cloned() else { break };
            let full = rows.len() == limit;
            scanned += rows.len();
            for (row, _) in only_in_history(queue, rows).await? {
                kept += 1;
                merged.push(row);
            }
            // Exhausted; or every older row sorts after `limit` kept ones, or after the page's floor.
            if !full || kept >= limit || floor.as_ref().is_some_and(|f| place(&last) <= place(f)) {
                break;
            }
            if scanned >= HISTORY_SCAN {
                cut = Some(last);
                break;
            }
            after = Some(DeadCursor { at: last.dead_at, id: id::parse_delivery(&last.id) });
        }
        merged.sort_by(|a, b| place(b).cmp(&place(a)));
        merged.dedup_by(|a, b| a.id == b.id);
        if let Some(cut) = &cut {
            merged.retain(|d| place(d) >= place(cut));
        }
    }
    merged.truncate(limit);
    // The next page starts after the last of this one: its time and id (one settle batch buries
    // many deliveries in the same millisecond, so the time alone would skip some).
    let next = if merged.len() == limit { merged.last() } else { cut.as_ref() };
    let next = next.map(|d| DeadCursor { at: d.dead_at, id: id::parse_delivery(&d.id) });
    Ok((merged, next))
}

/// `POST /v1/deliveries/{id}/replay`: one dead letter back in the queue, with a fresh schedule;
/// from history (its event with it) when Redis no longer holds it.
pub async fn replay_one(queue: &Store, history: Option<&History>, text: &str) -> Result<Value, AdminError> {
    let not_found = || AdminError::NotFound(format!("delivery `{}`", text.chars().take(64).collect::<String>()));
    let delivery = id::parse_delivery(text).ok_or_else(not_found)?;
    if queue.delivery(delivery).await?.is_none() {
        let Some(history) = history else { return Err(not_found()) };
        match history.restorable(delivery).await? {
            Some(restore) => {
                if queue.restore(&restore, Duration::ZERO).await? {
                    tracing::info!(delivery_id = text, "Dead letter restored from history into the queue.");
                    return Ok(json!({ "replayed": [restore.delivery.id] }));
                }
                // Redis took it back meanwhile (another replay): replay that one, below.
            }
            None if history.delivery(delivery).await?.is_some() => return Err(AdminError::NotDead(text.to_string())),
            None => return Err(not_found()),
        }
    }
    let replayed = queue.replay(&[delivery], Duration::ZERO).await?;
    if replayed.is_empty() {
        return Err(AdminError::NotDead(text.to_string()));
    }
    Ok(json!({ "replayed": replayed }))
}

/// `POST /v1/endpoints/{name}/replay-dead`: every dead letter of an endpoint (however many, in
/// bounded steps) back in the queue, spaced by `spacing` so the endpoint is not flooded: those in
/// Redis, then those only history holds.
pub async fn replay_endpoint(
    queue: &Store,
    history: Option<&History>,
    endpoint: &str,
    known: bool,
    spacing: Duration,
) -> Result<Value, AdminError> {
    if !known {
        return Err(unknown_endpoint(endpoint));
    }
    let mut replayed = queue.replay_endpoint(endpoint, spacing).await?;
    let mut answer = json!({ "endpoint": endpoint });
    if let Some(history) = history {
        // PostgreSQL away: Redis' dead letters are replayed all the same; the answer says the rest
        // waits (calling again later replays them, and skips what is back in the queue already).
        if let Err(e) = restore_endpoint(queue, history, endpoint, spacing, &mut replayed).await {
            let AdminError::History(e) = e else { return Err(e) };
            tracing::warn!(error = %e, endpoint, "Dead letters replayed from Redis alone: history did not answer.");
            answer["history_unavailable"] = Value::String(e.to_string());
        }
    }
    answer["replayed"] = json!(replayed);
    Ok(answer)
}

/// Restores every dead letter of `endpoint` that only history holds, spaced on from `replayed`
/// (counted up as they go back).
async fn restore_endpoint(
    queue: &Store,
    history: &History,
    endpoint: &str,
    spacing: Duration,
    replayed: &mut u64,
) -> Result<(), AdminError> {
    let mut after = None;
    loop {
        let rows = history.dead_letters(Some(endpoint), after, MAX_PAGE).await?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = Some(DeadCursor { at: last.dead_at, id: id::parse_delivery(&last.id) });
        let full = rows.len() == MAX_PAGE;
        for (_, delivery) in only_in_history(queue, rows).await? {
            let Some(restore) = history.restorable(delivery).await? else { continue };
            let delay = spacing.saturating_mul(u32::try_from(*replayed).unwrap_or(u32::MAX));
            if queue.restore(&restore, delay).await? {
                *replayed += 1;
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// The rows of history whose delivery Redis no longer holds (each with its id), in order.
async fn only_in_history(queue: &Store, rows: Vec<DeadLetter>) -> Result<Vec<(DeadLetter, Ulid)>, AdminError> {
    let ids = super::history_ids(rows.iter().map(|d| d.id.as_str()), "a dead letter")?;
    let held = queue.holds(&ids).await?;
    Ok(rows.into_iter().zip(ids).zip(held).filter(|(_, held)| !held).map(|(row, _)| row).collect())
}
