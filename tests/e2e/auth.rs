//! Ingest authentication: bearer tokens and sender signatures (GitHub, Stripe, Standard Webhooks).
//! A missing or wrong credential answers 401 and stores nothing; the right one is delivered.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;

use crate::harness::*;

const TOKEN: &str = "producer-token-0123456789";
const GITHUB_SECRET: &str = "github-shared-secret";
const STRIPE_SECRET: &str = "whsec_stripe_endpoint_secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway whose four sources each check a different credential; unauthenticated sources refused.
async fn gateway(redis: &RedisServer, receiver: &Receiver) -> sluice::Gateway {
    let mut toml = base_toml(redis).replace("allow_unauthenticated_sources = true", "")
        + &endpoint_toml("orders", &receiver.url(), "");
    toml += &format!(
        r#"
[[sources]]
name = "shop"
token = "{TOKEN}"
[[sources]]
name = "github"
verify = "github"
secret = "{GITHUB_SECRET}"
[[sources]]
name = "stripe"
verify = "stripe"
secret = "{STRIPE_SECRET}"
[[sources]]
name = "partner"
verify = "standard-webhooks"
secret = "{SECRET}"
tolerance = "1m"
"#
    );
    for source in ["shop", "github", "stripe", "partner"] {
        toml += &format!("\n[[routes]]\nsource = \"{source}\"\nendpoints = [\"orders\"]\n");
    }
    start_gateway(&toml).await
}

