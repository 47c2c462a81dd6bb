//! The plugin host under real programs: plugins that print, panic, abort, throw, return too much or
//! run to their deadline, in every example language, built from source. What they print lands in
//! the gateway's log as theirs; a crash is a 422 with the guest's own words; a slow plugin holds a
//! plugin thread and nothing else.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::harness::*;

/// Every example plugin, each on its own source `<name>` routed to endpoint `a`, plus `extra`.
/// `None` when a plugin's toolchain is missing.
fn every_language(dist: &Path) -> Option<String> {
    let plugins = [
        ("rust-print", "rust-chaos", r#"{ mode = "print" }"#),
        ("rust-panic", "rust-chaos", r#"{ mode = "panic" }"#),
        ("rust-flood", "rust-chaos", r#"{ mode = "flood" }"#),
        ("c-prefix", "c-prefix", r#"{ allow_prefix = "order" }"#),
        ("c-abort", "c-prefix", &format!(r#"{{ allow_prefix = "{}" }}"#, "o".repeat(300))),
        ("js-filter", "js-filter", r#"{ drop_types = ["test.*"] }"#),
        ("js-throw", "js-filter", r#"{ require_fields = "order_id" }"#),
        ("python-router", "python-router", r#"{ field = "region", table = { eu = ["a"] } }"#),
        ("python-raise", "python-router", r#"{ field = "region", table = ["not", "a", "table"] }"#),
        ("as-tagger", "as-tagger", r#"{ drop_type = "test.ping" }"#),
    ];
    let mut toml = String::new();
    for (name, file, config) in plugins {
        let path = dist.join(format!("{file}.wasm"));
        if !path.exists() {
            skip(&format!("{file} was not built (its toolchain is missing; see plugins/build.sh output)"));
            return None;
        }
        toml += &format!(
            "\n[[plugins]]\nname = \"{name}\"\npath = \"{}\"\nconfig = {config}\n\n[[routes]]\nsource = \"{name}\"\nplugins = [\"{name}\"]\nendpoints = [\"a\"]\n",
            path.display()
        );
    }
    Some(toml)
}

/// The JSON log lines in `log` so far.
fn log_lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits until a log line satisfies `wanted`, and returns it (some lines follow a compile: up to
/// [`COMPILE_PATIENCE`]).
async fn wait_for_line(log: &Path, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + COMPILE_PATIENCE;
    loop {
        if let Some(line) = log_lines(log).into_iter().find(&wanted) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {what} in:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A plugin line of `plugin` for `event_id` on `stream` that contains `text`.
fn plugin_line(line: &Value, plugin: &str, event_id: &str, stream: &str, text: &str) -> bool {
    line["plugin"] == plugin
        && line["event_id"] == event_id
        && line["stream"] == stream
        && line["message"].as_str().is_some_and(|m| m.contains(text))
}

#[tokio::test]
async fn what_plugins_print_in_every_language_lands_in_the_gateway_log_as_theirs() {
    let Some(dist) = plugins_dir() else { return };
    let Some(plugins) = every_language(&dist) else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let scratch = Scratch::new("plugin-print");
    let port = free_port();
    let config = scratch.path().join("sluice.toml");
    let toml = base_toml(&redis).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &endpoint_toml("a", &receiver.url(), "")
        + &plugins
        + &format!("\n[wasm]\ncache_dir = \"{}\"\nexpose_errors = false\n", shared_wasm_cache().display());
    std::fs::write(&config, toml).unwrap();
    let log = scratch.path().join("sluice.log");
    let _sluice =
        SluiceProcess::spawn(&["--log-format", "json", "run", "--config", config.to_str().unwrap()], &[], Some(&log));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening_for(addr, COMPILE_PATIENCE).await;

    // Each language prints through its own print; each line is the plugin's, with its event and stream.
    let cases = [
        ("rust-print", r#"{"type":"order.created"}"#, "stdout", "chaos says hello to"),
        ("rust-print", r#"{"type":"order.created"}"#, "stderr", "chaos says hello to"),
        ("c-prefix", r#"{"type":"invoice.paid"}"#, "stdout", "c-prefix drops invoice.paid"),
        ("js-filter", r#"{"type":"test.ping"}"#, "log", "js-filter drops test.ping"),
        ("python-router", r#"{"type":"order.created","region":"us"}"#, "stdout", "python-router drops order.created"),
        ("as-tagger", r#"{"type":"test.ping"}"#, "log", "as-tagger drops test.ping"),
    ];
    for (source, body, stream, text) in cases {
        let (status, answer) = post_event(addr, source, body).await;
        assert_eq!(status, 202, "{source}: {answer}");
        let event_id = answer["id"].as_str().unwrap();
        wait_for_line(&log, &format!("{source} {stream} {text:?}"), |l| plugin_line(l, source, event_id, stream, text))
            .await;
    }

    // A megabyte of output is cut to the bound, said once, and the event still passes.
    let (status, answer) = post_event(addr, "rust-flood", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"].as_array().unwrap().len(), 1);
    let event_id = answer["id"].as_str().unwrap();
    let cut =
        wait_for_line(&log, "saying the output was cut", |l| l["event_id"] == event_id && l.get("cut_bytes").is_some())
            .await;
    assert!(cut["cut_bytes"].as_u64().unwrap() > 1_000_000, "{cut}");
    let kept = log_lines(&log).iter().filter(|l| l["event_id"] == event_id && l["stream"] == "stdout").count();
    assert!(kept <= sluice::plugin::output::LINES_PER_SECOND as usize * 2, "the line budget holds: {kept}");

    // With `expose_errors = false` the producer gets the plugin, the kind and an error id; the
    // gateway's WARN line carries the same id, the event id and the panic message.
    let (status, body) = post_event(addr, "rust-panic", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["plugin"], "rust-panic");
    assert_eq!(body["error"]["kind"], "trap");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("chaos panic"), "the guest's words stay in the log: {message}");
    let error_id = body["error"]["error_id"].as_str().unwrap().to_string();
    assert!(message.contains(&error_id), "{message}");
    let warn = wait_for_line(&log, "with the error id", |l| l["error_id"] == error_id.as_str()).await;
    assert!(warn["event_id"].as_str().unwrap().starts_with("evt_"), "{warn}");
    assert!(warn["error"].as_str().unwrap().contains("chaos panic on an event of type order.created"), "{warn}");

    // The gateway went on serving throughout.
    let (status, _) = post_event(addr, "c-prefix", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202);
}

/// A gateway on Redis with every example plugin routed, `None` without the toolchains.
async fn gateway_with_every_language(extra: &str) -> Option<(RedisServer, Receiver, sluice::Gateway)> {
    let dist = plugins_dir()?;
    let plugins = every_language(&dist)?;
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis) + &endpoint_toml("a", &receiver.url(), "") + &plugins + extra;
    let gateway = start_gateway(&toml).await;
    Some((redis, receiver, gateway))
}

/// Posts to `source` and checks for a 422 `plugin_failed` of `kind` whose message contains each of `words`.
async fn assert_fails_with(gateway: std::net::SocketAddr, source: &str, body: &str, kind: &str, words: &[&str]) {
    let (status, answer) = post_event(gateway, source, body).await;
    assert_eq!(status, 422, "{source}: {answer}");
    assert_eq!(answer["error"]["code"], "plugin_failed", "{answer}");
    assert_eq!(answer["error"]["plugin"], source, "{answer}");
    assert_eq!(answer["error"]["kind"], kind, "{answer}");
    assert!(answer["error"]["error_id"].as_str().unwrap().starts_with("err_"), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    for word in words {
        assert!(message.contains(word), "{source}: {word:?} missing from {message:?}");
    }
}

#[tokio::test]
async fn crashing_plugins_fail_the_event_with_the_guests_own_words_and_the_gateway_keeps_serving() {
    let Some((_redis, mut receiver, gateway)) = gateway_with_every_language("").await else { return };
    let addr = gateway.addr();
    let order = r#"{"type":"order.created","region":"eu"}"#;
    // Rust: the panic message, which Rust writes to stderr before it aborts.
    assert_fails_with(
        addr,
        "rust-panic",
        order,
        "trap",
        &["unreachable", "chaos panic on an event of type order.created"],
    )
    .await;
    // C: what it wrote to stderr before abort().
    assert_fails_with(addr, "c-abort", order, "trap", &["allow_prefix is 300 bytes long"]).await;
    // Python: an uncaught exception, with its traceback's last line.
    assert_fails_with(addr, "python-raise", order, "trap", &["AttributeError", "'list' object has no attribute 'get'"])
        .await;
    // JavaScript: an uncaught TypeError (jco hands over its message as the error).
    assert_fails_with(addr, "js-throw", order, "rejected", &["not a function"]).await;

    // Each failure is counted, so `plugin.failing` can fire for it.
    let metrics = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for (plugin, kind) in
        [("rust-panic", "trap"), ("c-abort", "trap"), ("python-raise", "trap"), ("js-throw", "rejected")]
    {
        let line = format!("sluice_plugin_errors_total{{plugin=\"{plugin}\",kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing");
    }
    // The instances were discarded and the same plugins serve the next event.
    let (status, answer) = post_event(addr, "python-router", order).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(receiver.next().await.header("x-routed-by"), "python");
    assert_fails_with(addr, "rust-panic", order, "trap", &["chaos panic"]).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn what_a_plugin_returns_is_bounded_before_the_host_copies_it() {
    let Some(dist) = plugins_dir() else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let chaos = dist.join("rust-chaos.wasm").display().to_string();
    // 64 deliveries of 64 KiB each: 4 MiB, against the default bound of twice max_body_bytes (128 KiB).
    let toml = base_toml(&redis)
        + &endpoint_toml("a", &receiver.url(), "")
        + &format!(
            r#"
[[plugins]]
name = "bloat"
path = "{chaos}"
config = {{ mode = "bloat", endpoint = "a", copies = 64, bytes = 65536 }}

[[plugins]]
name = "small"
path = "{chaos}"
config = {{ mode = "bloat", endpoint = "a", copies = 2, bytes = 1000 }}

[[plugins]]
name = "headers"
path = "{chaos}"
config = {{ mode = "headers", count = 1000 }}

[[plugins]]
name = "alias"
path = "{alias}"

[[routes]]
source = "bloat"
plugins = ["bloat"]

[[routes]]
source = "small"
plugins = ["small"]

[[routes]]
source = "headers"
plugins = ["headers"]
endpoints = ["a"]

[[routes]]
source = "alias"
plugins = ["alias"]
"#,
            alias = repo_root().join("plugins/wat-alias/alias.wat").display()
        );
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();
    let event = r#"{"type":"order.created"}"#;
    assert_fails_with(addr, "bloat", event, "output", &["wasm.max_output_bytes = 131072"]).await;
    assert_fails_with(addr, "headers", event, "output", &["1002 headers", "plus 100"]).await;
    // 1,000 deliveries whose payloads all alias one 1 MiB guest buffer: refused after 128 KiB of
    // copying, not after 1,000 MiB.
    assert_fails_with(addr, "alias", event, "output", &["wasm.max_output_bytes = 131072"]).await;
    // Under the bounds, the same plugin routes as asked.
    let (status, answer) = post_event(addr, "small", event).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"].as_array().unwrap().len(), 1, "two identical deliveries are sent once");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_header_a_plugin_may_not_set_fails_the_event_at_ingest() {
    let Some(transform) = plugin_file("rust-transform") else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let mut toml = base_toml(&redis) + &endpoint_toml("a", &receiver.url(), "");
    for (name, headers) in [
        ("content-type", r#"{ content-type = "text/plain" }"#),
        ("signature", r#"{ webhook-signature = "v1,forged" }"#),
        ("bad-name", r#"{ "bad name" = "x" }"#),
        ("fine", r#"{ x-tenant = "acme" }"#),
    ] {
        toml += &format!(
            "\n[[plugins]]\nname = \"{name}\"\npath = \"{}\"\nconfig = {{ headers = {headers} }}\n\n[[routes]]\nsource = \"{name}\"\nplugins = [\"{name}\"]\nendpoints = [\"a\"]\n",
            transform.display()
        );
    }
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();
    let event = r#"{"type":"order.created"}"#;
    assert_fails_with(addr, "content-type", event, "invalid_header", &["`content-type` is set by the gateway"]).await;
    assert_fails_with(addr, "signature", event, "invalid_header", &["`webhook-signature` is set by the gateway"]).await;
    assert_fails_with(addr, "bad-name", event, "invalid_header", &["not a valid HTTP header name"]).await;
    // Nothing of those was stored; a plugin's own header goes out once, beside the gateway's.
    let (status, answer) = post_event(addr, "fine", event).await;
    assert_eq!(status, 202, "{answer}");
    let got = receiver.next().await;
    assert_eq!(got.header("x-tenant"), "acme");
    assert_eq!(got.headers.get_all("content-type").iter().count(), 1);
    assert!(signature_valid(&got));
    assert_eq!(redis.stored_deliveries().await, 1);
    gateway.shutdown().await;
}

/// A gateway whose `slow` source runs a plugin that loops to its `deadline` and whose `fast`
/// source has no plugin, with `[wasm]` set by `wasm`.
async fn noisy_neighbour(wasm: &str, deadline: &str) -> Option<(RedisServer, Receiver, sluice::Gateway)> {
    let dist = plugins_dir()?;
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("a", &receiver.url(), "")
        + &format!(
            r#"
[[plugins]]
name = "looper"
path = "{}"
config = {{ mode = "loop" }}
deadline = "{deadline}"

[[routes]]
source = "slow"
plugins = ["looper"]
endpoints = ["a"]

[[routes]]
source = "fast"
endpoints = ["a"]

[wasm]
{wasm}
"#,
            dist.join("rust-chaos.wasm").display()
        );
    let gateway = start_gateway(&toml).await;
    Some((redis, receiver, gateway))
}

/// Polls `/metrics` until `line` is in it.
async fn wait_for_metric(addr: std::net::SocketAddr, line: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{line} never showed in /metrics");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Posts an event to `slow` on a task of its own; `done` counts the answers.
fn post_slow(addr: std::net::SocketAddr, done: &Arc<AtomicUsize>) -> tokio::task::JoinHandle<(u16, Value)> {
    let done = done.clone();
    tokio::spawn(async move {
        let answer = post_event(addr, "slow", r#"{"type":"order.created"}"#).await;
        done.fetch_add(1, Ordering::SeqCst);
        answer
    })
}

#[tokio::test]
async fn a_plugin_running_to_its_deadline_holds_a_plugin_thread_and_nothing_else() {
    let Some((_redis, mut receiver, gateway)) = noisy_neighbour("threads = 8", "2s").await else { return };
    let addr = gateway.addr();
    let done = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..8).map(|_| post_slow(addr, &done)).collect();
    // All eight are inside the plugin, looping.
    wait_for_metric(addr, "sluice_plugin_threads{state=\"busy\"} 8").await;

    // Sent after them, answered before any of them: ingest on a route without the plugin, the
    // delivery of that event, the admin API and /healthz.
    let (status, answer) = post_event(addr, "fast", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202, "{answer}");
    let got = receiver.next().await;
    assert_eq!(got.header("webhook-id"), answer["deliveries"][0]["id"].as_str().unwrap());
    let (status, _) = admin_get(addr, "/v1/endpoints").await;
    assert_eq!(status, 200);
    let health = client().get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(done.load(Ordering::SeqCst), 0, "a looping plugin call was answered before the fast route");

    for call in slow {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["kind"], "timeout");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn plugin_work_queued_past_its_bound_is_refused_with_503_and_retry_after() {
    let Some((_redis, _receiver, gateway)) = noisy_neighbour("threads = 1\nmax_queued = 1", "1s").await else { return };
    let addr = gateway.addr();
    let done = Arc::new(AtomicUsize::new(0));
    let running = post_slow(addr, &done);
    wait_for_metric(addr, "sluice_plugin_threads{state=\"busy\"} 1").await;
    let queued = post_slow(addr, &done);
    wait_for_metric(addr, "sluice_plugin_queue_depth 1").await;

    let response = client()
        .post(format!("http://{addr}/v1/events/slow"))
        .header("content-type", "application/json")
        .body(r#"{"type":"order.created"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "plugins_busy", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("queued beyond its bound"), "{body}");
    wait_for_metric(addr, "sluice_plugin_queue_rejected_total 1").await;
    // A route without plugins is still served while the plugin threads are saturated.
    let (status, _) = post_event(addr, "fast", r#"{"type":"order.created"}"#).await;
    assert_eq!(status, 202);

    for call in [running, queued] {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 422, "{body}");
    }
    gateway.shutdown().await;
}

#[test]
fn plugin_test_prints_what_the_plugin_printed_and_the_panic_message() {
    let Some(dist) = plugins_dir() else { return };
    let scratch = Scratch::new("plugin-test-print");
    let event = scratch.path().join("event.json");
    std::fs::write(&event, r#"{"type":"order.created"}"#).unwrap();
    let run = |mode: &str| {
        let config = scratch.path().join(format!("{mode}.toml"));
        std::fs::write(&config, format!("mode = \"{mode}\"\n")).unwrap();
        let chaos = dist.join("rust-chaos.wasm");
        let cache = scratch.path().join("cache");
        let args = [
            "plugin",
            "test",
            chaos.to_str().unwrap(),
            "--event",
            event.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        let output = std::process::Command::new(SLUICE_BIN).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (ok, printed) = run("print");
    assert!(ok, "{printed}");
    assert!(printed.contains("stdout: chaos says hello to evt_"), "{printed}");
    assert!(printed.contains("stderr: chaos says hello to evt_"), "{printed}");
    assert!(printed.contains("verdict: passed"), "{printed}");

    let (ok, printed) = run("panic");
    assert!(!ok, "a failing plugin makes `plugin test` fail");
    assert!(
        printed.contains("stderr: ") && printed.contains("chaos panic on an event of type order.created"),
        "{printed}"
    );
    assert!(printed.contains("verdict: failed (trap)"), "{printed}");
    assert!(scratch.path().join("cache").is_dir(), "--cache-dir is where the compiled plugin went");
}

/// `bytes` with a custom section appended: the same component to run, a new file to compile (the
/// compile cache is keyed by content).
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"sluice-test";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 lengths");
    let mut out = bytes.to_vec();
    out.extend([0, size as u8, name.len() as u8]);
    out.extend(name);
    out.extend(payload);
    out
}

/// Replaces `path` atomically with `bytes`, as the README asks.
fn replace_file(path: &Path, bytes: &[u8]) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, bytes).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

#[tokio::test]
async fn plugins_reload_independently_and_the_log_says_when_a_compile_starts_and_ends() {
    let (Some(python), Some(js)) = (plugin_file("python-router"), plugin_file("js-filter")) else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let scratch = Scratch::new("plugin-reload");
    let (py_path, js_path) = (scratch.path().join("router.wasm"), scratch.path().join("filter.wasm"));
    std::fs::copy(&python, &py_path).unwrap();
    std::fs::copy(&js, &js_path).unwrap();
    let port = free_port();
    let toml = base_toml(&redis).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &endpoint_toml("a", &receiver.url(), "")
        + &format!(
            r#"
[[plugins]]
name = "py"
path = "{}"
config = {{ field = "region", default = ["a"] }}

[[plugins]]
name = "js"
path = "{}"

[[routes]]
source = "shop"
plugins = ["js", "py"]

[wasm]
cache_dir = "{}"
"#,
            py_path.display(),
            js_path.display(),
            shared_wasm_cache().display()
        );
    let config = scratch.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let log = scratch.path().join("sluice.log");
    let _sluice =
        SluiceProcess::spawn(&["--log-format", "json", "run", "--config", config.to_str().unwrap()], &[], Some(&log));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening_for(addr, COMPILE_PATIENCE).await;
    let loaded =
        wait_for_line(&log, "saying py was loaded", |l| l["plugin"] == "py" && l["message"] == "Plugin loaded.").await;
    assert!(loaded["seconds"].as_str().is_some(), "{loaded}");
    assert!(log_lines(&log)
        .iter()
        .any(|l| l["plugin"] == "py" && l["message"].as_str().unwrap_or_default().starts_with("Loading plugin")));

    // A new Python file takes seconds to compile; a JavaScript file changed meanwhile does not wait for
    // it. The tag makes the file new to the shared compile cache too.
    let tag = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    replace_file(&py_path, &with_custom_section(&std::fs::read(&python).unwrap(), &tag));
    wait_for_line(&log, "noticing the Python change", |l| {
        l["plugin"] == "py" && l["message"] == "Plugin file changed; reloading it."
    })
    .await;
    replace_file(&js_path, &with_custom_section(&std::fs::read(&js).unwrap(), &tag));
    wait_for_line(&log, "js reloaded", |l| {
        l["plugin"] == "js" && l["message"].as_str().unwrap_or_default().starts_with("Plugin reloaded")
    })
    .await;
    let py_done =
        |l: &Value| l["plugin"] == "py" && l["message"].as_str().unwrap_or_default().starts_with("Plugin reloaded");
    assert!(!log_lines(&log).iter().any(py_done), "the JavaScript reload waited for the Python compile");
    wait_for_line(&log, "py reloaded", py_done).await;

    // Both new versions serve.
    let (status, answer) = post_event(addr, "shop", r#"{"type":"order.created","region":"eu"}"#).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_plugin_set_to_skip_on_error_lets_the_event_through_unchanged_and_counts_it() {
    let Some(chaos) = plugin_file("rust-chaos") else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"enrich\"\npath = \"{}\"\nconfig = {{ mode = \"trap\", when_type = \"bad\" }}\n\
             on_error = \"skip\"\n\
             [[routes]]\nsource = \"shop\"\nplugins = [\"enrich\"]\nendpoints = [\"orders\"]\n",
            chaos.display()
        );
    let gateway = start_gateway(&toml).await;
    // The plugin traps on this event: with `skip`, it is accepted and delivered as it came in.
    let body = r#"{"type":"bad","order_id":7}"#;
    let (status, answer) = post_event(gateway.addr(), "shop", body).await;
    assert_eq!(status, 202, "{answer}");
    let got = receiver.next().await;
    assert_eq!(got.json(), serde_json::json!({"type": "bad", "order_id": 7}));
    let text = client().get(format!("http://{}/metrics", gateway.addr())).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("sluice_plugin_skipped_total{plugin=\"enrich\"} 1"), "{text}");
    assert!(text.contains("sluice_plugin_errors_total{plugin=\"enrich\",kind=\"trap\"} 1"), "{text}");
    gateway.shutdown().await;
}
