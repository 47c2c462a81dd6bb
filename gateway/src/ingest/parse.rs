//! Reading an ingest request: content type, JSON validity, event type, and which headers are kept
//! with the event (credentials and hop-by-hop headers are not).

use hyper::HeaderMap;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::IngestError;

/// The event type used when neither the header nor the body names one.
pub const DEFAULT_EVENT_TYPE: &str = "event";
/// The header that names the event type.
pub const EVENT_TYPE_HEADER: &str = "x-event-type";
/// Longest accepted event type.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// Headers never stored with an event nor shown to plugins.
const DROPPED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-hub-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "webhook-signature",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
];

/// Refuses non-JSON content types. A missing content type is accepted (the body must still be JSON).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(value) = headers.get(hyper::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(IngestError::ContentType(text.chars().take(100).collect()))
    }
}

/// The two fields that may name the event type; every other field is skipped without building it.
#[derive(Deserialize)]
struct TypeProbe {
    #[serde(rename = "type", default)]
    type_field: Option<serde_json::Value>,
    #[serde(default)]
    event: Option<serde_json::Value>,
}

/// Validates the body as JSON and works out the event type: the `x-event-type` header, else the
/// body's string field `type`, else its string field `event`, else `"event"`.
pub fn event_type(headers: &HeaderMap, body: &[u8]) -> Result<String, IngestError> {
    let from_header = match headers.get(EVENT_TYPE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| IngestError::Header(format!("{EVENT_TYPE_HEADER} must be visible ASCII text")))?
                .trim(),
        ),
    };
    // JSON is UTF-8 (RFC 8259); serde_json does not check the strings of fields it skips.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(IngestError::Json(format!("the body is not UTF-8: invalid byte at offset {}", e.valid_up_to())));
    }
    check_depth(body)?;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let from_body = if first == Some(&b'{') {
        let probe: TypeProbe = serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
        [probe.type_field, probe.event].into_iter().flatten().find_map(|v| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        })
    } else {
        serde_json::from_slice::<IgnoredAny>(body).map_err(|e| IngestError::Json(e.to_string()))?;
        None
    };
    let chosen = match from_header.filter(|h| !h.is_empty()) {
        Some(header) => header.to_string(),
        None => from_body.unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_string()),
    };
    if chosen.len() > MAX_EVENT_TYPE_LEN {
        return Err(IngestError::Json(format!("event type is longer than {MAX_EVENT_TYPE_LEN} bytes")));
    }
    Ok(chosen)
}

/// Deepest accepted nesting of arrays and objects (serde_json's own limit, which it does not apply
/// to values it skips).
pub const MAX_DEPTH: usize = 128;

/// Refuses bodies nested deeper than [`MAX_DEPTH`], which would exhaust the stack of whatever
/// parses them next (plugins, receivers). One pass over the bytes, skipping strings.
fn check_depth(body: &[u8]) -> Result<(), IngestError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(IngestError::Json(format!(
                        "recursion limit exceeded: arrays and objects nest deeper than {MAX_DEPTH} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The headers stored with the event and shown to plugins: lower-case names, UTF-8 values only,
/// without credentials or hop-by-hop headers.
pub fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !DROPPED_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn event_type_prefers_header_then_type_then_event() {
        let body = br#"{"event":"order_created","type":"t","order_id":1}"#;
        assert_eq!(event_type(&headers(&[("x-event-type", "h")]), body).unwrap(), "h");
        assert_eq!(event_type(&HeaderMap::new(), body).unwrap(), "t");
        assert_eq!(event_type(&HeaderMap::new(), br#"{"event":"order_created"}"#).unwrap(), "order_created");
        assert_eq!(event_type(&HeaderMap::new(), br#"{"type":7}"#).unwrap(), "event");
        assert_eq!(event_type(&HeaderMap::new(), b"[1,2]").unwrap(), "event");
    }

    #[test]
    fn malformed_json_is_refused() {
        for body in [&b"{"[..], b"{\"a\":}", b"", b"nope", b"{\"a\":1} trailing"] {
            assert!(matches!(event_type(&HeaderMap::new(), body), Err(IngestError::Json(_))), "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_with_a_reason() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let body = format!("{}1{}", open.repeat(10_000), close.repeat(10_000));
            match event_type(&HeaderMap::new(), body.as_bytes()) {
                Err(IngestError::Json(message)) => assert!(message.contains("recursion limit"), "{message}"),
                other => panic!("expected a JSON error, got {other:?}"),
            }
        }
        let fine = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(event_type(&HeaderMap::new(), fine.as_bytes()).is_ok());
    }

    #[test]
    fn event_type_header_must_be_text() {
        let mut map = HeaderMap::new();
        map.insert(EVENT_TYPE_HEADER, HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert!(matches!(event_type(&map, b"{}"), Err(IngestError::Header(_))));
    }

    #[test]
    fn content_type_must_be_json_when_given() {
        assert!(check_content_type(&headers(&[("content-type", "application/json; charset=utf-8")])).is_ok());
        assert!(check_content_type(&headers(&[("content-type", "application/cloudevents+json")])).is_ok());
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        assert!(check_content_type(&headers(&[("content-type", "text/plain")])).is_err());
    }

    #[test]
    fn credentials_are_not_kept() {
        let kept = kept_headers(&headers(&[("authorization", "Bearer x"), ("x-request-id", "r1")]));
        assert_eq!(kept, vec![("x-request-id".to_string(), "r1".to_string())]);
    }
}
