//! Stage 1: events in. Checks an ingest request (source, size, content type, JSON), works out the
//! event type, runs the matching routes' plugin chains, and stores the event with one delivery per
//! (event, endpoint) in the queue, answering only once the queue has them.
//!
//! - [`auth`]: each source's bearer token or sender signature.
//! - [`parse`]: request body and headers → event type and kept headers.
//! - [`plan`]: routes and plugin verdicts → the deliveries to enqueue.
//! - [`rate`]: per-source rate limits.
//! - [`service`]: the whole ingest step, testable without a socket.

pub mod auth;
pub mod parse;
pub mod plan;
pub mod rate;
pub mod service;

use serde::Serialize;

pub use service::Ingest;

use crate::plugin::{PluginError, PluginEvent, PoolError};
use crate::queue::QueueError;

/// Why an event was not accepted. Each variant maps to one HTTP status (see `http.rs`).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No route serves this source (404).
    #[error("unknown source `{0}`: no route serves it")]
    UnknownSource(String),
    /// The request carries no valid credential for its source (401).
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] auth::AuthError),
    /// The source sent more than its `rate_limit` (429); it may send again after `retry_after`.
    #[error("source `{name}` is over its rate limit; retry after {retry_after:?}")]
    RateLimited {
        /// The source.
        name: String,
        /// How long until it may send again.
        retry_after: std::time::Duration,
    },
    /// The body exceeds `server.max_body_bytes` (413).
    #[error("body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The content type is not JSON (415).
    #[error("content-type must be application/json, got `{0}`")]
    ContentType(String),
    /// The body is not valid JSON (400).
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// A header the gateway reads is malformed, e.g. not text (400).
    #[error("invalid header: {0}")]
    Header(String),
    /// The body did not arrive within `server.body_read_timeout` (408).
    #[error("the request body did not arrive within {timeout:?}")]
    BodyTimeout {
        /// The timeout.
        timeout: std::time::Duration,
    },
    /// The headers that would be kept with the event are too many or too large (431).
    #[error("request headers too large: {0}")]
    HeadersTooLarge(String),
    /// The body could not be read (400).
    #[error("could not read the request body: {0}")]
    Body(String),
    /// A plugin failed the event (422). `error_id` names this failure in the producer's answer
    /// and in the gateway's log line.
    #[error("{error}")]
    Plugin {
        /// The event's id (the event was not stored).
        event_id: String,
        /// This failure's id, `err_…`.
        error_id: String,
        /// What went wrong.
        error: PluginError,
    },
    /// Plugin work is queued to its bound (`wasm.max_queued`), or the plugin threads are gone (503).
    #[error(transparent)]
    PluginsBusy(#[from] PoolError),
    /// The event fans out to more deliveries than one event may have (422).
    #[error("the event fans out to {0} deliveries; at most {max} are allowed", max = crate::id::MAX_DELIVERIES_PER_EVENT)]
    TooManyDeliveries(usize),
    /// The `idempotency-key` header is empty, too long or not visible ASCII (400).
    #[error("idempotency-key must be 1 to 255 visible ASCII characters")]
    IdempotencyKey,
    /// A request with the same `idempotency-key` is still being processed (409).
    #[error("a request with this idempotency-key is still being processed; retry later")]
    IdempotencyInProgress,
    /// The queue could not store the event (503 when unreachable, else 500). Nothing was accepted.
    #[error("the queue could not store the event: {0}")]
    Queue(#[from] QueueError),
}

impl IngestError {
    /// A plugin failure of `event`, with a fresh error id.
    pub fn plugin(event: &PluginEvent, error: PluginError) -> Self {
        IngestError::Plugin { event_id: event.id.clone(), error_id: format!("err_{}", ulid::Ulid::new()), error }
    }
}

/// The body of a 202 answer, and whether it repeats an earlier answer for the same idempotency key.
#[derive(Debug, Clone)]
pub struct Answer {
    /// JSON of [`Accepted`].
    pub body: String,
    /// True when this is the stored answer of an earlier request with the same `idempotency-key`.
    pub replayed: bool,
}

/// A stored event, as the producer is told (HTTP 202).
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// Event id.
    pub id: String,
    /// One entry per delivery.
    pub deliveries: Vec<AcceptedDelivery>,
    /// Routes whose chain dropped the event, with the plugin and its reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Dropped>,
}

/// One delivery of an accepted event.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedDelivery {
    /// Delivery id.
    pub id: String,
    /// Endpoint name.
    pub endpoint: String,
}

/// A route's chain dropped the event.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    /// The plugin that dropped it.
    pub plugin: String,
    /// Its reason.
    pub reason: String,
}
