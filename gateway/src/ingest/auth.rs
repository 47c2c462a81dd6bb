//! Ingest authentication: each source checks a bearer token, or verifies the sender's signature so
//! third-party webhooks can be ingested directly (GitHub, Stripe, Standard Webhooks).
//!
//! Tokens are checked before the body is read; signatures once it has been (they cover the body).
//! Every comparison runs in constant time. A failed check names what was wrong (missing header,
//! stale timestamp, mismatch) but never echoes a credential.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;

use crate::config::{Config, SignatureScheme};
use crate::signing::Secret;

/// Why a request was not authenticated (HTTP 401). The text is safe to show the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// How one source proves its requests.
enum Credential {
    /// `[security] allow_unauthenticated_sources`: nothing to check.
    Open,
    /// `Authorization: Bearer <token>`.
    Token(Vec<u8>),
    /// `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    GitHub(Vec<u8>),
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC of "t.body">`.
    Stripe(Vec<u8>, Duration),
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` over "id.timestamp.body".
    StandardWebhooks(Secret, Duration),
}

/// The credential of every source, built from `[[sources]]` and `[security]`.
pub struct SourceAuth {
    sources: HashMap<String, Credential>,
    open_by_default: bool,
}

impl SourceAuth {
    /// Builds the table from a validated config.
    pub fn new(config: &Config) -> Self {
        let sources = config
            .sources
            .iter()
            .map(|s| {
                let secret = s.secret.clone().unwrap_or_default();
                let credential = match (&s.token, s.verify) {
                    (Some(token), _) => Credential::Token(token.clone().into_bytes()),
                    (None, Some(SignatureScheme::GitHub)) => Credential::GitHub(secret.into_bytes()),
                    (None, Some(SignatureScheme::Stripe)) => Credential::Stripe(secret.into_bytes(), s.tolerance),
                    (None, Some(SignatureScheme::StandardWebhooks)) => match Secret::parse(&secret) {
                        Ok(secret) => Credential::StandardWebhooks(secret, s.tolerance),
                        // Validation refuses such a config; refuse every request should one get here.
                        Err(_) => Credential::Token(Vec::new()),
                    },
                    (None, None) if config.security.allow_unauthenticated_sources => Credential::Open,
                    (None, None) => Credential::Token(Vec::new()),
                };
                (s.name.clone(), credential)
            })
            .collect();
        Self { sources, open_by_default: config.security.allow_unauthenticated_sources }
    }

    /// Whether the source checks a signature over the body (so [`Self::check_body`] has work to do).
    pub fn verifies_body(&self, source: &str) -> bool {
        matches!(
            self.sources.get(source),
            Some(Credential::GitHub(_) | Credential::Stripe(..) | Credential::StandardWebhooks(..))
        )
    }

    /// Checks what can be checked before the body is read: the bearer token, and that the
    /// source may be used at all.
    pub fn check_headers(&self, source: &str, headers: &HeaderMap) -> Result<(), AuthError> {
        match self.sources.get(source) {
            None if self.open_by_default => Ok(()),
            None => Err(AuthError(format!(
                "source `{source}` has no credential configured; add a [[sources]] entry for it"
            ))),
            Some(Credential::Open) => Ok(()),
            Some(Credential::Token(expected)) => {
                let given = header(headers, "authorization")
                    .ok_or_else(|| AuthError("missing `Authorization: Bearer <token>` header".into()))?;
                let token = given
                    .strip_prefix("Bearer ")
                    .ok_or_else(|| AuthError("the authorization header must be `Bearer <token>`".into()))?;
                if expected.is_empty() || !constant_time_eq(expected, token.trim().as_bytes()) {
                    return Err(AuthError("wrong bearer token".into()));
                }
                Ok(())
            }
            // Signatures cover the body; checked in `check_body`.
            Some(_) => Ok(()),
        }
    }

