//! `GET /v1/deliveries?endpoint=&state=&since=&until=&before_id=&limit=`: finished deliveries from
//! history (PostgreSQL), newest first, a page at a time. Pending deliveries are in the queue, and a
//! delivery finishes into history a moment after its last attempt (the history writer's batch).

use serde_json::{json, Value};

use super::{AdminError, MAX_PAGE};
use crate::history::query::Search;
use crate::history::History;
use crate::id;

/// States a finished delivery can have.
const STATES: [&str; 2] = ["succeeded", "dead"];

/// Searches history; needs `[history]`.
pub async fn deliveries(history: Option<&History>, query: &str) -> Result<Value, AdminError> {
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
    let Some(history) = history else {
        return Err(AdminError::BadRequest(
            "searching deliveries needs delivery history in PostgreSQL: configure [history]".to_string(),
        ));
    };
    let page = history.search(&search).await?;
    let next = (page.len() == search.limit).then(|| page.last().map(|d| d.id.clone())).flatten();
    Ok(json!({ "deliveries": page, "next_before_id": next }))
}
