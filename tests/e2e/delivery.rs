//! The seed story and the delivery lifecycle: success, retries, timeouts, dead letters and alerts.

use std::time::Duration;

use crate::harness::*;

fn route(endpoints: &str) -> String {
    format!("\n[[routes]]\nsource = \"shop\"\nendpoints = [{endpoints}]\n")
}

#[tokio::test]
async fn seed_event_is_delivered_signed_and_succeeds_with_one_attempt() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;

    let body = r#"{"event":"order_created","order_id":12345}"#;
    let (status, accepted) = post_event(gateway.addr(), "shop", body).await;
    assert_eq!(status, 202, "{accepted}");
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["deliveries"][0]["endpoint"], "orders");
    assert_eq!(accepted["deliveries"].as_array().unwrap().len(), 1);

    let got = receiver.next().await;
    assert_eq!(got.body, body.as_bytes());
    assert_eq!(got.header("webhook-id"), delivery_id);
    assert_eq!(got.header("content-type"), "application/json");
    assert!(got.header("user-agent").starts_with("Sluice/"));
    assert!(signature_valid(&got), "signature does not verify: {:?}", got.headers);

    let view = wait_for_state(gateway.addr(), &delivery_id, "succeeded").await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["attempts"][0]["status"], 200);
    assert_eq!(view["attempts"][0]["outcome"], "success");

    let (status, event) = admin_get(gateway.addr(), &format!("/v1/events/{}", accepted["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(event["type"], "order_created");
    assert_eq!(event["source"], "shop");
    assert_eq!(event["payload"]["order_id"], 12345);
    assert_eq!(event["deliveries"][0]["id"], delivery_id.as_str());
    assert_eq!(event["deliveries"][0]["state"], "succeeded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn retries_until_receiver_recovers() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    receiver.answer_next([Answer::Status(500), Answer::Status(502)]);
    let toml = base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;

    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    assert_eq!(status, 202);
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap();
    for _ in 0..3 {
        let got = receiver.next().await;
        assert_eq!(got.header("webhook-id"), delivery_id, "every retry keeps the same webhook-id");
    }
    let view = wait_for_state(gateway.addr(), delivery_id, "succeeded").await;
    let statuses: Vec<_> = view["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [500, 502, 200]);
    assert_eq!(view["attempts_made"], 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn always_failing_receiver_is_dead_lettered_and_admin_alerted() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Status(503));
    let mut alerts = Receiver::start().await;
    let toml = base_toml(&redis)
        + &format!("\n[alerts]\nurl = \"{}\"\n", alerts.url())
        + &endpoint_toml("orders", &receiver.url(), "")
        + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;

    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap();

    let alert = alerts.next().await.json();
    assert_eq!(alert["type"], "delivery.dead");
    assert_eq!(alert["delivery_id"], delivery_id);
    assert_eq!(alert["endpoint"], "orders");
    assert_eq!(alert["attempts"], 3);
    assert_eq!(alert["last_error"], "HTTP 503");
    assert_eq!(receiver.count(), 3, "the schedule has three entries, so three attempts");

    let view = wait_for_state(gateway.addr(), delivery_id, "dead").await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 3);
    gateway.shutdown().await;
}

#[tokio::test]
async fn alerts_are_queued_signed_and_retried_until_the_alert_receiver_takes_them() {
    // On the embedded backend: alerts go through whichever queue the gateway runs on.
    let dir = Scratch::new("alerts");
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Status(503));
    let mut alerts = Receiver::start().await;
    alerts.answer_next([Answer::Status(500), Answer::Status(502)]);
    let toml = base_toml_embedded()
        + &format!("\n[queue]\npath = \"{}\"\n", dir.path().join("queue.redb").display())
        + &format!(
            "\n[alerts]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry_schedule = [\"0s\", \"50ms\", \"50ms\"]\n",
            alerts.url()
        )
        + &endpoint_toml("orders", &receiver.url(), "")
        + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;
    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap();

    let tries = [alerts.next().await, alerts.next().await, alerts.next().await];
    let alert_id = tries[0].header("webhook-id").to_string();
    for got in &tries {
        assert_eq!(got.json()["type"], "delivery.dead");
        assert_eq!(got.json()["delivery_id"], delivery_id);
        assert_eq!(got.header("webhook-id"), alert_id, "an alert keeps its id across retries");
        assert!(signature_valid(got), "alerts are signed with alerts.secret");
    }
    assert!(!tries[0].ok && !tries[1].ok && tries[2].ok);
    // The alert is a delivery to the internal endpoint `_alerts`, with its attempt log.
    let view = wait_for_state(gateway.addr(), &alert_id, "succeeded").await;
    assert_eq!(view["endpoint"], "_alerts");
    let statuses: Vec<_> = view["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [500, 502, 200]);
    gateway.shutdown().await;
}

#[tokio::test]
async fn endpoint_names_starting_with_an_underscore_are_reserved() {
    let toml = base_toml_embedded() + &endpoint_toml("_alerts", "https://example.com/", "");
    let error = sluice::config::from_toml(&toml).unwrap().validate().unwrap_err().to_string();
    assert!(error.contains("names starting with `_` are reserved"), "{error}");
}

#[tokio::test]
async fn retry_after_is_respected() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    receiver.answer_next([Answer::StatusWithHeader(429, "retry-after", "1".into())]);
    let toml = base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;

    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap();
    receiver.next().await;
    receiver.next().await;
    let view = wait_for_state(gateway.addr(), delivery_id, "succeeded").await;
    let first = view["attempts"][0]["at"].as_u64().unwrap();
    let second = view["attempts"][1]["at"].as_u64().unwrap();
    // The schedule says 50 ms; the receiver asked for a second.
    assert!(second - first >= 1000, "second attempt came {} ms after the first", second - first);
    gateway.shutdown().await;
}

#[tokio::test]
async fn receiver_that_hangs_past_the_timeout_is_recorded_as_timeout_and_retried() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    receiver.answer_next([Answer::Hang(Duration::from_secs(30))]);
    let toml =
        base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "timeout = \"300ms\"") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;

    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap();
    receiver.next().await;
    receiver.next().await;
    let view = wait_for_state(gateway.addr(), delivery_id, "succeeded").await;
    assert_eq!(view["attempts"][0]["outcome"], "timeout", "{view}");
    assert!(view["attempts"][0]["status"].is_null());
    assert_eq!(view["attempts"][1]["status"], 200);
    gateway.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_retried_then_dead() {
    let redis = RedisServer::start().await;
    let mut alerts = Receiver::start().await;
    // Nothing listens on this port: bind, note the port, close.
    let port = free_port();
    let toml = base_toml(&redis)
        + &format!("\n[alerts]\nurl = \"{}\"\n", alerts.url())
        + &endpoint_toml("gone", &format!("http://127.0.0.1:{port}/hook"), "")
        + &route("\"gone\"");
    let gateway = start_gateway(&toml).await;
    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    let alert = alerts.next().await.json();
    assert_eq!(alert["delivery_id"], accepted["deliveries"][0]["id"]);
    let last_error = alert["last_error"].as_str().unwrap();
    assert!(last_error.to_lowercase().contains("connect"), "{last_error}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let mut alerts = Receiver::start().await;
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let toml = base_toml(&redis).replace("allow_private_destinations = true", "allow_private_destinations = false")
        + &format!("\n[alerts]\nurl = \"{}\"\n", alerts.url())
        + &endpoint_toml("literal", &receiver.url(), "")
        + &endpoint_toml("by-name", &by_name, "")
        + &route("\"literal\", \"by-name\"");
    let gateway = start_gateway(&toml).await;
    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(accepted["deliveries"].as_array().unwrap().len(), 2);
    // alerts.url is the operator's own infrastructure and is not subject to the guard.
    let mut refused = vec![alerts.next().await.json(), alerts.next().await.json()];
    refused.sort_by_key(|a| a["endpoint"].as_str().unwrap().to_string());
    assert_eq!(refused[0]["endpoint"], "by-name");
    assert_eq!(refused[1]["endpoint"], "literal");
    for alert in &refused {
        assert!(alert["last_error"].as_str().unwrap().contains("not public"), "{alert}");
    }
    assert_eq!(receiver.count(), 0, "nothing may reach a private address");
    gateway.shutdown().await;
}

#[tokio::test]
async fn allow_listed_networks_are_reached_and_others_still_refused() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let toml = base_toml(&redis).replace(
        "allow_private_destinations = true",
        "allow_private_destinations = false\nallowed_destinations = [\"127.0.0.0/8\"]",
    ) + &endpoint_toml("literal", &receiver.url(), "")
        + &endpoint_toml("by-name", &by_name, "")
        + &endpoint_toml("ipv6-loopback", "http://[::1]:9/hook", "")
        + &route("\"literal\", \"by-name\", \"ipv6-loopback\"");
    let gateway = start_gateway(&toml).await;
    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let ids: Vec<&str> = accepted["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    receiver.next().await;
    receiver.next().await;
    wait_for_state(gateway.addr(), ids[0], "succeeded").await;
    wait_for_state(gateway.addr(), ids[1], "succeeded").await;
    // ::1 is outside the allow-list: refused before any connection, then dead.
    let dead = wait_for_state(gateway.addr(), ids[2], "dead").await;
    assert!(dead["last_error"].as_str().unwrap().contains("::1 is not public"), "{dead}");
    gateway.shutdown().await;
}

async fn post_with_key(
    gateway: std::net::SocketAddr,
    key: &str,
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let response = client()
        .post(format!("http://{gateway}/v1/events/shop"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_string());
    (status, replayed, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or_default())
}

#[tokio::test]
async fn idempotency_key_repeats_get_the_first_answer_and_enqueue_nothing() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();

    let (status, replayed, first) = post_with_key(addr, "order-12345", r#"{"event":"order_created"}"#).await;
    assert_eq!((status, replayed), (202, None));
    let (status, replayed, again) = post_with_key(addr, "order-12345", r#"{"event":"order_created"}"#).await;
    assert_eq!((status, replayed.as_deref()), (202, Some("true")));
    assert_eq!(again, first, "the repeat gets the first answer");
    let (_, _, other) = post_with_key(addr, "order-67890", r#"{"event":"order_created"}"#).await;
    assert_ne!(other["id"], first["id"]);
    receiver.next().await;
    receiver.next().await;
    assert_eq!(redis.stored_deliveries().await, 2, "two keys, two deliveries");

    // A refused event frees its key; a key still in progress is a conflict; a bad key is refused.
    let (status, _, _) = post_with_key(addr, "retry-me", "{not json").await;
    assert_eq!(status, 400);
    let (status, _, _) = post_with_key(addr, "retry-me", r#"{"event":"x"}"#).await;
    assert_eq!(status, 202);
    let mut conn = redis.connection().await;
    // Keys live in the shard of their events (one shard here), marked with the event in progress.
    let busy = sluice::queue::idempotency_pending(sluice::id::new_event());
    let _: () = redis::cmd("SET").arg("sluice:{s0}:idem:shop:busy").arg(busy).query_async(&mut conn).await.unwrap();
    let (status, _, body) = post_with_key(addr, "busy", r#"{"event":"x"}"#).await;
    assert_eq!(status, 409, "{body}");
    let (status, _, body) = post_with_key(addr, "has space", r#"{"event":"x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    gateway.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_one_or_all_with_the_replay_logged() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Status(500));
    let toml = base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), "") + &route("\"orders\"");
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, accepted) = post_event(addr, "shop", &format!(r#"{{"event":"e","n":{n}}}"#)).await;
        let id = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();
        wait_for_state(addr, &id, "dead").await;
        ids.push(id);
    }
    let (status, page) = admin_get(addr, "/v1/dead-letters?endpoint=orders&limit=2").await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<_> = page["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()], "newest first, two per page");
    assert_eq!(page["dead_letters"][0]["attempts"], 3);
    let before = page["next_before"].as_u64().unwrap();
    let (_, rest) = admin_get(addr, &format!("/v1/dead-letters?endpoint=orders&before={before}")).await;
    assert_eq!(rest["dead_letters"][0]["id"], ids[0].as_str());
    assert_eq!(admin_get(addr, "/v1/dead-letters?limit=0").await.0, 400);

    // The receiver recovers; replay one.
    receiver.answer_always(Answer::Status(200));
    let (status, body) = admin_post(addr, &format!("/v1/deliveries/{}/replay", ids[0])).await;
    assert_eq!(status, 200, "{body}");
    let view = wait_for_state(addr, &ids[0], "succeeded").await;
    let outcomes: Vec<_> =
        view["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["http_error", "http_error", "http_error", "replayed", "success"]);
    assert_eq!(admin_post(addr, &format!("/v1/deliveries/{}/replay", ids[0])).await.0, 409, "no longer dead");

    // Replay everything left for the endpoint.
    let (status, body) = admin_post(addr, "/v1/endpoints/orders/replay-dead").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 2);
    wait_for_state(addr, &ids[1], "succeeded").await;
    wait_for_state(addr, &ids[2], "succeeded").await;
    let (_, empty) = admin_get(addr, "/v1/dead-letters").await;
    assert_eq!(empty["dead_letters"].as_array().unwrap().len(), 0);
    assert_eq!(admin_post(addr, "/v1/endpoints/nope/replay-dead").await.0, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn while_a_secret_is_rotated_out_each_delivery_verifies_with_the_old_secret_and_with_the_new() {
    const NEW: &str = "whsec_c2x1aWNlLXJvdGF0aW9uLXRlc3Qtc2VjcmV0LTAwMDE=";
    let redis = RedisServer::start().await;
    let mut rotating = Receiver::start().await;
    let mut rotated = Receiver::start().await;
    let endpoint = |name: &str, url: String, until: &str| {
        format!(
            "\n[[endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{NEW}\"\n\
             previous_secrets = [{{ secret = \"{SECRET}\", until = \"{until}\" }}]\n"
        )
    };
    let toml = base_toml(&redis)
        + &endpoint("rotating", rotating.url(), "2999-01-01T00:00:00Z")
        + &endpoint("rotated", rotated.url(), "2001-01-01T00:00:00Z")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"rotating\", \"rotated\"]\n";
    let gateway = start_gateway(&toml).await;
    assert_eq!(post_event(gateway.addr(), "shop", r#"{"type":"order_created"}"#).await.0, 202);

    // Before `until`: a receiver still on the old secret verifies it, and so does one on the new.
    let got = rotating.next().await;
    assert_eq!(got.header("webhook-signature").split(' ').count(), 2, "{}", got.header("webhook-signature"));
    assert!(signature_valid_with(&got, SECRET), "verifies with the old secret only");
    assert!(signature_valid_with(&got, NEW), "verifies with the new secret only");
    // Past `until`: the old secret signs nothing any more.
    let got = rotated.next().await;
    assert_eq!(got.header("webhook-signature").split(' ').count(), 1);
    assert!(!signature_valid_with(&got, SECRET));
    assert!(signature_valid_with(&got, NEW));
    gateway.shutdown().await;
}
