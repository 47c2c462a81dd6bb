//! The real `sluice` binary: `run` serves the seed story end to end, `check` reports config problems.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `sluice run` on a free port with the tests' base config plus `extra` (endpoint and route
/// tables), and waits until it answers.
async fn spawn_sluice(redis: &RedisServer, extra: &str) -> (Running, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("sluice-bin-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(&config, base_toml(redis).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")) + extra).unwrap();
    let sluice = Running(
        Command::new(SLUICE).args(["run", "--config", config.to_str().unwrap()]).stderr(Stdio::null()).spawn().unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while client().get(format!("http://{addr}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "sluice did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (sluice, addr)
}

#[tokio::test]
async fn sluice_run_delivers_the_seed_event() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let extra = endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nevent_types = [\"order_*\"]\nendpoints = [\"orders\"]\n";
    let (_sluice, addr) = spawn_sluice(&redis, &extra).await;

    let (status, accepted) = post_event(addr, "shop", r#"{"event":"order_created","order_id":12345}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let got = receiver.next().await;
    assert_eq!(got.json()["order_id"], 12345);
    assert!(signature_valid(&got));
    wait_for_state(addr, accepted["deliveries"][0]["id"].as_str().unwrap(), "succeeded").await;

    // An event type no route takes is accepted with no deliveries.
    let (status, none) = post_event(addr, "shop", r#"{"event":"refund_issued"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(none["deliveries"].as_array().unwrap().len(), 0);
}

#[test]
fn sluice_check_reports_every_problem_and_fails() {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        r#"
[[sources]]
name = "shop"
token = "a-long-enough-token"

[[endpoints]]
name = "a"
url = "https://example.com/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[plugins]]
name = "ghost"
path = "does-not-exist.wasm"

[[plugins]]
name = "not-wasm"
path = "bad.toml"

[[routes]]
source = "shop"
plugins = ["ghost"]
endpoints = ["b"]
"#,
    )
    .unwrap();
    let output = Command::new(SLUICE).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown endpoint `b`"), "{stderr}");

    // With the route fixed, plugin loading reports both broken plugins at once.
    let fixed = std::fs::read_to_string(&config).unwrap().replace("endpoints = [\"b\"]", "endpoints = [\"a\"]");
    std::fs::write(&config, fixed).unwrap();
    let output = Command::new(SLUICE).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plugin `ghost` failed to load: cannot read"), "{stderr}");
    assert!(
        stderr.contains("plugin `not-wasm` failed to load")
            && stderr.contains("neither a Wasm component nor a valid core module"),
        "{stderr}"
    );
}

#[test]
fn sluice_check_accepts_the_shipped_config() {
    let Some(_) = plugins_dir() else { return };
    let config = repo_root().join("config/sluice.toml");
    let output = Command::new(SLUICE).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK"));
}

#[test]
fn sluice_plugin_test_prints_the_verdict_and_the_time() {
    let Some(dist) = plugins_dir() else { return };
    let dir = std::env::temp_dir().join(format!("sluice-plugin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event = dir.join("event.json");
    std::fs::write(&event, r#"{"type":"test.ping","order_id":1}"#).unwrap();
    let config = dir.join("filter.toml");
    std::fs::write(&config, "drop_types = [\"test.*\"]\n").unwrap();
    let run = |plugin: &str, config: Option<&std::path::Path>| {
        let mut command = Command::new(SLUICE);
        command.args(["plugin", "test", dist.join(plugin).to_str().unwrap(), "--event", event.to_str().unwrap()]);
        if let Some(config) = config {
            command.args(["--config", config.to_str().unwrap()]);
        }
        let output = command.output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };

    let (ok, out) = run("rust-filter.wasm", Some(&config));
    assert!(ok, "{out}");
    assert!(out.contains("verdict: dropped: type test.ping matches test.*"), "{out}");
    assert!(out.contains("took: ") && out.contains("µs"), "{out}");

    let (ok, out) = run("rust-filter.wasm", None);
    assert!(ok);
    assert!(out.contains("verdict: passed"), "{out}");

    std::fs::write(&config, "mode = \"trap\"\n").unwrap();
    let (ok, out) = run("rust-chaos.wasm", Some(&config));
    assert!(!ok, "a trapping plugin fails the command");
    assert!(out.contains("verdict: failed (trap)"), "{out}");
}

#[tokio::test]
async fn sigterm_lets_the_delivery_in_flight_finish_and_exits_zero() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    receiver.answer_next([Answer::Hang(Duration::from_millis(1500))]);
    let extra = endpoint_toml("orders", &receiver.url(), "timeout = \"5s\"")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let (mut sluice, addr) = spawn_sluice(&redis, &extra).await;
    let (status, accepted) = post_event(addr, "shop", r#"{"event":"order_created"}"#).await;
    assert_eq!(status, 202);
    let delivery_id = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();

    // The receiver holds the delivery for 1.5 s; terminate the gateway while it waits.
    receiver.next().await;
    let pid = sluice.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::task::spawn_blocking(move || sluice.0.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "sluice exited with {exit}");

    // The attempt finished and was recorded before the process ended: nothing to redo.
    let mut conn = redis.connection().await;
    let status: Option<String> = redis::cmd("HGET")
        .arg(format!("sluice:{{s0}}:d:{delivery_id}"))
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("succeeded"));
    assert_eq!(receiver.count(), 1);
}
