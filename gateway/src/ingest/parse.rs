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
    type_field: Option<TypeField>,
    #[serde(default)]
    event: Option<TypeField>,
}

/// A `type` or `event` field: its text when it is a string; any other value is skipped without
/// being built (a non-string is simply not a type), so a huge array there costs no memory.
enum TypeField {
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for TypeField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TypeFieldVisitor)
    }
}

struct TypeFieldVisitor;

impl<'de> serde::de::Visitor<'de> for TypeFieldVisitor {
    type Value = TypeField;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<TypeField, E> {
        Ok(TypeField::Text(v.to_string()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TypeField, E> {
        Ok(TypeField::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<TypeField, E> {
        Ok(TypeField::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<TypeField, E> {
        Ok(TypeField::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<TypeField, E> {
        Ok(TypeField::Other)
    }

    fn visit_unit<E>(self) -> Result<TypeField, E> {
        Ok(TypeField::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TypeField, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TypeField::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TypeField, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(TypeField::Other)
    }
}

/// Most headers kept with one event.
pub const MAX_KEPT_HEADERS: usize = 64;
/// Most bytes (names and values) of the headers kept with one event.
pub const MAX_KEPT_HEADER_BYTES: usize = 16 * 1024;

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
            TypeField::Text(s) if !s.is_empty() => Some(s),
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

/// Refuses requests whose kept headers (see [`kept_headers`]) are more than [`MAX_KEPT_HEADERS`] or
/// [`MAX_KEPT_HEADER_BYTES`]: each is stored with the event and shown to every plugin.
pub fn check_kept_headers(headers: &HeaderMap) -> Result<(), IngestError> {
    let kept = headers.iter().filter(|(name, _)| !DROPPED_HEADERS.contains(&name.as_str()));
    let (count, bytes) = kept.fold((0, 0), |(n, b), (name, value)| (n + 1, b + name.as_str().len() + value.len()));
    if count > MAX_KEPT_HEADERS || bytes > MAX_KEPT_HEADER_BYTES {
        return Err(IngestError::HeadersTooLarge(format!(
            "{count} headers of {bytes} bytes; at most {MAX_KEPT_HEADERS} headers and {MAX_KEPT_HEADER_BYTES} bytes are kept with an event"
        )));
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
    fn a_non_string_type_is_skipped_not_built() {
        let huge = format!(r#"{{"type":[{}],"event":"order.created"}}"#, vec!["[1,{\"a\":2}]"; 10_000].join(","));
        assert_eq!(event_type(&HeaderMap::new(), huge.as_bytes()).unwrap(), "order.created");
        assert_eq!(event_type(&HeaderMap::new(), br#"{"type":{"nested":"x"},"event":7}"#).unwrap(), "event");
    }

    #[test]
    fn kept_headers_are_bounded() {
        let mut many = HeaderMap::new();
        for i in 0..=MAX_KEPT_HEADERS {
            many.insert(
                hyper::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert!(check_kept_headers(&many).is_err());
        many.remove("x-h0");
        assert!(check_kept_headers(&many).is_ok());
        let big = headers(&[("x-big", Box::leak("v".repeat(MAX_KEPT_HEADER_BYTES).into_boxed_str()))]);
        assert!(check_kept_headers(&big).is_err());
        // Dropped headers (credentials, framing) do not count.
        assert!(
            check_kept_headers(&headers(&[("authorization", Box::leak("x".repeat(20_000).into_boxed_str()))])).is_ok()
        );
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
