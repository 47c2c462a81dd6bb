//! The README's bad-input table, one test per row. Each ingest row checks the status, the error code
//! and that the message names the cause, that nothing was stored, and that the gateway still takes
//! and delivers a good event afterwards. Each config row checks that `sluice check` fails naming the
//! cause. Each runtime row checks that the attempt log names the cause, the delivery is kept (retried,
//! then dead-lettered, never dropped), and a good endpoint is still served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const TOKEN: &str = "producer-token-0123456789";

/// One ingest request.
struct Request {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// A POST to `/v1/events/shop` with the right token and a JSON content type.
    fn event(body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST",
            path: "/v1/events/shop",
            headers: vec![
                ("authorization", format!("Bearer {TOKEN}").into_bytes()),
                ("content-type", b"application/json".to_vec()),
            ],
            body: body.into(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    fn without(mut self, name: &'static str) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn to(mut self, method: &'static str, path: &'static str) -> Self {
        self.method = method;
        self.path = path;
        self
    }
}

async fn stored(redis: &RedisServer) -> usize {
    redis.count_keys(EVENT_KEYS).await + redis.stored_deliveries().await
}

/// Sends `request` to a gateway whose `shop` source needs a bearer token and whose `github` source
/// verifies GitHub signatures; checks the answer, that nothing was stored, and that a good event
/// still goes through.
async fn ingest_case(request: Request, status: u16, code: &str, says: &str) {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis).replace("allow_unauthenticated_sources = true", "")
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[sources]]\nname = \"shop\"\ntoken = \"{TOKEN}\"\n[[sources]]\nname = \"github\"\nverify = \"github\"\n\
             secret = \"github-secret\"\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n\
             [[routes]]\nsource = \"github\"\nendpoints = [\"orders\"]\n"
        );
    let gateway = start_gateway(&toml).await;
    let mut builder = client()
        .request(request.method.parse().unwrap(), format!("http://{}{}", gateway.addr(), request.path))
        .body(request.body);
    for (name, value) in request.headers {
        builder = builder.header(name, reqwest::header::HeaderValue::from_bytes(&value).unwrap());
    }
    let response = builder.send().await.unwrap();
    let got = response.status().as_u16();
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or_default();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "expected `{says}` in `{message}`");
    assert_eq!(stored(&redis).await, 0, "a refused request stored something");

    // Alive, and nothing is lost: the next good event is delivered.
    let good = client()
        .post(format!("http://{}/v1/events/shop", gateway.addr()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"event":"after","n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status().as_u16(), 202);
    assert_eq!(receiver.next().await.json()["event"], "after");
    gateway.shutdown().await;
}

macro_rules! ingest_rows {
    ($($name:ident: $request:expr => $status:literal $code:literal $says:literal;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                ingest_case($request, $status, $code, $says).await;
            }
        )*
    };
}

/// `n` extra headers `x-h0` … on a good event.
fn with_headers(n: usize) -> Request {
    let mut request = Request::event("{}");
    for i in 0..n {
        request.headers.push((Box::leak(format!("x-h{i}").into_boxed_str()), b"1".to_vec()));
    }
    request
}

