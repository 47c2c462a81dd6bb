//! Several gateways on one Redis: every delivery is made, none twice — in one test process, and as
//! separate `sluice` processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::*;

const EVENTS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_deliver_every_event_exactly_once() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = config_toml(&redis, &receiver);
    let first = start_gateway(&toml).await;
    let second = start_gateway(&toml).await;
    let addrs = [first.addr(), second.addr()];

    let expected = produce(addrs).await;
    assert_each_delivered_once(&redis, &receiver, &expected).await;
    first.shutdown().await;
    second.shutdown().await;
}

/// The gateways' shared config: one endpoint at `receiver`, routed from `shop`.
fn config_toml(redis: &RedisServer, receiver: &Receiver) -> String {
    base_toml(redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n"
}

/// Posts EVENTS events, alternating between the two gateways, from 8 producers; returns the
/// delivery ids.
async fn produce(addrs: [SocketAddr; 2]) -> Vec<String> {
    let mut expected = Vec::with_capacity(EVENTS);
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..8 {
        producers.spawn(async move {
            let mut ids = Vec::new();
            for i in (producer..EVENTS).step_by(8) {
                let (status, accepted) = post_event(addrs[i % 2], "shop", &format!(r#"{{"event":"e","n":{i}}}"#)).await;
                assert_eq!(status, 202, "{accepted}");
                ids.push(accepted["deliveries"][0]["id"].as_str().unwrap().to_string());
            }
            ids
        });
    }
    while let Some(ids) = producers.join_next().await {
        expected.extend(ids.unwrap());
    }
    assert_eq!(expected.len(), EVENTS);
    expected
}

/// Waits until the queue is empty, then checks that each delivery reached the receiver exactly once.
async fn assert_each_delivered_once(redis: &RedisServer, receiver: &Receiver, expected: &[String]) {
    // Wait until the queue has settled everything: every shard's due set is empty.
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut pending = 0usize;
        for shard in 0..4 {
            let n: usize =
                redis::cmd("ZCARD").arg(format!("sluice:{{s{shard}}}:queue")).query_async(&mut conn).await.unwrap();
            pending += n;
        }
        if pending == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pending} deliveries still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    for request in receiver.all() {
        *seen.entry(request.header("webhook-id").to_string()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for id in expected {
        assert_eq!(seen.get(id), Some(&1), "{id} was not delivered");
    }
    assert_eq!(receiver.count(), EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sluice_processes_on_one_redis_share_the_work_and_deliver_each_event_once() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let dir = Scratch::new("scale-processes");
    let config = dir.path().join("sluice.toml");
    let toml = config_toml(&redis, &receiver);
    std::fs::write(&config, toml).unwrap();
    let mut processes = Vec::new();
    let mut addrs = Vec::new();
    for name in ["first", "second"] {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        // Each delivery's own line (DEBUG) names the process that made it.
        let env =
            [("SLUICE_SERVER__LISTEN", addr.to_string()), ("RUST_LOG", "info,sluice::delivery=debug".to_string())];
        processes.push(SluiceProcess::spawn(&["run", "--config", config.to_str().unwrap()], &env, Some(&log)));
        wait_listening(addr).await;
        addrs.push(addr);
    }
    let expected = produce([addrs[0], addrs[1]]).await;
    assert_each_delivered_once(&redis, &receiver, &expected).await;
    // Both processes' workers took part.
    drop(processes);
    for name in ["first", "second"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        let delivered = log.lines().filter(|l| l.contains("Delivery succeeded")).count();
        println!("scale: the {name} process delivered {delivered} of {EVENTS}");
        assert!(delivered > 0, "the {name} process delivered nothing:\n{log}");
    }
}

#[tokio::test]
async fn a_gateway_on_an_older_config_parks_deliveries_for_an_endpoint_it_lacks_until_one_that_has_it_resumes_them() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    // The new config has endpoint `b`; its first attempt waits a second.
    let new_config = base_toml(&redis)
        + &endpoint_toml("b", &receiver.url(), "retry_schedule = [\"1s\", \"50ms\"]")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"b\"]\n";
    let new = start_gateway(&new_config).await;
    let (status, accepted) = post_event(new.addr(), "shop", r#"{"event":"order_created"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let delivery = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();
    new.shutdown().await;

    // A gateway still on the old config (no `b`) claims it when due and parks it untouched.
    let old_config = base_toml(&redis)
        + &endpoint_toml("a", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"a\"]\n";
    let old = start_gateway(&old_config).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let view = loop {
        let (_, view) = admin_get(old.addr(), &format!("/v1/deliveries/{delivery}")).await;
        // `updated_at` is set when a claim is settled: the old gateway has had it in hand.
        if !view["updated_at"].is_null() {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "the old gateway never claimed {delivery}: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(view["state"], "paused", "{view}");
    assert_eq!(view["attempts_made"], 0, "no attempt was spent: {view}");
    assert_eq!(receiver.count(), 0);
    let (_, listing) = admin_get(old.addr(), "/v1/endpoints").await;
    let b = listing["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == "b").cloned();
    assert_eq!(
        b.as_ref().map(|b| (&b["state"], &b["paused_deliveries"])),
        Some((&"removed".into(), &1.into())),
        "{listing}"
    );
    old.shutdown().await;

    // A gateway with the new config puts it back and delivers it on its first attempt.
    let again = start_gateway(&new_config).await;
    let done = wait_for_state(again.addr(), &delivery, "succeeded").await;
    assert_eq!(done["attempts_made"], 1, "{done}");
    receiver.next().await;
    again.shutdown().await;
}
