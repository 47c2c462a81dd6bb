//! A client for a running gateway's admin API, used by the `sluice admin` subcommands.

use serde_json::Value;
use url::Url;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {url}: {source}")]
    Unreachable {
        /// The URL called.
        url: Url,
        /// Why.
        source: reqwest::Error,
    },
    /// The gateway answered with an error.
    #[error("the gateway answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error message from the answer (or its body).
        message: String,
    },
    /// The base URL cannot take a path.
    #[error("invalid gateway URL {0}")]
    BadUrl(Url),
}

/// One admin API call: `method` on `base` + the path `segments` (each percent-encoded), with
/// `query` pairs; returns the JSON answer.
pub async fn call(
    base: &Url,
    token: &str,
    method: reqwest::Method,
    segments: &[&str],
    query: &[(&str, String)],
) -> Result<Value, ClientError> {
    let mut url = base.clone();
    url.path_segments_mut().map_err(|_| ClientError::BadUrl(base.clone()))?.pop_if_empty().extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
    let response = http
        .request(method, url.clone())
        .bearer_auth(token)
        .send()
        .await
        .map_err(|source| ClientError::Unreachable { url: url.clone(), source })?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|source| ClientError::Unreachable { url, source })?;
    let value: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        let mut message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
        // A refused reload lists every problem (or key needing a restart).
        for problem in value["error"]["problems"].as_array().into_iter().flatten() {
            message.push_str("\n  - ");
            message.push_str(problem.as_str().unwrap_or_default());
        }
        Err(ClientError::Refused { status, message })
    }
}
