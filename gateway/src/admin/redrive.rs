//! `POST /v1/events/{id}/redrive`: a stored event runs again through today's routes and plugins
//! (after subscriptions changed, say), creating the deliveries the running configuration makes for
//! it, except to endpoints that already have it: succeeded, or still on their way (pending or
//! parked). The deliveries belong to a new event carrying the stored one's source, type, headers
//! and body; the answer names both.

use serde_json::{json, Value};

use super::{event_view, AdminError};
use crate::history::History;
use crate::ingest::{Ingest, IngestError};
use crate::queue::Store;

/// States of a delivery whose endpoint does not get the event again.
const HAS_IT: [&str; 3] = ["succeeded", "pending", "paused"];

/// Redrives the event `text` names through `ingest` (the running configuration's).
pub async fn redrive(
    queue: &Store,
    history: Option<&History>,
    ingest: &Ingest,
    text: &str,
) -> Result<Value, AdminError> {
    let view = event_view(queue, history, text).await?;
    let skipped: Vec<Value> = view
        .deliveries
        .iter()
        .filter(|d| d.state.as_deref().is_some_and(|s| HAS_IT.contains(&s)))
        .map(|d| json!({ "endpoint": d.endpoint, "delivery": d.id, "state": d.state }))
        .collect();
    let has_it = |endpoint: &str| skipped.iter().any(|s| s["endpoint"] == endpoint);
    let accepted = match ingest.redrive(&view, &|endpoint| !has_it(endpoint)).await {
        Ok(accepted) => accepted,
        Err(IngestError::Queue(e)) => return Err(AdminError::Queue(e)),
        Err(e) => return Err(AdminError::Unprocessable(format!("event `{}` could not be redriven: {e}", view.id))),
    };
    tracing::info!(event_id = %view.id, redriven_as = %accepted.id, deliveries = accepted.deliveries.len(),
        skipped = skipped.len(), "Event redriven through the admin API.");
    Ok(json!({
        "id": accepted.id,
        "redrive_of": view.id,
        "deliveries": accepted.deliveries,
        "skipped": skipped,
        "dropped": accepted.dropped,
    }))
}
