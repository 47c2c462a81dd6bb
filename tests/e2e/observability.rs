//! `/metrics` (Prometheus text, checked by `promtool check metrics`), `/readyz` and `/healthz`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

async fn scrape(gateway: std::net::SocketAddr) -> String {
    let response = client().get(format!("http://{gateway}/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "missing `{line}` in:\n{text}");
    }
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(_) => {
            skip("promtool not installed (apt-get install prometheus)");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Some((output.status.success(), said))
}

#[tokio::test]
async fn metrics_count_events_deliveries_and_queue_depth_and_promtool_accepts_them() {
    let redis = RedisServer::start().await;
    metrics_are_counted_on(base_toml(&redis)).await;
}

#[tokio::test]
async fn metrics_on_the_embedded_backend_are_the_same() {
    let dir = Scratch::new("metrics");
    let store = dir.path().join("queue.redb");
    metrics_are_counted_on(base_toml_embedded() + &format!("\n[queue]\npath = \"{}\"\n", store.display())).await;
    assert!(store.exists());
}

/// The same counts and gauges whichever backend `base` configures.
async fn metrics_are_counted_on(base: String) {
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.answer_always(Answer::Status(500));
    let toml = base
        + &endpoint_toml("ok", &ok.url(), "")
        + &endpoint_toml("failing", &failing.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"ok\", \"failing\"]\n";
    let gateway = start_gateway(&toml).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, accepted) = post_event(gateway.addr(), "shop", &format!(r#"{{"event":"e","n":{n}}}"#)).await;
        assert_eq!(status, 202);
        ids.extend(accepted["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(post_event(gateway.addr(), "shop", "{").await.0, 400);
    assert_eq!(post_event(gateway.addr(), "nope", "{}").await.0, 404);
    for id in &ids {
        let view = wait_for_state(gateway.addr(), id, if id.ends_with('1') { "succeeded" } else { "dead" }).await;
        assert!(view["endpoint"] == if id.ends_with('1') { "ok" } else { "failing" }, "{view}");
    }

    let text = scrape(gateway.addr()).await;
    assert_lines(
        &text,
        &[
            r#"sluice_events_received_total{source="shop"} 4"#,
            r#"sluice_events_received_total{source="_unknown"} 1"#,
            r#"sluice_events_accepted_total{source="shop"} 3"#,
            r#"sluice_events_rejected_total{source="shop",reason="invalid_json"} 1"#,
            r#"sluice_events_rejected_total{source="_unknown",reason="unknown_source"} 1"#,
            r#"sluice_delivery_attempts_total{endpoint="ok",outcome="success"} 3"#,
            // Three attempts each (the test schedule), all answered 500.
            r#"sluice_delivery_attempts_total{endpoint="failing",outcome="http_error"} 9"#,
            r#"sluice_delivery_attempt_seconds_count{endpoint="failing"} 9"#,
            r#"sluice_queue_deliveries{state="dead"} 3"#,
            r#"sluice_queue_deliveries{state="due"} 0"#,
            r#"sluice_queue_paused_deliveries{endpoint="ok"} 0"#,
            r#"sluice_deliveries_in_flight 0"#,
            r#"sluice_store_errors_total{op="enqueue"} 0"#,
        ],
    );
    let store_bytes = metric_value(&text, "sluice_store_memory_bytes")
        .unwrap_or_else(|| panic!("no sluice_store_memory_bytes:\n{text}"));
    assert!(store_bytes > 1000, "the store's memory (Redis used_memory or the file size): {store_bytes}");
    if let Some((accepted, said)) = promtool(&text) {
        assert!(accepted, "promtool refused the metrics:\n{said}\n{text}");
        assert!(said.trim().is_empty(), "promtool lint findings:\n{said}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_the_store_while_healthz_stays_up() {
    let mut redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("ok", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"ok\"]\n";
    let gateway = start_gateway(&toml).await;
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", gateway.addr());
        async move {
            let response = client().get(url).send().await.unwrap();
            {
                let status = response.status().as_u16();
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&response.bytes().await.unwrap()).unwrap_or_default(),
                )
            }
        }
    };
    let (status, ready) = get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")), "{ready}");

    redis.kill();
    let (status, ready) = get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (503, Some("not_ready")), "{ready}");
    assert!(!ready["store"].as_str().unwrap().is_empty(), "{ready}");
    assert_eq!(get("/healthz").await.0, 200, "the process is alive");
    // Metrics still answer, without the queue gauges, and count the failed store reads.
    let text = scrape(gateway.addr()).await;
    assert!(!text.contains("sluice_queue_deliveries{"), "{text}");
    assert!(!text.contains(r#"sluice_store_errors_total{op="admin"} 0"#), "{text}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_failing_plugin_raises_one_plugin_failing_alert() {
    let Some(chaos) = plugin_file("rust-chaos") else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let mut alerts = Receiver::start().await;
    let toml = base_toml(&redis)
        + &format!(
            "\n[alerts]\nurl = \"{}\"\nplugin_window = \"300ms\"\nplugin_min_calls = 5\nplugin_error_rate = 0.5\n",
            alerts.url()
        )
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"chaos\"\npath = \"{}\"\nconfig = {{ mode = \"trap\", when_type = \"bad\" }}\n\
             [[routes]]\nsource = \"shop\"\nplugins = [\"chaos\"]\nendpoints = [\"orders\"]\n",
            chaos.display()
        );
    let gateway = start_gateway(&toml).await;
    for _ in 0..30 {
        assert_eq!(post_event(gateway.addr(), "shop", r#"{"type":"bad"}"#).await.0, 422);
    }
    let alert = alerts.next().await.json();
    assert_eq!(alert["type"], "plugin.failing", "{alert}");
    assert_eq!(alert["plugin"], "chaos");
    assert!(alert["errors"].as_u64().unwrap() >= 5 && alert["error_rate"] == 1.0, "{alert}");
    // Healthy traffic afterwards brings no second alert.
    for _ in 0..10 {
        assert_eq!(post_event(gateway.addr(), "shop", r#"{"type":"good"}"#).await.0, 202);
    }
    gateway.shutdown().await;
    assert_eq!(alerts.count(), 1, "one alert per episode");
}

/// The real binary's log at INFO: no line per delivery, one summary line per endpoint that had
/// attempts, with its counts (`queue.log_summary_every`).
#[tokio::test]
async fn the_log_sums_up_each_endpoints_deliveries_instead_of_a_line_per_delivery() {
    let redis = RedisServer::start().await;
    let ok = Receiver::start().await;
    let down = Receiver::start().await;
    down.answer_always(Answer::Status(500));
    let scratch = Scratch::new("log-summary");
    let port = free_port();
    let toml = base_toml(&redis).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + "\n[queue]\nlog_summary_every = \"1s\"\n"
        + &endpoint_toml("orders", &ok.url(), "")
        + &endpoint_toml("down", &down.url(), "retry_schedule = [\"0s\", \"1h\"]")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\", \"down\"]\n";
    let config = scratch.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let log = scratch.path().join("sluice.log");
    let env = [("RUST_LOG", "info".to_string())];
    let sluice =
        SluiceProcess::spawn(&["--log-format", "json", "run", "--config", config.to_str().unwrap()], &env, Some(&log));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening_for(addr, PATIENCE).await;
    for n in 0..3 {
        assert_eq!(post_event(addr, "shop", &format!(r#"{{"n":{n}}}"#)).await.0, 202);
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ok.count() < 3 || down.count() < 3 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(tokio::time::Instant::now() < deadline, "deliveries never all arrived:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every attempt is made; the summaries of the stretches that had them add up to them.
    let summaries = |endpoint: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "Deliveries since the last summary." && l["endpoint"] == endpoint)
            .collect()
    };
    let sum = |lines: &[serde_json::Value], field: &str| lines.iter().map(|l| l[field].as_u64().unwrap()).sum::<u64>();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (orders, failing) = (summaries("orders"), summaries("down"));
        if sum(&orders, "succeeded") == 3 && sum(&failing, "failed") == 3 {
            assert_eq!((sum(&orders, "failed"), sum(&failing, "succeeded")), (0, 0));
            assert_eq!(sum(&failing, "http_error"), 3);
            assert!(failing.iter().all(|l| l["level"] == "INFO" && l["period"] == "1s"), "{failing:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no summary adding up to the deliveries: {orders:?} {failing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Delivery succeeded."), "no line per delivery at INFO:\n{text}");
    assert!(!text.contains("will retry"), "no line per failed attempt at INFO:\n{text}");
    drop(sluice);
}
