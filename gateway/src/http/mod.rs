//! The HTTP surface: request routing and the one place that maps errors to HTTP statuses. Clients
//! get a status and a short JSON message; internals go to the log.
//!
//! - [`serve`]: the accept loop, with its connection cap and timeouts.
//! - `console`: the web console's embedded pages, at `/console`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

mod console;
mod serve;

pub use serve::{serve, ConnectionLimits};

use crate::admin::{self, AdminError};
use crate::control::{Live, ReloadError};
use crate::ingest::IngestError;
use crate::queue::{Queue, Store};

/// What request handlers share.
pub struct AppState {
    /// The running configuration (ingest, plugins, endpoints), replaced whole by a reload.
    pub control: Arc<crate::control::Control>,
    /// The queue, for admin lookups.
    pub queue: Store,
    /// Delivery history in PostgreSQL (`[history]`), where admin lookups go for what the queue
    /// no longer holds.
    pub history: Option<crate::history::History>,
    /// The admin bearer token.
    pub admin_token: Option<String>,
    /// Time between the replays of a replay-all.
    pub replay_spacing: std::time::Duration,
    /// Gateway metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Operational alerts (`endpoint.recovered` when an endpoint is enabled).
    pub alerter: Option<crate::delivery::alert::Alerter>,
    /// Whether a plugin's own error text goes into the 422 (`wasm.expose_errors`).
    pub expose_plugin_errors: bool,
    /// Failed admin authentications per client address.
    pub admin_throttle: crate::admin::throttle::AuthThrottle,
    /// Inbound connection cap and timeouts.
    pub limits: ConnectionLimits,
}

type Reply = Response<Full<Bytes>>;

/// Every route the server answers, as (method, path template): the single source of the router
/// (dispatch goes through [`find_route`]) and of the check that `openapi.json` documents them all.
pub const ROUTES: &[(&str, &str)] = &[
    // One path for both (OpenAPI forbids two templates of the same shape): a source name for POST,
    // an event id for GET.
    ("POST", "/v1/events/{key}"),
    ("GET", "/v1/events/{key}"),
    ("POST", "/v1/events/{id}/redrive"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/{id}"),
    ("POST", "/v1/deliveries/{id}/replay"),
    ("GET", "/v1/dead-letters"),
    ("GET", "/v1/endpoints"),
    ("GET", "/v1/config"),
    ("POST", "/v1/config/reload"),
    ("GET", "/v1/plugins/{name}/shadow"),
    ("POST", "/v1/endpoints/{name}/replay-dead"),
    ("POST", "/v1/endpoints/{name}/enable"),
    ("POST", "/v1/endpoints/{name}/disable"),
    ("POST", "/v1/endpoints/{name}/discard"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// The OpenAPI 3.1 document of [`ROUTES`], served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// How a request path matched the route table.
#[derive(Debug, PartialEq)]
pub enum Found<'a> {
    /// A route: its template and the path's values for the template's `{…}` segments.
    Route(&'static str, Vec<&'a str>),
    /// The path exists, but not for this method; these are its methods.
    WrongMethod(Vec<&'static str>),
    /// No route has this path.
    NotFound,
}

/// Matches `method` and `path` against [`ROUTES`]. Path values are non-empty single segments.
pub fn find_route<'a>(method: &str, path: &'a str) -> Found<'a> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for (route_method, template) in ROUTES {
        let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut values = Vec::new();
        let matches = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') {
                values.push(*segment);
                !segment.is_empty()
            } else {
                part == segment
            }
        });
        if matches {
            if *route_method == method {
                return Found::Route(template, values);
            }
            allowed.push(*route_method);
        }
    }
    if allowed.is_empty() {
        Found::NotFound
    } else {
        Found::WrongMethod(allowed)
    }
}

