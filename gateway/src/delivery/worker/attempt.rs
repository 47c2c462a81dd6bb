//! One delivery attempt: the signed POST (Standard Webhooks headers, plugin-set headers, the
//! destination guard), the first bytes of the answer within the endpoint's timeout, and the attempt
//! record that says how it went.

use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use url::Url;

use super::super::retry::{self, Outcome};
use super::super::{client, error_chain};
use super::endpoint::Endpoint;
use super::Shared;
use crate::clock::unix_seconds;
use crate::queue::{AttemptRecord, Claimed};

/// Most bytes of a receiver's answer kept in the attempt log.
const RESPONSE_EXCERPT: usize = 1024;

impl Shared {
    /// Makes one signed POST and records how it went.
    pub(super) async fn attempt(
        &self,
        claimed: &Claimed,
        endpoint: &Endpoint,
        delivery_id: &str,
        at: u64,
    ) -> (Outcome, AttemptRecord) {
        if let Some(reason) = self.guard.refuse_literal(&endpoint.url).filter(|_| !endpoint.internal) {
            return (Outcome::Failed(reason.clone()), failure_record(claimed, at, reason));
        }
        let timestamp = unix_seconds();
        let mut request = hyper::Request::post(endpoint.uri.clone())
            .header(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(hyper::header::USER_AGENT, HeaderValue::from_static(client::USER_AGENT));
        for (name, value) in &claimed.headers {
            if !super::super::headers::is_reserved(name) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let mut request = request.header("webhook-id", delivery_id).header("webhook-timestamp", timestamp);
        if let Some(signature) = endpoint.signature(delivery_id, timestamp, &claimed.payload) {
            request = request.header("webhook-signature", signature);
        }
        let request = request.body(Full::new(claimed.payload.clone()));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                let reason = format!("invalid request (a plugin-set header?): {e}");
                return (Outcome::Failed(reason.clone()), failure_record(claimed, at, reason));
            }
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + endpoint.timeout;
        let client = if endpoint.internal { &self.alerts_client } else { &self.client };
        let (outcome, excerpt) = match tokio::time::timeout_at(deadline, client.request(request)).await {
            Err(_) => (Outcome::Timeout, None),
            Ok(Err(e)) => (Outcome::Failed(describe_failure(&e, &endpoint.url)), None),
            Ok(Ok(response)) => read_answer(response, deadline).await,
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (kind, status, error) = match &outcome {
            Outcome::Success { status } => ("success", Some(*status), None),
            Outcome::Status { status, .. } => ("http_error", Some(*status), Some(format!("HTTP {status}"))),
            Outcome::Timeout => ("timeout", None, Some(format!("timed out after {:?}", endpoint.timeout))),
            Outcome::Failed(message) => ("error", None, Some(message.clone())),
        };
        let record = AttemptRecord {
            attempt: claimed.attempt,
            at,
            outcome: kind.to_string(),
            status,
            error,
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            response: excerpt,
        };
        (outcome, record)
    }
}

/// Reads the status and the first bytes of the answer (never the whole of a huge body), within
/// the attempt's deadline. A 2xx whose body does not arrive in time still counts: the receiver has
/// the event.
async fn read_answer(response: hyper::Response<Incoming>, deadline: tokio::time::Instant) -> (Outcome, Option<String>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|_| status == 429 || status == 503)
        .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
    let mut body = response.into_body();
    let mut excerpt = Vec::new();
    let read = async {
        while excerpt.len() < RESPONSE_EXCERPT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(chunk) = frame.data_ref() {
                        excerpt.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_EXCERPT - excerpt.len())]);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, read).await;
    let excerpt = (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned());
    let outcome = if (200..300).contains(&status) {
        Outcome::Success { status }
    } else {
        Outcome::Status { status, retry_after }
    };
    (outcome, excerpt)
}

/// The text of a request that got no answer, with TLS failures named as such (rustls' own words,
/// e.g. "received corrupt message of type InvalidContentType", do not say it).
fn describe_failure(error: &(dyn std::error::Error + 'static), url: &Url) -> String {
    let chain = error_chain(error);
    // The TLS layer reports as an io::Error of kind InvalidData, possibly wrapped in another
    // io::Error (whose `source()` skips it, hence `get_ref`).
    let invalid_data = |e: &(dyn std::error::Error + 'static)| {
        let io = e.downcast_ref::<std::io::Error>()?;
        let inner = io.get_ref().and_then(|i| i.downcast_ref::<std::io::Error>());
        Some(
            io.kind() == std::io::ErrorKind::InvalidData
                || inner.is_some_and(|i| i.kind() == std::io::ErrorKind::InvalidData),
        )
    };
    let mut source = Some(error);
    while let Some(e) = source {
        if url.scheme() == "https" && invalid_data(e) == Some(true) {
            return format!("TLS handshake with {} failed: {chain}", url.host_str().unwrap_or_default());
        }
        source = e.source();
    }
    chain
}

pub(super) fn failure_record(claimed: &Claimed, at: u64, error: String) -> AttemptRecord {
    AttemptRecord {
        attempt: claimed.attempt,
        at,
        outcome: "error".into(),
        status: None,
        error: Some(error),
        latency_ms: 0.0,
        response: None,
    }
}
