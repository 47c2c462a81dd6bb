//! The admin API's endpoint routes: their states (configured, and removed with deliveries waiting),
//! enable, disable, and discarding the deliveries parked for one.

use serde_json::{json, Value};

use super::{unknown_endpoint, AdminError};
use crate::delivery::alert::{Alerter, EndpointAlert};
use crate::queue::{Queue, Store};

/// `GET /v1/endpoints`: every configured endpoint with its shared state and parked deliveries,
/// then every endpoint no longer configured whose deliveries wait for it (state `removed`, with
/// `removed_since`: when the first was parked).
pub async fn endpoints(queue: &Store, names: &[String]) -> Result<Value, AdminError> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let states = queue.endpoint_states(&refs).await?;
    let mut listed = Vec::with_capacity(names.len());
    for (name, state) in names.iter().zip(states) {
        listed.push(json!({
            "name": name,
            "state": if state.disabled.is_some() { "disabled" } else { "enabled" },
            "disabled_reason": state.disabled,
            "disabled_at": state.disabled_at,
            "failing_since": state.failing_since,
            "paused_deliveries": queue.paused_count(name).await?,
        }));
    }
    for (name, since) in queue.gone_endpoints().await?.into_iter().filter(|(name, _)| !names.contains(name)) {
        listed.push(json!({
            "name": name,
            "state": "removed",
            "removed_since": since,
            "paused_deliveries": queue.paused_count(&name).await?,
        }));
    }
    Ok(json!({ "endpoints": listed }))
}

/// `POST /v1/endpoints/{name}/discard`: buries every parked delivery of the endpoint (removed from
/// the config, or disabled) as a dead letter whose last error says so; they stay replayable for
/// `queue.dead_retention`. 404 for a name that is neither configured nor waited for.
pub async fn discard_parked(queue: &Store, name: &str, known: bool) -> Result<Value, AdminError> {
    let gone = queue.gone_endpoints().await?.into_iter().any(|(n, _)| n == name);
    if !known && !gone {
        return Err(unknown_endpoint(name));
    }
    let why = if known { "parked" } else { "its endpoint was removed from the config" };
    let reason = format!("discarded through the admin API ({why})");
    let discarded = queue.discard_parked(name, &reason).await?;
    tracing::warn!(endpoint = name, discarded, "Parked deliveries discarded through the admin API (now dead letters).");
    Ok(json!({ "endpoint": name, "discarded": discarded }))
}

/// `POST /v1/endpoints/{name}/enable`: enables the endpoint and puts its parked deliveries back in
/// the queue, due now (the endpoint's rate limit and concurrency cap still apply).
/// When it was disabled, an `endpoint.recovered` alert goes to `alert` (the alerter and the URL).
pub async fn enable_endpoint(
    queue: &Store,
    name: &str,
    known: bool,
    alert: Option<(&Alerter, String)>,
) -> Result<Value, AdminError> {
    if !known {
        return Err(unknown_endpoint(name));
    }
    let was = queue.endpoint_states(&[name]).await?.pop().unwrap_or_default();
    let resumed = queue.enable(name).await?;
    tracing::info!(endpoint = name, resumed, "Endpoint enabled through the admin API.");
    if let (Some(reason), Some((alerter, url))) = (was.disabled, alert) {
        alerter.send_endpoint(EndpointAlert {
            kind: "endpoint.recovered",
            endpoint: name.to_string(),
            url,
            reason: format!(
                "enabled through the admin API ({resumed} parked deliveries resumed); it was disabled: {reason}"
            ),
            at: crate::clock::unix_millis(),
        });
    }
    Ok(json!({ "endpoint": name, "state": "enabled", "resumed": resumed }))
}

/// `POST /v1/endpoints/{name}/disable`: disables the endpoint; its deliveries are parked.
pub async fn disable_endpoint(queue: &Store, name: &str, known: bool) -> Result<Value, AdminError> {
    if !known {
        return Err(unknown_endpoint(name));
    }
    queue.disable(name, "disabled through the admin API", crate::clock::unix_millis()).await?;
    tracing::warn!(endpoint = name, "Endpoint disabled through the admin API.");
    Ok(json!({ "endpoint": name, "state": "disabled" }))
}
