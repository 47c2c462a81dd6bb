//! Property tests (our fuzzing): ingest parsing, ingest authentication and config loading take
//! arbitrary and mutated input without panicking, and agree with an independent oracle (serde_json)
//! on what is valid. `PROPTEST_CASES=100000 cargo test --release --test e2e props` runs a longer
//! session; the default is 256 cases per property.

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use proptest::prelude::*;
use serde_json::Value;

use sluice::ingest::auth::SourceAuth;
use sluice::ingest::parse;

/// Arbitrary JSON values, up to 8 levels deep; keys and strings favour the characters a naive
/// scanner trips on (quotes, backslashes, brackets).
fn json_value() -> impl Strategy<Value = Value> {
    let text = prop_oneof![".{0,12}", r#"[\[\]{}"\\a-z]{0,12}"#];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        text.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("type".to_string()), Just("event".to_string()), text.clone()],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Header maps with arbitrary names from a small set and arbitrary (valid header) byte values.
fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        Just("x-event-type"),
        Just("content-type"),
        Just("authorization"),
        Just("x-hub-signature-256"),
        Just("stripe-signature"),
        Just("webhook-id"),
        Just("webhook-timestamp"),
        Just("webhook-signature"),
        Just("x-other"),
    ];
    let value = prop::collection::vec(any::<u8>(), 0..40);
    prop::collection::vec((name, value), 0..6).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    })
}

/// What the event type must be, worked out independently of the parser.
fn expected_type(headers: &HeaderMap, body: &Value) -> Option<String> {
    if let Some(header) = headers.get(parse::EVENT_TYPE_HEADER) {
        let text = header.to_str().ok()?.trim();
        if !text.is_empty() {
            return Some(text.to_string());
        }
    }
    let field = |name: &str| body.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    Some(field("type").or_else(|| field("event")).unwrap_or_else(|| parse::DEFAULT_EVENT_TYPE.to_string()))
}

fn auth_table() -> SourceAuth {
    let toml = r#"
[security]
allow_unauthenticated_sources = false
[[sources]]
name = "token"
token = "a-token-of-sixteen-chars"
[[sources]]
name = "github"
verify = "github"
secret = "github-secret"
[[sources]]
name = "stripe"
verify = "stripe"
secret = "stripe-secret"
[[sources]]
name = "standard"
verify = "standard-webhooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;
    SourceAuth::new(&sluice::config::from_toml(toml).expect("fixture parses"))
}

proptest! {
    #[test]
    fn any_json_value_is_accepted_and_typed_like_the_oracle(body in json_value(), headers in headers()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let got = parse::event_type(&headers, &bytes);
        match expected_type(&headers, &body) {
            None => prop_assert!(got.is_err(), "a non-text x-event-type was accepted"),
            Some(want) if want.len() > parse::MAX_EVENT_TYPE_LEN => prop_assert!(got.is_err()),
            Some(want) => prop_assert_eq!(got.unwrap(), want),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_ones_are_json(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if parse::event_type(&HeaderMap::new(), &body).is_ok() {
            prop_assert!(serde_json::from_slice::<Value>(&body).is_ok(), "accepted non-JSON {:?}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn mutated_json_is_judged_like_the_oracle(body in json_value(), at in any::<prop::sample::Index>(), byte in any::<u8>(), insert in any::<bool>()) {
        let mut bytes = serde_json::to_vec(&body).unwrap();
        let i = at.index(bytes.len() + 1);
        if insert || i == bytes.len() { bytes.insert(i, byte) } else { bytes[i] = byte }
        let ours = parse::event_type(&HeaderMap::new(), &bytes).is_ok();
        let oracle = serde_json::from_slice::<Value>(&bytes);
        // Found by this property: `[2E1306]` is valid JSON grammar that serde_json's Value refuses
        // ("number out of range" for an f64). Ingest accepts it, as JavaScript and Python do
        // (they read Infinity); receivers get the bytes as sent.
        let out_of_range = matches!(&oracle, Err(e) if e.to_string().contains("number out of range"));
        if !out_of_range {
            prop_assert_eq!(ours, oracle.is_ok(), "disagree on {:?}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn nesting_is_refused_exactly_beyond_the_limit(depth in 100usize..160, noise in r#"[\[\]{}"\\]{0,6}"#) {
        // Brackets inside strings must not count.
        let inner = serde_json::to_string(&noise).unwrap();
        let body = format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth));
        let ours = parse::event_type(&HeaderMap::new(), body.as_bytes()).is_ok();
        prop_assert_eq!(ours, depth <= parse::MAX_DEPTH);
    }

    #[test]
    fn content_type_and_kept_headers_never_panic(headers in headers()) {
        let _ = parse::check_content_type(&headers);
        let kept = parse::kept_headers(&headers);
        prop_assert!(kept.iter().all(|(name, _)| name != "authorization" && !name.ends_with("signature") && name != "x-hub-signature-256"));
    }

    #[test]
    fn authentication_refuses_arbitrary_credentials(headers in headers(), body in prop::collection::vec(any::<u8>(), 0..64), now in any::<u64>()) {
        let auth = auth_table();
        prop_assert!(auth.check_headers("token", &headers).is_err(), "a random header passed the token check");
        for source in ["github", "stripe", "standard"] {
            prop_assert!(auth.check_body(source, &headers, &body, now).is_err(), "a random signature passed {}", source);
        }
        prop_assert!(auth.check_headers("unlisted", &headers).is_err());
    }

    #[test]
    fn arbitrary_config_text_never_panics(text in ".{0,300}") {
        if let Ok(config) = sluice::config::from_toml(&text) {
            let _ = config.validate();
        }
    }

    #[test]
    fn config_assembled_from_real_keys_never_panics(
        entries in prop::collection::vec((
            prop_oneof![Just("[server]"), Just("[queue]"), Just("[retry]"), Just("[security]"), Just("[[endpoints]]"), Just("[[sources]]"), Just("[[routes]]"), Just("[[plugins]]")],
            prop_oneof![Just("name"), Just("url"), Just("secret"), Just("timeout"), Just("lease"), Just("schedule"), Just("token"), Just("verify"), Just("source"), Just("endpoints"), Just("listen"), Just("rate_limit"), Just("max_in_flight"), Just("allowed_destinations"), Just("shards"), Just("path")],
            prop_oneof![Just("\"x\""), Just("\"5s\""), Just("\"http://127.0.0.1:1/\""), Just("0"), Just("-1"), Just("1e309"), Just("[\"a\"]"), Just("[]"), Just("\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""), Just("\"github\""), Just("\"::/0\""), Just("true")],
        ), 0..12)
    ) {
        let text: String = entries.iter().map(|(section, key, value)| format!("{section}\n{key} = {value}\n")).collect();
        if let Ok(config) = sluice::config::from_toml(&text) {
            if let Err(e) = config.validate() {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
