//! Redis memory per delivery: what a pending delivery and a finished one cost, measured with
//! `INFO memory` on a Redis of the test's own while 5,000 events wait, and after 5,000 more were
//! delivered. Printed (`--nocapture`), and held to a bound so a layout change that bloats the
//! records fails here. What the event itself carries (its body and the headers kept with it) is
//! stored once per event and counted apart: the bound is on what the queue adds to it.

use std::time::Duration;

use crate::harness::*;

/// Redis' `used_memory`.
async fn used_memory(redis: &RedisServer) -> u64 {
    let mut conn = redis.connection().await;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

/// The bytes (names and values) of the headers kept with `event`, as the admin API shows them.
async fn kept_header_bytes(gateway: std::net::SocketAddr, event: &str) -> usize {
    let (status, shown) = admin_get(gateway, &format!("/v1/events/{event}")).await;
    assert_eq!(status, 200, "{shown}");
    shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair.as_array().unwrap().iter().map(|part| part.as_str().unwrap().len()).sum::<usize>())
        .sum()
}

const EVENTS: usize = 5_000;
/// The body every event carries (stored once per event).
const BODY: &str = r#"{"type":"order.created","order_id":12345,"customer":"c_0042","total_cents":4999}"#;
/// Most bytes a pending delivery may cost beyond its event's body and kept headers (issue 12). The
/// layout before the event record (event hash, headers+body string, delivery hash, due entry)
/// measured about 730.
const PENDING_OVERHEAD: f64 = 300.0;

async fn post_all(gateway: std::net::SocketAddr, source: &str) {
    let http = client();
    let posts = (0..EVENTS).map(|_| {
        let http = http.clone();
        let url = format!("http://{gateway}/v1/events/{source}");
        async move {
            let response = http.post(url).header("content-type", "application/json").body(BODY).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 202);
        }
    });
    // 256 at a time: this test measures memory, not a connection storm (5,000 connects at once on a
    // loaded 2-core machine overflowed the listen backlog until a client's SYN retries ran out).
    use futures_util::StreamExt;
    futures_util::stream::iter(posts).buffer_unordered(256).collect::<Vec<()>>().await;
}

#[tokio::test]
async fn pending_and_finished_deliveries_cost_a_bounded_amount_of_redis_memory() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    // `later`: the first attempt is an hour away, so its deliveries stay pending while measured.
    let toml = base_toml(&redis)
        + &endpoint_toml("later", &receiver.url(), "retry_schedule = [\"1h\"]")
        + &endpoint_toml("now", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"slow\"\nendpoints = [\"later\"]\n"
        + "\n[[routes]]\nsource = \"fast\"\nendpoints = [\"now\"]\n";
    let gateway = start_gateway(&toml).await;
    // One event of each first, so scripts and connections are in place before the baseline.
    let (status, first) = post_event(gateway.addr(), "slow", BODY).await;
    assert_eq!(status, 202);
    assert_eq!(post_event(gateway.addr(), "fast", BODY).await.0, 202);
    let mut conn = redis.connection().await;
    let due = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move { redis::cmd("ZCARD").arg("sluice:{s0}:queue").query_async::<usize>(&mut conn).await.unwrap() }
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while due(&mut conn).await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the first fast event never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = used_memory(&redis).await;
    post_all(gateway.addr(), "slow").await;
    let pending = (used_memory(&redis).await - before) as f64 / EVENTS as f64;

    let before = used_memory(&redis).await;
    post_all(gateway.addr(), "fast").await;
    // Finished: acked and out of the due set (only the pending ones are left in it).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while due(&mut conn).await != EVENTS + 1 {
        assert!(tokio::time::Instant::now() < deadline, "the fast deliveries never all settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = (used_memory(&redis).await - before) as f64 / EVENTS as f64;
    let headers = kept_header_bytes(gateway.addr(), first["id"].as_str().unwrap()).await;
    let carried = (BODY.len() + headers) as f64;
    println!(
        "memory: {pending:.0} bytes per pending delivery ({} of body and {:.0} of kept headers, {:.0} beyond them); \
         {finished:.0} bytes per finished delivery (kept for queue.retention with its attempt log)",
        BODY.len(),
        carried - BODY.len() as f64,
        pending - carried
    );
    assert!(
        pending - carried <= PENDING_OVERHEAD,
        "a pending delivery costs {pending:.0} bytes, more than its event's {carried} bytes plus {PENDING_OVERHEAD}"
    );
    gateway.shutdown().await;
}
