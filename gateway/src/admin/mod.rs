//! The admin API: look up events and deliveries, list and replay dead letters, see, disable and
//! enable endpoints ([`endpoints`]), and discard what waits for an endpoint that is gone. Every route needs `Authorization: Bearer <admin.token>`; repeated failures from
//! one address are throttled ([`throttle`]).

pub mod client;
pub mod dead;
pub mod endpoints;
pub mod redrive;
pub mod search;
pub mod throttle;

pub use dead::{dead_letters, replay_endpoint, replay_one};
pub use endpoints::{disable_endpoint, discard_parked, enable_endpoint, endpoints};
pub use redrive::redrive;

use serde_json::{json, Value};

use crate::history::{History, HistoryError};
use crate::id;
use crate::queue::{Queue, QueueError, Store};

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid admin bearer token")]
    Unauthorized,
    /// No such event or delivery, or a malformed id (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed, e.g. a bad query parameter (400).
    #[error("{0}")]
    BadRequest(String),
    /// The request is understood but cannot be carried out, e.g. a plugin failed a redriven event (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The delivery exists but is not dead-lettered, so there is nothing to replay (409).
    #[error("delivery `{0}` is not dead-lettered; only dead letters can be replayed")]
    NotDead(String),
    /// The queue could not answer (503 / 500).
    #[error("the queue could not answer: {0}")]
    Queue(#[from] QueueError),
    /// History (PostgreSQL) could not answer (503).
    #[error("history could not answer: {0}")]
    History(#[from] HistoryError),
    /// A config reload applied nothing (422 for problems in the file, 409 for keys that need a
    /// restart or a gateway with no file).
    #[error(transparent)]
    Reload(#[from] crate::control::ReloadError),
}

/// Checks an `Authorization` header against the configured token, in constant time.
pub fn authorize(configured: Option<&str>, header: Option<&str>) -> Result<(), AdminError> {
    let (Some(expected), Some(given)) = (configured, header.and_then(|h| h.strip_prefix("Bearer "))) else {
        return Err(AdminError::Unauthorized);
    };
    if !crate::ingest::auth::constant_time_eq(expected.as_bytes(), given.trim().as_bytes()) {
        Err(AdminError::Unauthorized)
    } else {
        Ok(())
    }
}

/// `GET /v1/deliveries/{id}`: state and every attempt, from the queue, else from history.
pub async fn delivery(queue: &Store, history: Option<&History>, text: &str) -> Result<Value, AdminError> {
    let not_found = || AdminError::NotFound(format!("delivery `{}`", text.chars().take(64).collect::<String>()));
    let delivery = id::parse_delivery(text).ok_or_else(not_found)?;
    let view = match (queue.delivery(delivery).await?, history) {
        (Some(view), _) => view,
        (None, Some(history)) => history.delivery(delivery).await?.ok_or_else(not_found)?,
        (None, None) => return Err(not_found()),
    };
    Ok(serde_json::to_value(view).unwrap_or_default())
}

/// `GET /v1/events/{id}`: the event (payload as JSON when it is JSON) and its deliveries, from the
/// queue, else from history; deliveries the queue no longer holds take their state from history.
pub async fn event(queue: &Store, history: Option<&History>, text: &str) -> Result<Value, AdminError> {
    let view = event_view(queue, history, text).await?;
    let payload = serde_json::from_slice::<Value>(&view.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&view.payload).into_owned()));
    Ok(json!({
        "id": view.id,
        "source": view.source,
        "type": view.event_type,
        "received_at": view.received_at,
        "headers": view.headers,
        "payload": payload,
        "deliveries": view.deliveries,
    }))
}

/// The event `text` names with its deliveries' states: from the queue, else from history;
/// deliveries the queue no longer holds take their state from history.
pub(crate) async fn event_view(
    queue: &Store,
    history: Option<&History>,
    text: &str,
) -> Result<crate::queue::EventView, AdminError> {
    let not_found = || AdminError::NotFound(format!("event `{}`", text.chars().take(64).collect::<String>()));
    let event = id::parse_event(text).ok_or_else(not_found)?;
    let view = match (queue.event(event).await?, history) {
        (Some(mut view), Some(history)) => {
            if view.deliveries.iter().any(|d| d.state.as_deref() == Some("expired")) {
                let kept = history.states_of(event).await?;
                for d in view.deliveries.iter_mut().filter(|d| d.state.as_deref() == Some("expired")) {
                    if let Some(row) = kept.iter().find(|k| k.id == d.id) {
                        d.state = row.state.clone();
                    }
                }
            }
            view
        }
        (Some(view), None) => view,
        (None, Some(history)) => history.event(event).await?.ok_or_else(not_found)?,
        (None, None) => return Err(not_found()),
    };
    Ok(view)
}

/// `GET /v1/plugins/{name}/shadow`: what the shadow runs of the plugin's candidate found (counts,
/// the latest differences); 404 when the plugin has no candidate.
pub fn plugin_shadow(plugins: &crate::plugin::PluginSet, name: &str) -> Result<Value, AdminError> {
    let report = plugins.shadow(name).ok_or_else(|| {
        AdminError::NotFound(format!("shadow candidate of plugin `{}`", name.chars().take(64).collect::<String>()))
    })?;
    Ok(serde_json::to_value(report).unwrap_or_default())
}

/// Longest page of a listing (dead letters, the search).
const MAX_PAGE: usize = 500;

/// The delivery ids of rows read from history, in order; a malformed one means history is corrupt
/// (`what` names the rows in the error).
pub(crate) fn history_ids<'a>(ids: impl Iterator<Item = &'a str>, what: &str) -> Result<Vec<ulid::Ulid>, AdminError> {
    ids.map(id::parse_delivery)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| HistoryError::Corrupt(format!("{what} in history has a malformed id")).into())
}

pub(crate) fn unknown_endpoint(name: &str) -> AdminError {
    AdminError::NotFound(format!("endpoint `{}`", name.chars().take(64).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(authorize(Some("secret-token"), Some("Bearer secret-token")).is_ok());
        assert!(authorize(Some("secret-token"), Some("Bearer secret-tokem")).is_err());
        assert!(authorize(Some("secret-token"), Some("Bearer secret")).is_err());
        assert!(authorize(Some("secret-token"), Some("secret-token")).is_err());
        assert!(authorize(Some("secret-token"), None).is_err());
        assert!(authorize(None, Some("Bearer anything")).is_err());
    }
}