async fn handle(state: &AppState, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    let path = request.uri().path().to_string();
    if let Some(reply) = console::serve(request.method(), &path) {
        return reply;
    }
    let (template, values) = match find_route(request.method().as_str(), &path) {
        Found::Route(template, values) => (template, values),
        Found::WrongMethod(allowed) => {
            let mut reply =
                error_reply(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path");
            if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                reply.headers_mut().insert(hyper::header::ALLOW, value);
            }
            return reply;
        }
        Found::NotFound => return error_reply(StatusCode::NOT_FOUND, "not_found", "no such route"),
    };
    let value = values.first().copied().unwrap_or_default();
    // The running configuration as of this request, kept to its end.
    let live = state.control.live();
    let known = |name: &str| live.endpoint_names.iter().any(|e| e == name);
    match template {
        "/v1/events/{key}" if request.method() == hyper::Method::POST => ingest(state, &live, value, request).await,
        "/v1/events/{key}" => {
            admin_call(state, &request, peer, admin::event(&state.queue, state.history.as_ref(), value)).await
        }
        "/v1/events/{id}/redrive" => {
            let call = admin::redrive(&state.queue, state.history.as_ref(), &live.ingest, value);
            admin_call(state, &request, peer, call).await
        }
        "/v1/deliveries/{id}" => {
            admin_call(state, &request, peer, admin::delivery(&state.queue, state.history.as_ref(), value)).await
        }
        "/v1/deliveries" => {
            let query = request.uri().query().unwrap_or_default().to_string();
            admin_call(state, &request, peer, admin::search::deliveries(&state.queue, state.history.as_ref(), &query))
                .await
        }
        "/v1/deliveries/{id}/replay" => {
            admin_call(state, &request, peer, admin::replay_one(&state.queue, state.history.as_ref(), value)).await
        }
        "/v1/dead-letters" => {
            let query = request.uri().query().unwrap_or_default().to_string();
            admin_call(state, &request, peer, admin::dead_letters(&state.queue, state.history.as_ref(), &query)).await
        }
        "/v1/endpoints" => {
            admin_call(state, &request, peer, admin::endpoints(&state.queue, &live.endpoint_names)).await
        }
        "/v1/config" => admin_call(state, &request, peer, async { Ok(live.shown.to_json()) }).await,
        "/v1/config/reload" => admin_call(state, &request, peer, reload(state)).await,
        "/v1/plugins/{name}/shadow" => {
            admin_call(state, &request, peer, async { admin::plugin_shadow(&live.plugins, value) }).await
        }
        "/v1/endpoints/{name}/replay-dead" => {
            let call =
                admin::replay_endpoint(&state.queue, state.history.as_ref(), value, known(value), state.replay_spacing);
            admin_call(state, &request, peer, call).await
        }
        "/v1/endpoints/{name}/enable" => {
            let alert = state.alerter.as_ref().map(|a| (a, live.endpoint_urls.get(value).cloned().unwrap_or_default()));
            admin_call(state, &request, peer, admin::enable_endpoint(&state.queue, value, known(value), alert)).await
        }
        "/v1/endpoints/{name}/disable" => {
            admin_call(state, &request, peer, admin::disable_endpoint(&state.queue, value, known(value))).await
        }
        "/v1/endpoints/{name}/discard" => {
            admin_call(state, &request, peer, admin::discard_parked(&state.queue, value, known(value))).await
        }
        "/healthz" => json_reply(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => readyz(state).await,
        "/metrics" => metrics(state, &live).await,
        "/openapi.json" => bytes_reply(StatusCode::OK, OPENAPI.as_bytes().to_vec()),
        // Every template of ROUTES has an arm above (the OpenAPI end-to-end test calls each route).
        _ => error_reply(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

/// How long `/readyz` and the queue gauges of `/metrics` wait for the queue's store.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /readyz`: 200 when the queue answers (plugins are loaded before the server starts, and a
/// failed reload keeps the running version), else 503 with the reason. With `[history]` failing to
/// write, still 200 (events are taken and delivered) but `degraded`, with the reason.
async fn readyz(state: &AppState) -> Reply {
    match tokio::time::timeout(PROBE_TIMEOUT, state.queue.ping()).await {
        Ok(Ok(())) => match state.history.as_ref().and_then(|h| h.degraded()) {
            Some(reason) => json_reply(
                StatusCode::OK,
                json!({"status": "degraded", "store": "ok", "plugins": "loaded", "history": reason}),
            ),
            None => json_reply(StatusCode::OK, json!({"status": "ready", "store": "ok", "plugins": "loaded"})),
        },
        Ok(Err(e)) => {
            state.metrics.store_error("admin");
            json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not_ready", "store": e.to_string()}))
        }
        Err(_) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "store": format!("no answer within {PROBE_TIMEOUT:?}")}),
        ),
    }
}

/// `GET /metrics`: gateway, plugin and queue metrics (the queue gauges are left out when the store
/// does not answer within [`PROBE_TIMEOUT`]).
async fn metrics(state: &AppState, live: &Live) -> Reply {
    let mut text = String::new();
    state.metrics.render(&mut text);
    live.plugins.render_metrics(&mut text);
    crate::metrics::render_admin_auth(state.admin_throttle.totals(), &mut text);
    if let Some(history) = &state.history {
        history.render_metrics(&mut text);
    }
    match tokio::time::timeout(PROBE_TIMEOUT, state.queue.depth(&live.endpoint_names)).await {
        Ok(Ok(depth)) => crate::metrics::render_queue_depth(&depth, &mut text),
        _ => state.metrics.store_error("admin"),
    }
    let mut reply = Response::new(Full::new(Bytes::from(text)));
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    reply
}

async fn ingest(state: &AppState, live: &Live, source: &str, request: Request<Incoming>) -> Reply {
    state.metrics.received(source);
    let (parts, body) = request.into_parts();
    let ingest = &live.ingest;
    if let Err(e) = ingest.precheck(source, &parts.headers) {
        return ingest_error(state, source, e);
    }
    let collect = Limited::new(body, ingest.max_body_bytes()).collect();
    let body = match tokio::time::timeout(state.limits.body_read_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return ingest_error(state, source, IngestError::TooLarge { limit: ingest.max_body_bytes() })
        }
        Ok(Err(e)) => return ingest_error(state, source, IngestError::Body(e.to_string())),
        Err(_) => {
            return ingest_error(state, source, IngestError::BodyTimeout { timeout: state.limits.body_read_timeout })
        }
    };
    match ingest.answer(source, &parts.headers, body).await {
        Ok(answer) => {
            state.metrics.accepted(source);
            let mut reply = bytes_reply(StatusCode::ACCEPTED, answer.body.into_bytes());
            if answer.replayed {
                reply.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            reply
        }
        Err(e) => ingest_error(state, source, e),
    }
}

fn ingest_error(state: &AppState, source: &str, error: IngestError) -> Reply {
    let (status, code) = match &error {
        IngestError::UnknownSource(_) => (StatusCode::NOT_FOUND, "unknown_source"),
        IngestError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        IngestError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        IngestError::ContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        IngestError::Json(_) | IngestError::Body(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
        IngestError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        IngestError::IdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
        IngestError::Header(_) => (StatusCode::BAD_REQUEST, "invalid_header"),
        IngestError::HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
        IngestError::IdempotencyInProgress => (StatusCode::CONFLICT, "idempotency_conflict"),
        IngestError::Plugin { .. } | IngestError::TooManyDeliveries(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "plugin_failed")
        }
        IngestError::PluginsBusy(_) => (StatusCode::SERVICE_UNAVAILABLE, "plugins_busy"),
        IngestError::Queue(q) if q.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable"),
        IngestError::Queue(_) => (StatusCode::INTERNAL_SERVER_ERROR, "queue_error"),
    };
    state.metrics.rejected(source, code);
    let mut body = json!({"error": {"code": code, "message": error.to_string()}});
    match &error {
        IngestError::Plugin { event_id, error_id, error: plugin_error } => {
            tracing::warn!(source, event_id, error_id, plugin = plugin_error.plugin(), kind = plugin_error.kind(),
                error = %plugin_error, "Plugin failed an event.");
            body["error"]["plugin"] = json!(plugin_error.plugin());
            body["error"]["kind"] = json!(plugin_error.kind());
            body["error"]["error_id"] = json!(error_id);
            if !state.expose_plugin_errors {
                body["error"]["message"] = json!(format!(
                    "plugin `{}` failed the event ({}); the gateway's log has the details under error id {error_id}",
                    plugin_error.plugin().unwrap_or_default(),
                    plugin_error.kind()
                ));
            }
        }
        IngestError::PluginsBusy(e) => {
            static BUSY: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(held_back) = BUSY.allow() {
                tracing::warn!(source, error = %e, similar_since_last = held_back, "Event refused: plugin work is queued to its bound.");
            }
        }
        IngestError::Queue(e) => {
            state.metrics.store_error("enqueue");
            static REFUSALS: crate::telemetry::Throttle = crate::telemetry::Throttle::new();
            if let Some(held_back) = REFUSALS.allow() {
                tracing::error!(source, error = %e, similar_since_last = held_back, "Event refused: the queue could not store it.");
            }
            body["error"]["message"] = json!("the queue is unavailable; the event was not accepted, retry later");
        }
        _ => tracing::debug!(source, error = %error, "Event refused."),
    }
    let mut reply = json_reply(status, body);
    if status == StatusCode::UNAUTHORIZED {
        reply.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        reply.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    if let IngestError::RateLimited { retry_after, .. } = &error {
        // Whole seconds, rounded up: a client that waits that long is let through.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            reply.headers_mut().insert("retry-after", value);
        }
    }
    reply
}

async fn admin_call(
    state: &AppState,
    request: &Request<Incoming>,
    peer: SocketAddr,
    call: impl std::future::Future<Output = Result<Value, AdminError>>,
) -> Reply {
    let ip = peer.ip().to_canonical();
    if let Some(wait) = state.admin_throttle.blocked(ip) {
        let mut reply = error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed admin authentications from this address; retry later",
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            reply.headers_mut().insert("retry-after", value);
        }
        return reply;
    }
    let header = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let result = match admin::authorize(state.admin_token.as_deref(), header) {
        Ok(()) => call.await,
        Err(e) => {
            state.admin_throttle.failed(ip);
            Err(e)
        }
    };
    match result {
        Ok(value) => json_reply(StatusCode::OK, value),
        Err(AdminError::Unauthorized) => {
            let mut reply =
                error_reply(StatusCode::UNAUTHORIZED, "unauthorized", &AdminError::Unauthorized.to_string());
            reply.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
            reply
        }
        Err(e @ AdminError::NotFound(_)) => error_reply(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        Err(e @ AdminError::BadRequest(_)) => error_reply(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        Err(e @ AdminError::NotDead(_)) => error_reply(StatusCode::CONFLICT, "not_dead", &e.to_string()),
        Err(e @ AdminError::Unprocessable(_)) => {
            error_reply(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", &e.to_string())
        }
        Err(AdminError::Queue(e)) => {
            state.metrics.store_error("admin");
            tracing::error!(error = %e, "Admin lookup failed.");
            let status =
                if e.is_unavailable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
            error_reply(status, "queue_unavailable", "the queue could not answer")
        }
        Err(AdminError::History(e)) => {
            tracing::error!(error = %e, "Admin lookup in history (PostgreSQL) failed.");
            error_reply(StatusCode::SERVICE_UNAVAILABLE, "history_unavailable", "history (PostgreSQL) could not answer")
        }
        Err(AdminError::Reload(e)) => reload_refused(e),
    }
}

/// `POST /v1/config/reload`: what the reload changed.
async fn reload(state: &AppState) -> Result<Value, AdminError> {
    let reloaded = state.control.reload().await?;
    Ok(serde_json::to_value(reloaded).unwrap_or_default())
}

/// A reload that applied nothing: 422 with every problem of the file, or 409 with the keys that
/// need a restart (or when there is no file), each as a list the caller can print.
fn reload_refused(error: ReloadError) -> Reply {
    tracing::warn!(error = %error, "Config reload refused; the running configuration stays.");
    let message = match &error {
        ReloadError::Invalid(_) => "the file has problems; nothing was applied".to_string(),
        ReloadError::NeedsRestart(_) => "these keys need a restart; nothing was applied".to_string(),
        ReloadError::NoFile => error.to_string(),
    };
    let (status, code, problems) = match error {
        ReloadError::Invalid(problems) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", problems),
        ReloadError::NeedsRestart(keys) => (StatusCode::CONFLICT, "needs_restart", keys),
        ReloadError::NoFile => (StatusCode::CONFLICT, "no_config_file", Vec::new()),
    };
    json_reply(status, json!({"error": {"code": code, "message": message, "problems": problems}}))
}

fn error_reply(status: StatusCode, code: &str, message: &str) -> Reply {
    json_reply(status, json!({"error": {"code": code, "message": message}}))
}

fn json_reply(status: StatusCode, body: Value) -> Reply {
    bytes_reply(status, body.to_string().into_bytes())
}

fn bytes_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_matches_itself_and_only_with_its_method() {
        for (method, template) in ROUTES {
            let path = template.replace("{key}", "shop").replace("{id}", "x1").replace("{name}", "orders");
            assert!(matches!(find_route(method, &path), Found::Route(t, _) if t == *template), "{method} {path}");
            assert!(!matches!(find_route("PATCH", &path), Found::Route(..)), "PATCH {path}");
        }
        assert_eq!(find_route("POST", "/v1/events/shop"), Found::Route("/v1/events/{key}", vec!["shop"]));
        assert_eq!(find_route("DELETE", "/v1/events/shop"), Found::WrongMethod(vec!["POST", "GET"]));
        assert_eq!(find_route("POST", "/v1/events/"), Found::NotFound);
        assert_eq!(find_route("GET", "/v2/events/shop"), Found::NotFound);
        assert_eq!(find_route("GET", "/v1/events/a/b"), Found::NotFound);
    }
}