    /// Verifies a signature over the body, for sources that use one; `now` is the Unix time in seconds.
    pub fn check_body(&self, source: &str, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), AuthError> {
        match self.sources.get(source) {
            Some(Credential::GitHub(secret)) => verify_github(secret, headers, body),
            Some(Credential::Stripe(secret, tolerance)) => verify_stripe(secret, *tolerance, headers, body, now),
            Some(Credential::StandardWebhooks(secret, tolerance)) => {
                verify_standard(secret, *tolerance, headers, body, now)
            }
            _ => Ok(()),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // subtle compares equal-length slices in constant time (a length mismatch is public anyway).
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_timestamp(timestamp: &str, tolerance: Duration, now: u64) -> Result<u64, AuthError> {
    let at: u64 = timestamp.trim().parse().map_err(|_| AuthError("the signature timestamp is not a number".into()))?;
    if at.abs_diff(now) > tolerance.as_secs() {
        return Err(AuthError(format!(
            "the signature timestamp is {}s away from now, outside the tolerance of {}s",
            at.abs_diff(now),
            tolerance.as_secs()
        )));
    }
    Ok(at)
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex>`. GitHub sends no timestamp, so there is no replay
/// window to check; its `X-GitHub-Delivery` id is kept with the event.
fn verify_github(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), AuthError> {
    let given = header(headers, "x-hub-signature-256")
        .ok_or_else(|| AuthError("missing `X-Hub-Signature-256` header".into()))?;
    let given = given
        .strip_prefix("sha256=")
        .ok_or_else(|| AuthError("`X-Hub-Signature-256` must be `sha256=<hex>`".into()))?;
    let expected = hex(&hmac_sha256(secret, &[body]));
    if constant_time_eq(expected.as_bytes(), given.trim().to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(AuthError("`X-Hub-Signature-256` does not match the body".into()))
    }
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` over "t.body"; any v1 may match.
fn verify_stripe(
    secret: &[u8],
    tolerance: Duration,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), AuthError> {
    let given =
        header(headers, "stripe-signature").ok_or_else(|| AuthError("missing `Stripe-Signature` header".into()))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in given.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => signatures.push(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| AuthError("`Stripe-Signature` has no `t=` timestamp".into()))?;
    if signatures.is_empty() {
        return Err(AuthError("`Stripe-Signature` has no `v1=` signature".into()));
    }
    check_timestamp(timestamp, tolerance, now)?;
    let expected = hex(&hmac_sha256(secret, &[timestamp.as_bytes(), b".", body]));
    if signatures.iter().any(|s| constant_time_eq(expected.as_bytes(), s.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError("`Stripe-Signature` does not match the body".into()))
    }
}

/// Standard Webhooks: `webhook-signature: v1,<base64> [v1,<base64>…]` over "id.timestamp.body".
fn verify_standard(
    secret: &Secret,
    tolerance: Duration,
    headers: &HeaderMap,
    body: &[u8],
    now: u64,
) -> Result<(), AuthError> {
    let missing = |name: &str| AuthError(format!("missing `{name}` header"));
    let id = header(headers, "webhook-id").ok_or_else(|| missing("webhook-id"))?;
    let timestamp = header(headers, "webhook-timestamp").ok_or_else(|| missing("webhook-timestamp"))?;
    let given = header(headers, "webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
    let at = check_timestamp(timestamp, tolerance, now)?;
    let expected = secret.sign(id, at, body);
    if given.split_whitespace().any(|s| constant_time_eq(expected.as_bytes(), s.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError("`webhook-signature` does not match the body".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn github_signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries": secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert!(verify_github(b"It's a Secret to Everybody", &h, b"Hello, World!").is_ok());
        assert!(verify_github(b"It's a Secret to Everybody", &h, b"Hello, World?").is_err());
        assert!(verify_github(b"another secret", &h, b"Hello, World!").is_err());
    }

    #[test]
    fn stripe_signature_checks_mac_and_tolerance() {
        let secret = b"whsec_test_secret";
        let body = br#"{"id":"evt_1"}"#;
        let mac = hex(&hmac_sha256(secret, &[b"1700000000", b".", body]));
        let h = headers(&[("stripe-signature", &format!("t=1700000000,v1=deadbeef,v1={mac},v0=00"))]);
        let tolerance = Duration::from_secs(300);
        assert!(verify_stripe(secret, tolerance, &h, body, 1_700_000_100).is_ok());
        let stale = verify_stripe(secret, tolerance, &h, body, 1_700_000_400).unwrap_err();
        assert!(stale.0.contains("outside the tolerance"), "{stale}");
        assert!(verify_stripe(secret, tolerance, &h, b"{}", 1_700_000_000).is_err());
    }

    #[test]
    fn standard_webhooks_signature_matches_the_specs_example() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", "v1,bm9ldHZhbGlk v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
        ]);
        let body = br#"{"test": 2432232314}"#;
        let tolerance = Duration::from_secs(300);
        assert!(verify_standard(&secret, tolerance, &h, body, 1614265330).is_ok());
        assert!(verify_standard(&secret, tolerance, &h, body, 1614265330 + 301).is_err());
        assert!(verify_standard(&secret, tolerance, &h, b"{}", 1614265330).is_err());
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
