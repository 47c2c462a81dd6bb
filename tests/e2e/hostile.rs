//! Hostile clients against the real binary: connections that never finish their headers, bodies
//! that never arrive, more connections than the process has file descriptors.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Raises this process's soft file limit (to open thousands of client sockets), as far as allowed.
fn raise_own_file_limit(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft < wanted {
        let raised = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
        let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(raised), maximum: limit.maximum });
    }
}

/// Lines of a JSON log.
fn log_text(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test]
async fn two_thousand_slow_connections_under_a_low_file_limit_do_not_stop_ingest_or_deliveries() {
    raise_own_file_limit(8192);
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let scratch = Scratch::new("slowloris");
    let port = free_port();
    // 1,500 descriptors: the connection cap is what they leave after deliveries, the store and Redis.
    let toml = base_toml(&redis)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\"\nheader_read_timeout = \"2s\""))
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let config = scratch.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let log = scratch.path().join("sluice.log");
    let args =
        ["--nofile=1500:1500", "--", SLUICE_BIN, "--log-format", "json", "run", "--config", config.to_str().unwrap()];
    let _sluice = SluiceProcess::spawn_program("prlimit", &args, &[], Some(&log));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;

    // 2,000 connections that each send half a request header and then nothing.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        slow.spawn(async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.ok()?.ok()?;
            stream
                .write_all(b"POST /v1/events/shop HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/js")
                .await
                .ok()?;
            Some(stream)
        });
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !log_text(&log).contains("Inbound connection cap reached") {
        assert!(tokio::time::Instant::now() < deadline, "the cap was never reached:\n{}", log_text(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A normal event, sent after them, is accepted and delivered.
    let (status, accepted) = tokio::time::timeout(PATIENCE, post_event(addr, "shop", r#"{"event":"order_created"}"#))
        .await
        .expect("the normal event was answered");
    assert_eq!(status, 202, "{accepted}");
    let got = receiver.next().await;
    assert_eq!(got.header("webhook-id"), accepted["deliveries"][0]["id"].as_str().unwrap());

    // The slow connections are closed by the server after the header timeout. Past the listen
    // backlog the kernel may hold a connection the server never sees (its handshake's last ACK
    // dropped while the accept queue was full): such a connection is not the server's to close,
    // so it is counted apart; most must have been accepted and closed.
    let (mut closed, mut never_seen) = (0, 0);
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    while let Some(outcome) = slow.join_next().await {
        let Some(mut stream) = outcome.unwrap() else { continue };
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("a slow connection got an answer: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => never_seen += 1,
        }
    }
    println!("hostile: {closed} slow connections closed by the server, {never_seen} still open at the deadline");
    assert!(closed >= 1000, "only {closed} slow connections were closed ({never_seen} still open)");
    let text = log_text(&log);
    assert!(!text.contains("Too many open files"), "the process ran out of descriptors:\n{text}");
    let metrics = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    let waits = metrics.lines().find_map(|l| l.strip_prefix("sluice_http_connection_cap_waits_total ")).unwrap();
    assert!(waits.parse::<u64>().unwrap() >= 1, "{waits}");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408_and_nothing_is_stored() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        .replace("max_body_bytes = 65536", "max_body_bytes = 65536\nbody_read_timeout = \"300ms\"")
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let mut stream = TcpStream::connect(gateway.addr()).await.unwrap();
    stream
        .write_all(b"POST /v1/events/shop HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"event\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await.expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_eq!(redis.stored_deliveries().await, 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_source_over_its_rate_limit_gets_429_with_retry_after_and_nothing_is_stored() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let token = "a-source-token-long-enough";
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!("\n[[sources]]\nname = \"shop\"\ntoken = \"{token}\"\nrate_limit = 0.5\n")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, _) = post_event_as(gateway.addr(), "shop", r#"{"event":"first"}"#, Some(token)).await;
    assert_eq!(status, 202);
    // One event every two seconds: the next one now is over the limit.
    let response = client()
        .post(format!("http://{}/v1/events/shop", gateway.addr()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(r#"{"event":"second"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(redis.stored_deliveries().await, 1, "the refused event was not stored");
    // A wrong token is refused as unauthorized, not counted against the source's rate.
    let (status, _) = post_event_as(gateway.addr(), "shop", r#"{"event":"x"}"#, Some("wrong-token-wrong-token")).await;
    assert_eq!(status, 401);
    gateway.shutdown().await;
}
