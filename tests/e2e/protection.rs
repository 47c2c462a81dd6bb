//! Endpoint protection: concurrency cap and rate limit (measured at a real receiver), `410 Gone`
//! and the circuit breaker disabling an endpoint with an alert, parked deliveries, and re-enabling
//! through the admin API.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn route(endpoint: &str) -> String {
    format!("\n[[routes]]\nsource = \"shop\"\nendpoints = [\"{endpoint}\"]\n")
}

async fn post_many(gateway: &sluice::Gateway, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, accepted) = post_event(gateway.addr(), "shop", &format!(r#"{{"event":"e","n":{i}}}"#)).await;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["deliveries"][0]["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn endpoint_state(gateway: std::net::SocketAddr, name: &str) -> Value {
    let (status, list) = admin_get(gateway, "/v1/endpoints").await;
    assert_eq!(status, 200, "{list}");
    list["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap()
}

#[tokio::test]
async fn concurrency_cap_holds_at_the_receiver() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    // Each answer takes a while, so uncapped deliveries would overlap all at once.
    receiver.answer_always(Answer::Hang(Duration::from_millis(150)));
    let toml = base_toml(&redis) + &endpoint_toml("slow", &receiver.url(), "max_in_flight = 2") + &route("slow");
    let gateway = start_gateway(&toml).await;
    let ids = post_many(&gateway, 12).await;
    for id in &ids {
        wait_for_state(gateway.addr(), id, "succeeded").await;
    }
    assert_eq!(receiver.count(), 12);
    let most = receiver.most_concurrent();
    assert!((1..=2).contains(&most), "the receiver saw {most} requests at once; the cap is 2");
    gateway.shutdown().await;
}

#[tokio::test]
async fn rate_limit_spaces_attempts() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis) + &endpoint_toml("paced", &receiver.url(), "rate_limit = 20.0") + &route("paced");
    let gateway = start_gateway(&toml).await;
    let ids = post_many(&gateway, 30).await;
    for id in &ids {
        wait_for_state(gateway.addr(), id, "succeeded").await;
    }
    let mut arrivals: Vec<_> = receiver.all().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 30);
    // 20/s: attempts leave 50 ms apart, so 22 consecutive arrivals span 1.05 s; allow 50 ms of jitter.
    for window in arrivals.windows(22) {
        let span = window[21] - window[0];
        assert!(span >= Duration::from_secs(1), "22 requests arrived within {span:?}; the limit is 20/s");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_busy_endpoint_puts_deliveries_back_without_counting_attempts() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    // A lease that leaves 1 s of waiting: at 2/s most of 8 deliveries cannot start in time and
    // go back to the queue instead of outliving their lease.
    let toml = base_toml(&redis).replace("[admin]", "[queue]\nlease = \"7s\"\n\n[admin]")
        + &endpoint_toml("tiny", &receiver.url(), "timeout = \"1s\"\nrate_limit = 2.0")
        + &route("tiny");
    let gateway = start_gateway(&toml).await;
    let ids = post_many(&gateway, 8).await;
    for id in &ids {
        let view = wait_for_state(gateway.addr(), id, "succeeded").await;
        assert_eq!(view["attempts_made"], 1, "a put-back delivery counted an attempt: {view}");
        assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    }
    assert_eq!(receiver.count(), 8, "every delivery arrives exactly once");
    gateway.shutdown().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_alerts_and_parks_until_enabled() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let mut alerts = Receiver::start().await;
    receiver.answer_next([Answer::Status(410)]);
    let toml = base_toml(&redis)
        + &format!("\n[alerts]\nurl = \"{}\"\n", alerts.url())
        + &endpoint_toml("leaving", &format!("{}?token=s3cr3t-in-url&region=eu", receiver.url()), "")
        + &route("leaving");
    let gateway = start_gateway(&toml).await;
    let first = post_many(&gateway, 1).await.remove(0);

    let alert = alerts.next().await.json();
    assert_eq!(alert["type"], "endpoint.disabled");
    assert_eq!(alert["endpoint"], "leaving");
    // Credentials in the endpoint's URL stay out of the alert.
    let url = alert["url"].as_str().unwrap();
    assert!(url.ends_with("/hook?token=***&region=eu") && !url.contains("s3cr3t"), "{url}");
    assert!(alert["reason"].as_str().unwrap().contains("410"), "{alert}");
    let parked = wait_for_state(gateway.addr(), &first, "paused").await;
    assert_eq!(parked["attempts"][0]["status"], 410);

    // A later event is parked without being attempted.
    let second = post_many(&gateway, 1).await.remove(0);
    let view = wait_for_state(gateway.addr(), &second, "paused").await;
    assert_eq!(view["attempts_made"], 0, "{view}");
    assert_eq!(receiver.count(), 1);
    let state = endpoint_state(gateway.addr(), "leaving").await;
    assert_eq!(state["state"], "disabled", "{state}");
    assert_eq!(state["paused_deliveries"], 2, "{state}");

    let (status, enabled) = admin_post(gateway.addr(), "/v1/endpoints/leaving/enable").await;
    assert_eq!((status, enabled["resumed"].clone()), (200, 2.into()), "{enabled}");
    let recovered = alerts.next().await.json();
    assert_eq!(recovered["type"], "endpoint.recovered", "{recovered}");
    assert!(recovered["reason"].as_str().unwrap().contains("2 parked deliveries resumed"), "{recovered}");
    let done = wait_for_state(gateway.addr(), &first, "succeeded").await;
    assert_eq!(done["attempts"].as_array().unwrap().len(), 2, "410 then success: {done}");
    wait_for_state(gateway.addr(), &second, "succeeded").await;
    assert_eq!(receiver.count(), 3);
    assert_eq!(endpoint_state(gateway.addr(), "leaving").await["state"], "enabled");
    assert_eq!(admin_post(gateway.addr(), "/v1/endpoints/nope/enable").await.0, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_disables_an_endpoint_that_keeps_failing() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let mut alerts = Receiver::start().await;
    receiver.answer_always(Answer::Status(500));
    let schedule = format!("[{}]", vec!["\"50ms\""; 60].join(", "));
    let toml = base_toml(&redis)
        + &format!("\n[alerts]\nurl = \"{}\"\n", alerts.url())
        + &endpoint_toml("flaky", &receiver.url(), &format!("disable_after = \"300ms\"\nretry_schedule = {schedule}"))
        + &route("flaky");
    let gateway = start_gateway(&toml).await;
    let id = post_many(&gateway, 1).await.remove(0);

    let alert = alerts.next().await.json();
    assert_eq!(alert["type"], "endpoint.disabled");
    assert!(alert["reason"].as_str().unwrap().contains("without a success"), "{alert}");
    let parked = wait_for_state(gateway.addr(), &id, "paused").await;
    let failures = parked["attempts_made"].as_u64().unwrap();
    assert!(failures >= 2, "disabled after {failures} attempts: {parked}");
    let state = endpoint_state(gateway.addr(), "flaky").await;
    assert_eq!(state["state"], "disabled");
    assert!(state["failing_since"].is_u64(), "{state}");

    // The receiver is fixed; the operator enables the endpoint; the delivery goes through and the
    // run of failures is over.
    receiver.answer_always(Answer::Status(200));
    let (status, _) = admin_post(gateway.addr(), "/v1/endpoints/flaky/enable").await;
    assert_eq!(status, 200);
    let done = wait_for_state(gateway.addr(), &id, "succeeded").await;
    assert_eq!(done["attempts_made"].as_u64().unwrap(), failures + 1, "{done}");
    let state = endpoint_state(gateway.addr(), "flaky").await;
    assert!(state["failing_since"].is_null() && state["state"] == "enabled", "{state}");

    // An operator can disable it by hand too.
    let (status, disabled) = admin_post(gateway.addr(), "/v1/endpoints/flaky/disable").await;
    assert_eq!((status, disabled["state"].clone()), (200, "disabled".into()));
    let next = post_many(&gateway, 1).await.remove(0);
    wait_for_state(gateway.addr(), &next, "paused").await;
    gateway.shutdown().await;
}
