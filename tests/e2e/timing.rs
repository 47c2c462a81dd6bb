//! Unlucky timing against a real Redis: replies lost after Redis ran the command, and replies that
//! arrive so late a lease is nearly spent. `CLIENT PAUSE <ms> WRITE` holds every write (and every
//! script) sent meanwhile and runs them when it ends: with the gateway's Redis timeout shorter than
//! the pause, the gateway gives up on a call that Redis then applies (a lost reply); longer, the
//! reply just comes late.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Holds Redis' writes for `ms` milliseconds (reads still answer).
async fn pause_writes(redis: &RedisServer, ms: u64) {
    let mut conn = redis.connection().await;
    let _: () = ::redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE").query_async(&mut conn).await.unwrap();
}

/// Polls a delivery until `done` holds for it, and returns it.
async fn wait_for_delivery(gateway: std::net::SocketAddr, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, view) = admin_get(gateway, &format!("/v1/deliveries/{id}")).await;
        if status == 200 && done(&view) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery {id} never got there: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_claim_whose_reply_is_lost_spends_no_attempt() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Status(500));
    // Two attempts, the first 2 s after ingest; Redis calls time out after 500 ms (base_toml).
    let toml = base_toml(&redis)
        + "\n[queue]\nlease = \"7s\"\n"
        + &endpoint_toml("orders", &receiver.url(), "timeout = \"1s\"\nretry_schedule = [\"2s\", \"1s\"]")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deliveries"][0]["id"].as_str().unwrap().to_string();

    // The delivery falls due during the pause: the worker's claims time out, and the first of them
    // claims it when the pause ends, its reply long given up on. Its lease must run out (7 s) before
    // the delivery is attempted, both attempts still ahead of it.
    pause_writes(&redis, 4000).await;
    let dead = wait_for_delivery(gateway.addr(), &id, |v| v["state"] == "dead").await;
    assert_eq!(dead["lapsed_leases"], 1, "the lost claim's lease lapsed: {dead}");
    assert_eq!(dead["attempts_made"], 2, "both attempts were made, none spent by the lost claim: {dead}");
    let statuses: Vec<&Value> = dead["attempts"].as_array().unwrap().iter().map(|a| &a["status"]).collect();
    assert_eq!(statuses, [500, 500], "{dead}");
    assert_eq!(receiver.count(), 2, "the receiver saw both attempts");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_enqueue_whose_reply_is_lost_answers_the_retry_with_the_original_answer_and_stores_once() {
    let Some(chaos) = plugin_file("rust-chaos") else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    // The plugin stalls for 1.5 s between the idempotency key's claim and the enqueue.
    let toml = base_toml(&redis)
        + &format!("\n[wasm]\ncache_dir = \"{}\"\n", shared_wasm_cache().display())
        + &format!(
            "\n[[plugins]]\nname = \"stall\"\npath = \"{}\"\nconfig = {{ mode = \"stall\", ms = 1500 }}\ndeadline = \"5s\"\ngrant_clock = true\n",
            chaos.display()
        )
        // The pause also loses a claim's reply: that lease must lapse soon for the delivery to go.
        + "\n[queue]\nlease = \"7s\"\n"
        + &endpoint_toml("orders", &receiver.url(), "timeout = \"1s\"")
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"stall\"]\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let post = |gateway: std::net::SocketAddr, key: &'static str| async move {
        let response = client()
            .post(format!("http://{gateway}/v1/events/shop"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(r#"{"type":"order.created"}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        (status, replayed, serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
    };
    let addr = gateway.addr();
    // One event first, so Redis knows the enqueue script: a paused call of a script Redis does not
    // know yet fails (NOSCRIPT) after the pause instead of running, which is the other, also safe,
    // outcome (nothing stored, the key released, the retry processed afresh).
    assert_eq!(post(addr, "warm-up").await.0, 202);
    let mut conn = redis.connection().await;
    let _: () = ::redis::cmd("DEL").arg("sluice:{s0}:idem:shop:warm-up").query_async(&mut conn).await.unwrap();
    let first = tokio::spawn(post(addr, "order-1"));

    // Once the key is claimed (the plugin is stalling), hold writes past the enqueue's timeout: the
    // gateway gives up on the enqueue, and Redis runs it when the pause ends.
    let deadline = tokio::time::Instant::now() + COMPILE_PATIENCE;
    loop {
        let keys: Vec<String> = ::redis::cmd("KEYS").arg("sluice:*idem:*").query_async(&mut conn).await.unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the idempotency key was never claimed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pause_writes(&redis, 3000).await;
    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, 503, "the producer is told the store did not answer: {body}");

    // The producer retries: while Redis is paused it hears 503, while the outcome is being settled
    // 409, then the answer the stored event got; the event is stored once and delivered once.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (status, replayed, answer) = loop {
        let (status, replayed, body) = post(addr, "order-1").await;
        if status != 409 && status != 503 {
            break (status, replayed, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "the retry kept hearing {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, replayed), (202, true), "the retry repeats the stored answer: {answer}");
    // One record per stored event.
    assert_eq!(redis.count_keys(EVENT_KEYS).await, 2, "the warm-up and one event stored, not two");
    let id = answer["deliveries"][0]["id"].as_str().unwrap();
    wait_for_state(addr, id, "succeeded").await;
    let delivered = [receiver.next().await, receiver.next().await];
    assert!(delivered.iter().any(|d| d.header("webhook-id") == id));
    assert_eq!(receiver.count(), 2, "the warm-up and the event, each delivered once");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_claim_answered_too_late_for_the_attempt_to_fit_its_lease_is_given_back_unattempted() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    // First attempt fails; the retry's answer takes 0.9 s, within the 1 s timeout.
    receiver.answer_next([Answer::Status(500), Answer::Hang(Duration::from_millis(900))]);
    // Redis calls may take 10 s here: a claim held by the pause is answered late, not lost.
    let toml = base_toml(&redis).replace("timeout = \"500ms\"", "timeout = \"10s\"")
        + "\n[queue]\nlease = \"7s\"\n"
        + &endpoint_toml("orders", &receiver.url(), "timeout = \"1s\"\nretry_schedule = [\"0s\", \"3s\"]")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deliveries"][0]["id"].as_str().unwrap().to_string();
    wait_for_delivery(gateway.addr(), &id, |v| v["attempts_made"] == 1).await;

    // The retry falls due during the pause; the claim that takes it is answered up to 6.5 s after
    // it was sent. The worker counts its lease from before the call (it cannot know when Redis ran
    // it), so it sees 0.5-1.5 s of a 7 s lease left: less than the attempt's 1 s timeout plus 1 s to
    // settle. It gives the delivery back unattempted; claimed afresh, it is sent once.
    pause_writes(&redis, 6500).await;
    let done = wait_for_delivery(gateway.addr(), &id, |v| v["state"] == "succeeded").await;
    assert_eq!(done["attempts_made"], 2, "{done}");
    assert_eq!(done["lapsed_leases"], 0, "no lease ran out: {done}");
    assert_eq!(receiver.count(), 2, "the retry was sent once");
    let metrics =
        client().get(format!("http://{}/metrics", gateway.addr())).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "sluice_deliveries_put_back_total{reason=\"lease_budget\"} 1"),
        "the late claim was given back for its lease budget, once:\n{metrics}"
    );
    gateway.shutdown().await;
}
