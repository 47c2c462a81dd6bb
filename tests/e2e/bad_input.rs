//! Bad input gets a clear error and stores nothing: malformed JSON, oversized bodies, unknown
//! sources, wrong content types, bad admin tokens, bad config, and Redis going away.

use crate::harness::*;

async fn simple_gateway(redis: &RedisServer, receiver: &Receiver) -> sluice::Gateway {
    let toml = base_toml(redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    start_gateway(&toml).await
}

async fn queued_deliveries(redis: &RedisServer) -> usize {
    redis.stored_deliveries().await
}

#[tokio::test]
async fn malformed_json_is_400_and_stores_nothing() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    for body in ["{", r#"{"event": }"#, "", "not json", r#"{"a":1} {"b":2}"#] {
        let (status, reply) = post_event(gateway.addr(), "shop", body).await;
        assert_eq!(status, 400, "{body:?}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_json");
        assert!(reply["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    }
    assert_eq!(queued_deliveries(&redis).await, 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_413_whether_declared_or_streamed() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let big = format!(r#"{{"event":"x","pad":"{}"}}"#, "a".repeat(70_000));
    let (status, reply) = post_event(gateway.addr(), "shop", &big).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("65536"));

    // Chunked, with no content-length: the limit still holds while reading.
    let status_line = send_chunked(gateway.addr(), &[&big[..40_000], &big[40_000..]]).await;
    assert!(status_line.contains(" 413 "), "{status_line}");
    assert_eq!(queued_deliveries(&redis).await, 0);
    gateway.shutdown().await;
}

/// Sends a chunked POST over a raw socket and returns the response's status line.
async fn send_chunked(addr: std::net::SocketAddr, chunks: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/events/shop HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        // The server may answer and close before the last chunk; a failed write is fine then.
        let _ = stream.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn unknown_source_is_404_and_unknown_path_is_404() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let (status, reply) = post_event(gateway.addr(), "nowhere", r#"{"event":"x"}"#).await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"]["code"], "unknown_source");
    assert!(reply["error"]["message"].as_str().unwrap().contains("nowhere"));
    let response = client().get(format!("http://{}/nope", gateway.addr())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(queued_deliveries(&redis).await, 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let response = client()
        .post(format!("http://{}/v1/events/shop", gateway.addr()))
        .header("content-type", "text/plain")
        .body(r#"{"event":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    gateway.shutdown().await;
}

#[tokio::test]
async fn admin_api_needs_the_right_bearer_token() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let (_, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    let path = format!("http://{}/v1/deliveries/{}", gateway.addr(), accepted["deliveries"][0]["id"].as_str().unwrap());
    for token in [Some("wrong-token"), Some(""), None] {
        let mut request = client().get(&path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "token {token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let (status, _) = admin_get(gateway.addr(), "/v1/deliveries/dlv_01JDXXXXXXXXXXXXXXXXXXXXXX").await;
    assert_eq!(status, 404);
    let (status, _) = admin_get(gateway.addr(), "/v1/events/not-an-id").await;
    assert_eq!(status, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn repeated_failed_admin_authentications_are_throttled_per_client_address() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let url = format!("http://{}/v1/endpoints", gateway.addr());
    // Two clients on two loopback addresses: the guesser and the admin.
    let from = |ip: &str| reqwest::Client::builder().no_proxy().local_address(ip.parse().ok()).build().unwrap();
    let (guesser, admin) = (from("127.0.0.2"), from("127.0.0.3"));
    for _ in 0..sluice::admin::throttle::MAX_FAILURES {
        let response = guesser.get(&url).bearer_auth("guess-guess-guess").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
    // Past the limit, the guesser's address is refused even with the right token.
    for token in ["guess-guess-guess", ADMIN_TOKEN] {
        let response = guesser.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 429, "token {token}");
        let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "too_many_attempts");
    }
    // Another address is not affected.
    let response = admin.get(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let metrics =
        client().get(format!("http://{}/metrics", gateway.addr())).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "sluice_admin_auth_failures_total 10"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "sluice_admin_auth_throttled_total 2"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn redis_unreachable_at_ingest_is_503_and_nothing_is_accepted() {
    let mut redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let (status, _) = post_event(gateway.addr(), "shop", r#"{"event":"before"}"#).await;
    assert_eq!(status, 202);

    redis.kill();
    let (status, reply) = post_event(gateway.addr(), "shop", r#"{"event":"during"}"#).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"]["code"], "queue_unavailable");
    assert!(reply.get("id").is_none() && reply.get("deliveries").is_none(), "nothing may look accepted: {reply}");
    // The gateway itself is still alive.
    let health = client().get(format!("http://{}/healthz", gateway.addr())).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    gateway.shutdown().await;
}

#[test]
fn unknown_config_keys_are_errors_that_name_the_key() {
    let error = sluice::config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err().to_string();
    assert!(error.contains("lisen"), "{error}");
    let error = sluice::config::from_toml(
        "[[endpoints]]\nname = \"a\"\nurl = \"http://x/\"\nsecret = \"s\"\ntimeuot = \"1s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("timeuot"), "{error}");
}

#[test]
fn validation_reports_every_problem_at_once() {
    let toml = r#"
[queue]
lease = "10s"

[[endpoints]]
name = "a"
url = "ftp://example.com/"
secret = "not-a-secret"
timeout = "30s"

[[endpoints]]
name = "a"
url = "https://example.com/"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
timeout = "1s"
retry_schedule = []

[[routes]]
source = "shop"
plugins = ["missing-plugin"]
endpoints = ["missing-endpoint"]
"#;
    let config = sluice::config::from_toml(toml).unwrap();
    let error = config.validate().unwrap_err().to_string();
    for expected in [
        "endpoints[0] (a).url: scheme must be http or https",
        "endpoints[0] (a).secret: must start with `whsec_`",
        "endpoints[0] (a).timeout: 30s plus a 5s margin exceeds queue.lease",
        "endpoints[1].name: `a` is used twice",
        "endpoints[1] (a).retry_schedule: must have at least one entry",
        "routes[0] (shop).plugins: unknown plugin `missing-plugin`",
        "routes[0] (shop).endpoints: unknown endpoint `missing-endpoint`",
    ] {
        assert!(error.contains(expected), "missing {expected:?} in:\n{error}");
    }
}

#[test]
fn bad_durations_are_errors_that_name_the_value() {
    let error = sluice::config::from_toml("[retry]\nschedule = [\"5 fortnights\"]\n").unwrap_err().to_string();
    assert!(error.contains("5 fortnights"), "{error}");
}

#[tokio::test]
async fn risky_redis_settings_are_reported() {
    let redis = RedisServer::start().await;
    let config = sluice::config::from_toml(&base_toml(&redis)).unwrap();
    let sluice::queue::Store::Redis(queue) = sluice::queue::Store::open(&config).unwrap() else {
        panic!("a [redis] section selects the redis backend")
    };
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let risks = queue.risky_settings().await;
    assert!(risks.iter().any(|r| r.contains("appendonly is off")), "{risks:?}");
    assert!(risks.iter().any(|r| r.contains("maxmemory-policy is allkeys-lru")), "{risks:?}");

    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendonly").arg("yes").query_async(&mut conn).await.unwrap();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query_async(&mut conn).await.unwrap();
    let risks = queue.risky_settings().await;
    assert!(risks.iter().any(|r| r.contains("appendfsync is everysec") && r.contains("host crash")), "{risks:?}");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("appendfsync").arg("always").query_async(&mut conn).await.unwrap();
    assert!(queue.risky_settings().await.is_empty());
}

#[tokio::test]
async fn redis_start_up_checks_run_when_redis_first_becomes_reachable() {
    let scratch = Scratch::new("late-redis");
    let data = scratch.path().join("redis");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    // This Redis holds a queue of another layout (4 shards); it is down when the gateway starts.
    let mut redis = RedisServer::start_persistent(port, &data).await;
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("HSET").arg("sluice:meta").arg("shards").arg(4).query_async(&mut conn).await.unwrap();
    redis.kill();
    let receiver = Receiver::start().await;
    let gateway_port = free_port();
    let config = scratch.path().join("sluice.toml");
    let toml = base_toml(&redis).replace("127.0.0.1:0", &format!("127.0.0.1:{gateway_port}"))
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    std::fs::write(&config, toml).unwrap();
    let log = scratch.path().join("sluice.log");
    let mut sluice = SluiceProcess::spawn(&["run", "--config", config.to_str().unwrap()], &[], Some(&log));
    wait_listening(format!("127.0.0.1:{gateway_port}").parse().unwrap()).await;

    // Redis comes up with its data: the layout check runs then, and the gateway stops, non-zero.
    let _redis = RedisServer::start_persistent(port, &data).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = sluice.0.try_wait().unwrap() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway kept running on a foreign layout");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Redis is not reachable at start-up"), "{text}");
    assert!(text.contains("Redis cannot hold this queue") && text.contains("queue.shards = 4"), "{text}");
}

#[tokio::test]
async fn gateway_recovers_by_itself_when_redis_comes_back_empty() {
    let mut redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = simple_gateway(&redis, &receiver).await;
    let (status, _) = post_event(gateway.addr(), "shop", r#"{"event":"before"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(receiver.next().await.json()["event"], "before");

    redis.kill();
    let (status, _) = post_event(gateway.addr(), "shop", r#"{"event":"during"}"#).await;
    assert_eq!(status, 503);

    // Redis returns on the same port, without its data (no persistence), and the gateway is not restarted.
    let _redis = RedisServer::start_on(redis.port).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let accepted = loop {
        let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"after"}"#).await;
        if status == 202 {
            break accepted;
        }
        assert_eq!(status, 503, "{accepted}");
        assert!(tokio::time::Instant::now() < deadline, "ingest never recovered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(receiver.next().await.json()["event"], "after", "the worker resumed delivering");
    wait_for_state(gateway.addr(), accepted["deliveries"][0]["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(receiver.count(), 2, "the refused event was never delivered");
    gateway.shutdown().await;
}

/// A Redis without a command the queue's scripts run (`ZMSCORE`, Redis 6.2; here renamed away, as
/// an older server lacks it) is refused at start-up with an error that says what to run instead.
#[tokio::test]
async fn a_redis_older_than_the_queue_needs_is_refused_at_start_up() {
    let dir = Scratch::new("old-redis");
    let args = ["--save", "", "--appendonly", "no", "--dir", dir.path().to_str().unwrap()];
    let redis = RedisServer::start_with(free_port(), &[&args[..], &["--rename-command", "ZMSCORE", ""]].concat()).await;
    let config = sluice::config::from_toml(&base_toml(&redis)).expect("test config parses");
    let Err(e) = sluice::Gateway::start(config).await else { panic!("a gateway started on a Redis without ZMSCORE") };
    let said = e.to_string();
    assert!(said.contains("ZMSCORE") && said.contains("Redis 6.2 or newer"), "{said}");
}
