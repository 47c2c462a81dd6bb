//! Several gateways on one Redis: every delivery is made, none twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_deliver_every_event_exactly_once() {
    const EVENTS: usize = 1000;
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let first = start_gateway(&toml).await;
    let second = start_gateway(&toml).await;
    let addrs = [first.addr(), second.addr()];

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

    // Wait until the queue has settled everything: every shard's due set is empty.
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut pending = 0usize;
        for shard in 0..4 {
            let n: usize =
                redis::cmd("ZCARD").arg(format!("sluice:{{s{shard}}}:due")).query_async(&mut conn).await.unwrap();
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
    for id in &expected {
        assert_eq!(seen.get(id), Some(&1), "{id} was not delivered");
    }
    assert_eq!(receiver.count(), EVENTS);
    first.shutdown().await;
    second.shutdown().await;
}