async fn post(gateway: &sluice::Gateway, source: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    let response = client()
        .post(format!("http://{}/v1/events/{source}", gateway.addr()))
        .header("content-type", "application/json")
        .headers(map)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Asserts a 401 whose message contains `cause`.
fn assert_refused((status, body): (u16, String), cause: &str) {
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized") && body.contains(cause), "expected `{cause}` in {body}");
}

#[tokio::test]
async fn bearer_token_source_refuses_missing_and_wrong_tokens() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = gateway(&redis, &receiver).await;
    let body = r#"{"event":"order_created","order_id":1}"#;

    assert_refused(post(&gateway, "shop", &[], body).await, "missing `Authorization: Bearer");
    assert_refused(post(&gateway, "shop", &[("authorization", "Bearer wrong-token".into())], body).await, "wrong");
    assert_refused(post(&gateway, "shop", &[("authorization", format!("Basic {TOKEN}"))], body).await, "Bearer");
    assert_eq!(redis.count_keys(EVENT_KEYS).await, 0, "a refused request stored an event");

    let (status, reply) = post(&gateway, "shop", &[("authorization", format!("Bearer {TOKEN}"))], body).await;
    assert_eq!(status, 202, "{reply}");
    let got = receiver.next().await;
    assert_eq!(got.json()["order_id"], 1);
    assert!(!got.headers.contains_key("authorization"), "the token was forwarded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn github_signature_is_verified_over_the_body() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = gateway(&redis, &receiver).await;
    let body = r#"{"action":"opened","number":7}"#;
    let signature = format!("sha256={}", hex(&mac(GITHUB_SECRET.as_bytes(), &[body.as_bytes()])));

    assert_refused(post(&gateway, "github", &[], body).await, "missing `X-Hub-Signature-256`");
    let tampered = r#"{"action":"opened","number":8}"#;
    assert_refused(
        post(&gateway, "github", &[("x-hub-signature-256", signature.clone())], tampered).await,
        "does not match",
    );
    // A bearer token is no substitute for the signature.
    assert_refused(
        post(&gateway, "github", &[("authorization", format!("Bearer {TOKEN}"))], body).await,
        "missing `X-Hub-Signature-256`",
    );
    assert_eq!(redis.count_keys(EVENT_KEYS).await, 0);

    let headers = [("x-hub-signature-256", signature), ("x-github-event", "pull_request".to_string())];
    let (status, reply) = post(&gateway, "github", &headers, body).await;
    assert_eq!(status, 202, "{reply}");
    let got = receiver.next().await;
    assert_eq!(got.json()["number"], 7);
    assert!(!got.headers.contains_key("x-hub-signature-256"), "the sender's signature was forwarded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn stripe_signature_is_verified_with_its_timestamp_tolerance() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = gateway(&redis, &receiver).await;
    let body = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let sign = |t: u64| {
        let t = t.to_string();
        format!("t={t},v1={}", hex(&mac(STRIPE_SECRET.as_bytes(), &[t.as_bytes(), b".", body.as_bytes()])))
    };

    // Signed correctly but 10 minutes ago: outside Stripe's 5-minute tolerance.
    assert_refused(
        post(&gateway, "stripe", &[("stripe-signature", sign(now() - 600))], body).await,
        "outside the tolerance",
    );
    assert_refused(
        post(&gateway, "stripe", &[("stripe-signature", format!("t={},v1=00ff", now()))], body).await,
        "does not match",
    );
    assert_refused(post(&gateway, "stripe", &[("stripe-signature", "v1=00ff".into())], body).await, "no `t=`");
    assert_eq!(redis.count_keys(EVENT_KEYS).await, 0);

    let (status, reply) = post(&gateway, "stripe", &[("stripe-signature", sign(now()))], body).await;
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains("\"deliveries\""), "{reply}");
    assert_eq!(receiver.next().await.json()["type"], "charge.succeeded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn standard_webhooks_signature_is_verified() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = gateway(&redis, &receiver).await;
    let body = r#"{"type":"invoice.paid","amount":10}"#;
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let signed = |id: &str, t: u64| {
        let signature = mac(&key, &[format!("{id}.{t}.").as_bytes(), body.as_bytes()]);
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", t.to_string()),
            ("webhook-signature", format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(signature))),
        ]
    };

    let mut missing = signed("msg_1", now());
    missing.retain(|(name, _)| *name != "webhook-timestamp");
    assert_refused(post(&gateway, "partner", &missing, body).await, "missing `webhook-timestamp`");
    // This source's tolerance is one minute.
    assert_refused(post(&gateway, "partner", &signed("msg_1", now() - 120), body).await, "outside the tolerance");
    let mut wrong_id = signed("msg_1", now());
    wrong_id[0].1 = "msg_2".into();
    assert_refused(post(&gateway, "partner", &wrong_id, body).await, "does not match");
    assert_eq!(redis.count_keys(EVENT_KEYS).await, 0);

    let (status, reply) = post(&gateway, "partner", &signed("msg_1", now()), body).await;
    assert_eq!(status, 202, "{reply}");
    let got = receiver.next().await;
    assert_eq!(got.json()["amount"], 10);
    // The delivery is signed afresh by the gateway: its own id, not the sender's.
    assert!(got.header("webhook-id").starts_with("dlv_") && signature_valid(&got));
    gateway.shutdown().await;
}

#[test]
fn a_routed_source_without_credentials_is_a_config_error() {
    let redis_url = "redis://127.0.0.1:1/";
    let toml = format!(
        "[redis]\nurl = \"{redis_url}\"\n{}\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n\
         [[sources]]\nname = \"unused\"\ntoken = \"short\"\n",
        endpoint_toml("orders", "https://example.com/hook", "")
    );
    let problems = sluice::config::from_toml(&toml).unwrap().validate().unwrap_err().to_string();
    for expected in [
        "source `shop` has no [[sources]] entry",
        "sources[0] (unused): no route serves this source",
        "sources[0] (unused).token: must be at least 16 characters",
    ] {
        assert!(problems.contains(expected), "expected `{expected}` in:\n{problems}");
    }
    let allowed = toml.replace("[[sources]]\nname = \"unused\"\ntoken = \"short\"\n", "")
        + "\n[security]\nallow_unauthenticated_sources = true\n";
    sluice::config::from_toml(&allowed).unwrap().validate().unwrap();
}