fn deep(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

ingest_rows! {
    ingest_truncated_json: Request::event("{\"event\":") => 400 "invalid_json" "EOF while parsing";
    ingest_trailing_data: Request::event(r#"{"a":1} {"b":2}"#) => 400 "invalid_json" "trailing characters";
    ingest_not_json: Request::event("event=order_created") => 400 "invalid_json" "expected value";
    ingest_empty_body: Request::event("") => 400 "invalid_json" "EOF while parsing";
    ingest_invalid_utf8_in_body: Request::event(b"{\"event\":\"x\",\"note\":\"caf\xe9\"}".to_vec()) => 400 "invalid_json" "not UTF-8";
    ingest_deep_nesting: Request::event(deep(20_000)) => 400 "invalid_json" "nest deeper than 128";
    ingest_body_over_the_limit: Request::event(format!(r#"{{"pad":"{}"}}"#, "a".repeat(70_000))) => 413 "payload_too_large" "65536 bytes";
    ingest_wrong_content_type: Request::event("{}").header("content-type", "text/plain") => 415 "unsupported_media_type" "text/plain";
    ingest_invalid_utf8_in_event_type_header: Request::event("{}").header("x-event-type", b"caf\xe9".to_vec()) => 400 "invalid_header" "x-event-type";
    ingest_unknown_source: Request::event("{}").to("POST", "/v1/events/nope") => 404 "unknown_source" "nope";
    ingest_unknown_path: Request::event("{}").to("POST", "/v2/anything") => 404 "not_found" "no such route";
    ingest_wrong_method: Request::event("{}").to("PUT", "/v1/events/shop") => 405 "method_not_allowed" "method not allowed";
    ingest_missing_token: Request::event("{}").without("authorization") => 401 "unauthorized" "missing `Authorization: Bearer";
    ingest_wrong_token: Request::event("{}").header("authorization", "Bearer not-the-token") => 401 "unauthorized" "wrong bearer token";
    ingest_bad_github_signature: Request::event("{}").to("POST", "/v1/events/github").header("x-hub-signature-256", "sha256=00") => 401 "unauthorized" "does not match";
    ingest_too_many_headers: with_headers(70) => 431 "headers_too_large" "at most 64 headers";
    ingest_oversized_header: Request::event("{}").header("x-note", "n".repeat(20_000)) => 431 "headers_too_large" "16384 bytes";
    ingest_overlong_idempotency_key: Request::event("{}").header("idempotency-key", "k".repeat(300)) => 400 "invalid_idempotency_key" "1 to 255";
}

/// Runs `sluice check` on `toml` (written next to a file that is not Wasm) and checks that it fails
/// with `says` on stderr.
fn config_case(toml: &str, says: &str) {
    static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let case = CASE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("sluice-config-case-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("not-wasm.wasm"), "this is text").unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let output =
        std::process::Command::new(SLUICE_BIN).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "check accepted:\n{toml}");
    assert!(stderr.contains(says), "expected `{says}` in:\n{stderr}");
}

/// A valid config to break one piece of.
fn valid_config() -> String {
    format!(
        "[security]\nallow_unauthenticated_sources = true\n{}\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n",
        endpoint_toml("orders", "https://example.com/hook", "")
    )
}

macro_rules! config_rows {
    ($($name:ident: $toml:expr => $says:literal;)*) => {
        $(
            #[test]
            fn $name() {
                config_case(&$toml, $says);
            }
        )*
    };
}

config_rows! {
    config_typo_in_a_key: valid_config().replace("[security]", "[security]\nallow_privat_destinations = true") => "allow_privat_destinations";
    config_unknown_section: valid_config() + "\n[sever]\nlisten = \"127.0.0.1:1\"\n" => "sever";
    config_bad_url: valid_config().replace("https://example.com/hook", "ftp://example.com/hook") => "endpoints[0] (orders).url: scheme must be http or https";
    config_unparsable_url: valid_config().replace("https://example.com/hook", "http//no-scheme") => "relative URL without a base";
    config_bad_duration: valid_config().replace("[security]", "[queue]\nlease = \"5 parsecs\"\n[security]") => "5 parsecs";
    config_missing_plugin_file: valid_config() + "\n[[plugins]]\nname = \"ghost\"\npath = \"ghost.wasm\"\n" => "plugin `ghost` failed to load: cannot read";
    config_plugin_not_a_component: valid_config() + "\n[[plugins]]\nname = \"text\"\npath = \"not-wasm.wasm\"\n" => "neither a Wasm component nor a valid core module";
    config_duplicate_endpoint_names: valid_config() + &endpoint_toml("orders", "https://example.org/", "") => "endpoints[1].name: `orders` is used twice";
    config_route_to_unknown_endpoint: valid_config().replace("endpoints = [\"orders\"]", "endpoints = [\"ordrs\"]") => "unknown endpoint `ordrs`";
    config_bad_secret: valid_config().replace("whsec_", "") => "must start with `whsec_`";
    config_lease_shorter_than_timeout: valid_config().replace("[security]", "[queue]\nlease = \"20s\"\n[security]") => "exceeds queue.lease";
    config_source_without_credentials: valid_config().replace("allow_unauthenticated_sources = true", "") => "source `shop` has no [[sources]] entry";
    config_bad_cidr: valid_config().replace("[security]", "[security]\nallowed_destinations = [\"10.0.0.0/33\"]") => "allowed_destinations";
    config_unknown_queue_backend: valid_config().replace("[security]", "[queue]\nbackend = \"postgres\"\n[security]") => "postgres";
    config_shards_on_the_embedded_backend: valid_config().replace("[security]", "[queue]\nshards = 4\n[security]") => "queue.shards: applies to the redis backend only";
    config_store_path_is_a_directory: valid_config().replace("[security]", "[queue]\npath = \"/tmp\"\n[security]") => "queue.path: must name a file";
    config_dead_retention_too_short: valid_config().replace("[security]", "[queue]\ndead_retention = \"500ms\"\n[security]") => "queue.dead_retention: must be at least 1s";
}

/// A loopback TCP server that treats every connection with `serve` (a misbehaving receiver).
async fn raw_receiver<F, Fut>(serve: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    format!("http://{addr}/hook")
}

/// Reads a request head (and whatever body came with it) so the sender is done writing.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Delivers one event to `url` (endpoint timeout 500 ms, 2 attempts), waits until the delivery is
/// `state`, and checks that the last attempt's error (or response) contains `says`; then checks that
/// the gateway still delivers to a good endpoint.
async fn runtime_case(url: &str, state: &str, says: &str) -> serde_json::Value {
    let redis = RedisServer::start().await;
    let mut good = Receiver::start().await;
    let toml = base_toml(&redis).replace("[\"0s\", \"50ms\", \"50ms\"]", "[\"0s\", \"50ms\"]")
        + &endpoint_toml("bad", url, "timeout = \"500ms\"")
        + &endpoint_toml("good", &good.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"bad\"]\n[[routes]]\nsource = \"ok\"\nendpoints = [\"good\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let view = wait_for_state(gateway.addr(), accepted["deliveries"][0]["id"].as_str().unwrap(), state).await;
    let last = view["attempts"].as_array().unwrap().last().unwrap().clone();
    let text =
        format!("{} {}", last["error"].as_str().unwrap_or_default(), last["response"].as_str().unwrap_or_default());
    assert!(text.contains(says), "expected `{says}` in the attempt log: {view}");
    let (status, _) = post_event(gateway.addr(), "ok", r#"{"event":"after"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(good.next().await.json()["event"], "after");
    gateway.shutdown().await;
    view
}

#[tokio::test]
async fn runtime_receiver_slowloris() {
    // Answers one byte of the status line every 100 ms: the attempt's timeout covers the whole answer.
    let url = raw_receiver(|mut stream| async move {
        read_request(&mut stream).await;
        for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let view = runtime_case(&url, "dead", "timed out after 500ms").await;
    assert_eq!(view["attempts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn runtime_receiver_sends_a_100_mb_reply() {
    // 2xx with a 100 MB body: the gateway reads 1 KiB of it, records success, and moves on.
    let url = raw_receiver(|mut stream| async move {
        read_request(&mut stream).await;
        let size = 100 * 1024 * 1024;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if stream.write_all(&chunk).await.is_err() {
                return; // The gateway hung up after the first KiB, as it should.
            }
        }
    })
    .await;
    let view = runtime_case(&url, "succeeded", "xxxx").await;
    let response = view["attempts"][0]["response"].as_str().unwrap();
    assert_eq!(response.len(), 1024, "only the first KiB of the answer is kept");
}

#[tokio::test]
async fn runtime_receiver_closes_mid_response() {
    let url = raw_receiver(|mut stream| async move {
        read_request(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 O").await;
        // Dropping the stream closes the connection halfway through the status line.
    })
    .await;
    runtime_case(&url, "dead", "connection closed before message completed").await;
}

#[tokio::test]
async fn runtime_dns_failure() {
    // A label longer than DNS allows (63 bytes) fails in the local resolver, before any packet is sent.
    let host = format!("{}.invalid", "a".repeat(70));
    runtime_case(&format!("http://{host}/hook"), "dead", "failed to lookup address").await;
}

#[tokio::test]
async fn runtime_tls_failure() {
    // https:// to a server that speaks plain HTTP: the TLS handshake fails.
    let plain = Receiver::start().await;
    let url = plain.url().replace("http://", "https://");
    runtime_case(&url, "dead", "TLS handshake with 127.0.0.1 failed").await;
}

/// An event whose plugin misbehaves (`mode` of the chaos plugin): 422 naming the plugin and the
/// kind, nothing stored, and the next event through the same plugin is delivered.
async fn plugin_case(mode: &str, limits: &str, kind: &str, says: &str) {
    let Some(chaos) = plugin_file("rust-chaos") else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"chaos\"\npath = \"{}\"\nconfig = {{ mode = \"{mode}\", when_type = \"bad\" }}\n{limits}\n\
             [[routes]]\nsource = \"shop\"\nplugins = [\"chaos\"]\nendpoints = [\"orders\"]\n",
            chaos.display()
        );
    let gateway = start_gateway(&toml).await;
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"type":"bad"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        (body["error"]["plugin"].as_str(), body["error"]["kind"].as_str()),
        (Some("chaos"), Some(kind)),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains(says), "expected `{says}` in {body}");
    assert_eq!(stored(&redis).await, 0);
    let (status, _) = post_event(gateway.addr(), "shop", r#"{"type":"good"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(receiver.next().await.json()["type"], "good");
    gateway.shutdown().await;
}

#[tokio::test]
async fn plugin_traps() {
    plugin_case("trap", "", "trap", "unreachable").await;
}

#[tokio::test]
async fn plugin_loops_forever() {
    plugin_case("loop", "deadline = \"50ms\"", "timeout", "deadline").await;
}

#[tokio::test]
async fn plugin_eats_memory() {
    plugin_case("membomb", "max_memory_mb = 16", "memory", "16 MiB").await;
}
