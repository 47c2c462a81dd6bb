//! The admin API: look up events and deliveries. Every route needs `Authorization: Bearer <admin.token>`.

use serde_json::{json, Value};

use crate::id;
use crate::queue::{QueueError, RedisQueue};

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid admin bearer token")]
    Unauthorized,
    /// No such event or delivery, or a malformed id (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The queue could not answer (503 / 500).
    #[error("the queue could not answer: {0}")]
    Queue(#[from] QueueError),
}

/// Checks an `Authorization` header against the configured token, in constant time.
pub fn authorize(configured: Option<&str>, header: Option<&str>) -> Result<(), AdminError> {
    let (Some(expected), Some(given)) = (configured, header.and_then(|h| h.strip_prefix("Bearer "))) else {
        return Err(AdminError::Unauthorized);
    };
    let (a, b) = (expected.as_bytes(), given.trim().as_bytes());
    let differs = a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0;
    if differs {
        Err(AdminError::Unauthorized)
    } else {
        Ok(())
    }
}

/// `GET /v1/deliveries/{id}`: state and every attempt.
pub async fn delivery(queue: &RedisQueue, text: &str) -> Result<Value, AdminError> {
    let not_found = || AdminError::NotFound(format!("delivery `{}`", text.chars().take(64).collect::<String>()));
    let delivery = id::parse_delivery(text).ok_or_else(not_found)?;
    let view = queue.delivery(delivery).await?.ok_or_else(not_found)?;
    Ok(serde_json::to_value(view).unwrap_or_default())
}

/// `GET /v1/events/{id}`: the event (payload as JSON when it is JSON) and its deliveries.
pub async fn event(queue: &RedisQueue, text: &str) -> Result<Value, AdminError> {
    let not_found = || AdminError::NotFound(format!("event `{}`", text.chars().take(64).collect::<String>()));
    let event = id::parse_event(text).ok_or_else(not_found)?;
    let view = queue.event(event).await?.ok_or_else(not_found)?;
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
