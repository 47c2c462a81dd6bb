//! Plugins through the running gateway: filter, transform, router, and the misbehaving ones.

use crate::harness::*;

/// A gateway with two endpoints and the given plugin tables and routes; `None` when plugins cannot be built.
async fn gateway_with(plugins: &str, routes: &str) -> Option<(RedisServer, Receiver, Receiver, sluice::Gateway)> {
    let dist = plugins_dir()?;
    let redis = RedisServer::start().await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let toml = base_toml(&redis)
        + &endpoint_toml("a", &a.url(), "")
        + &endpoint_toml("b", &b.url(), "")
        + &plugins.replace("DIST", &dist.display().to_string())
        + routes;
    let gateway = start_gateway(&toml).await;
    Some((redis, a, b, gateway))
}

#[tokio::test]
async fn filter_drops_matching_events_and_passes_others() {
    let plugins = r#"
[[plugins]]
name = "no-tests"
path = "DIST/rust-filter.wasm"
config = { drop_types = ["test.*"] }
"#;
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"no-tests\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(plugins, routes).await else { return };

    let (status, dropped) = post_event(gateway.addr(), "shop", r#"{"type":"test.ping"}"#).await;
    assert_eq!(status, 202);
    assert_eq!(dropped["deliveries"].as_array().unwrap().len(), 0, "{dropped}");
    assert_eq!(dropped["dropped"][0]["plugin"], "no-tests");
    assert!(dropped["dropped"][0]["reason"].as_str().unwrap().contains("test.*"));

    let (status, passed) = post_event(gateway.addr(), "shop", r#"{"type":"order.created","n":1}"#).await;
    assert_eq!(status, 202);
    assert_eq!(passed["deliveries"].as_array().unwrap().len(), 1);
    let got = a.next().await;
    assert_eq!(got.json()["type"], "order.created", "the dropped event must not arrive first");
    assert_eq!(a.count(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn transform_rewrites_payload_and_adds_headers() {
    let plugins = r#"
[[plugins]]
name = "v2"
path = "DIST/rust-transform.wasm"
config = { set = { version = 2 }, remove = ["secret"], headers = { x-transformed = "yes" } }
"#;
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"v2\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(plugins, routes).await else { return };

    let (status, accepted) =
        post_event(gateway.addr(), "shop", r#"{"event":"order_created","order_id":12345,"secret":"x"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let got = a.next().await;
    let body = got.json();
    assert_eq!(body["version"], 2);
    assert_eq!(body["order_id"], 12345);
    assert!(body.get("secret").is_none(), "{body}");
    assert_eq!(got.header("x-transformed"), "yes");
    assert!(signature_valid(&got), "the signature covers the rewritten body");

    // The stored event keeps what the producer sent.
    let (_, event) = admin_get(gateway.addr(), &format!("/v1/events/{}", accepted["id"].as_str().unwrap())).await;
    assert_eq!(event["payload"]["secret"], "x");
    gateway.shutdown().await;
}

#[tokio::test]
async fn router_fans_out_to_two_endpoints() {
    let plugins = r#"
[[plugins]]
name = "by-region"
path = "DIST/rust-router.wasm"
config = { field = "region", table = { eu = ["a", "b"], us = ["b"] } }
"#;
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"by-region\"]\n";
    let Some((_redis, mut a, mut b, gateway)) = gateway_with(plugins, routes).await else { return };

    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"event":"order_created","region":"eu"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let endpoints: Vec<_> =
        accepted["deliveries"].as_array().unwrap().iter().map(|d| d["endpoint"].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["a", "b"]);
    let (got_a, got_b) = (a.next().await, b.next().await);
    assert_eq!(got_a.json()["region"], "eu");
    assert_eq!(got_b.header("x-routed-by"), "region=eu");
    assert_ne!(got_a.header("webhook-id"), got_b.header("webhook-id"));

    let (_, us) = post_event(gateway.addr(), "shop", r#"{"event":"order_created","region":"us"}"#).await;
    assert_eq!(us["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(b.next().await.json()["region"], "us");
    gateway.shutdown().await;
}

#[tokio::test]
async fn router_naming_an_unknown_endpoint_fails_the_event() {
    let plugins = r#"
[[plugins]]
name = "typo-router"
path = "DIST/rust-router.wasm"
config = { field = "region", default = ["nope"] }
"#;
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"typo-router\"]\n";
    let Some((_redis, _a, _b, gateway)) = gateway_with(plugins, routes).await else { return };
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"event":"x"}"#).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["plugin"], "typo-router");
    assert_eq!(body["error"]["kind"], "unknown_endpoint");
    gateway.shutdown().await;
}

#[tokio::test]
async fn misbehaving_plugins_answer_422_and_the_gateway_keeps_serving() {
    let plugins = r#"
[[plugins]]
name = "trapper"
path = "DIST/rust-chaos.wasm"
config = { mode = "trap", when_type = "trap" }

[[plugins]]
name = "looper"
path = "DIST/rust-chaos.wasm"
config = { mode = "loop", when_type = "loop" }
deadline = "50ms"

[[plugins]]
name = "hog"
path = "DIST/rust-chaos.wasm"
config = { mode = "membomb", when_type = "membomb" }
max_memory_mb = 16

[[plugins]]
name = "naysayer"
path = "DIST/rust-chaos.wasm"
config = { mode = "error", when_type = "error" }
"#;
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"trapper\", \"looper\", \"hog\", \"naysayer\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(plugins, routes).await else { return };

    for (event_type, plugin, kind, words) in [
        ("trap", "trapper", "trap", "unreachable"),
        ("loop", "looper", "timeout", "deadline"),
        ("membomb", "hog", "memory", "16 MiB"),
        ("error", "naysayer", "rejected", "told to fail"),
    ] {
        let (status, body) = post_event(gateway.addr(), "shop", &format!(r#"{{"type":"{event_type}"}}"#)).await;
        assert_eq!(status, 422, "{event_type}: {body}");
        assert_eq!(body["error"]["plugin"], plugin, "{body}");
        assert_eq!(body["error"]["kind"], kind, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{event_type}: {message}");

        // The next event through the same plugins is fine.
        let (status, ok) = post_event(gateway.addr(), "shop", r#"{"type":"fine"}"#).await;
        assert_eq!(status, 202, "{ok}");
        assert_eq!(a.next().await.json()["type"], "fine");
    }
    assert_eq!(a.count(), 4, "no failed event was delivered");

    // Each failure is counted against its plugin and kind.
    let metrics =
        client().get(format!("http://{}/metrics", gateway.addr())).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"sluice_plugin_errors_total{plugin="trapper",kind="trap"} 1"#,
        r#"sluice_plugin_errors_total{plugin="looper",kind="timeout"} 1"#,
        r#"sluice_plugin_errors_total{plugin="hog",kind="memory"} 1"#,
        r#"sluice_plugin_errors_total{plugin="naysayer",kind="rejected"} 1"#,
        r#"sluice_plugin_calls_total{plugin="trapper",verdict="pass"} 7"#,
        r#"sluice_plugin_call_seconds_count{plugin="naysayer"} 5"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line} in:\n{metrics}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn warm_instances_are_reused_unless_every_call_must_be_fresh() {
    let plugins = r#"
[[plugins]]
name = "warm"
path = "DIST/rust-chaos.wasm"
config = { mode = "count" }

[[plugins]]
name = "fresh"
path = "DIST/rust-chaos.wasm"
config = { mode = "count" }
max_calls_per_instance = 1
"#;
    let routes = "\n[[routes]]\nsource = \"warm\"\nplugins = [\"warm\"]\nendpoints = [\"a\"]\n\n[[routes]]\nsource = \"fresh\"\nplugins = [\"fresh\"]\nendpoints = [\"b\"]\n";
    let Some((_redis, mut a, mut b, gateway)) = gateway_with(plugins, routes).await else { return };
    for _ in 0..3 {
        assert_eq!(post_event(gateway.addr(), "warm", r#"{"type":"x"}"#).await.0, 202);
        assert_eq!(post_event(gateway.addr(), "fresh", r#"{"type":"x"}"#).await.0, 202);
    }
    let mut warm_counts = Vec::new();
    for _ in 0..3 {
        warm_counts.push(a.next().await.header("x-instance-calls").parse::<u32>().unwrap());
        assert_eq!(b.next().await.header("x-instance-calls"), "1", "a fresh instance has served one call");
    }
    warm_counts.sort();
    assert!(warm_counts[2] > 1, "a warm instance was reused: {warm_counts:?}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_file_under_load_loses_nothing_and_a_broken_file_keeps_the_old_version() {
    let Some(dist) = plugins_dir() else { return };
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("live.wasm");
    std::fs::copy(dist.join("rust-chaos.wasm"), &live).unwrap();
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    // Both versions read this config: chaos passes events as they are, transform adds `version`.
    let toml = base_toml(&redis)
        + &endpoint_toml("a", &receiver.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"live\"\npath = \"{}\"\nconfig = {{ mode = \"pass\", set = {{ version = 2 }} }}\n",
            live.display()
        )
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"live\"]\nendpoints = [\"a\"]\n";
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..4 {
        let stop = stop.clone();
        producers.spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _) = post_event(addr, "shop", &format!(r#"{{"event":"e","p":{producer},"n":{n}}}"#)).await;
                statuses.push(status);
                n += 1;
            }
            statuses
        });
    }
    // Let the old version serve some events, then swap the file atomically (write + rename).
    for _ in 0..50 {
        assert!(receiver.next().await.json().get("version").is_none());
    }
    let staging = dir.join("staging.wasm");
    std::fs::copy(dist.join("rust-transform.wasm"), &staging).unwrap();
    std::fs::rename(&staging, &live).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while receiver.next().await.json().get("version").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the new version never served an event");
    }

    // A broken file does not replace the running version.
    std::fs::write(&staging, b"not a wasm component").unwrap();
    std::fs::rename(&staging, &live).unwrap();
    for _ in 0..50 {
        receiver.next().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut accepted = 0;
    while let Some(statuses) = producers.join_next().await {
        let statuses = statuses.unwrap();
        assert!(statuses.iter().all(|s| *s == 202), "an event failed during the swap: {statuses:?}");
        accepted += statuses.len();
    }
    let (status, body) = post_event(addr, "shop", r#"{"event":"after"}"#).await;
    assert_eq!(status, 202, "{body}");
    accepted += 1;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while receiver.count() < accepted {
        assert!(tokio::time::Instant::now() < deadline, "{} of {accepted} delivered", receiver.count());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last = receiver.all().into_iter().find(|r| r.json()["event"] == "after").unwrap();
    assert_eq!(last.json()["version"], 2, "the last good version keeps running");
    assert_eq!(receiver.count(), accepted, "nothing delivered twice");
    gateway.shutdown().await;
}

#[tokio::test]
async fn javascript_filter_drops_and_passes_through_the_gateway() {
    let Some(js) = plugin_file("js-filter") else { return };
    let plugins = format!(
        "\n[[plugins]]\nname = \"js\"\npath = \"{}\"\nconfig = {{ drop_types = [\"test.*\"], require_fields = [\"customer\"] }}\n",
        js.display()
    );
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"js\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(&plugins, routes).await else { return };

    let (status, dropped) = post_event(gateway.addr(), "shop", r#"{"type":"test.ping","customer":"c"}"#).await;
    assert_eq!(status, 202);
    assert!(dropped["dropped"][0]["reason"].as_str().unwrap().contains("test.*"), "{dropped}");
    let (_, missing) = post_event(gateway.addr(), "shop", r#"{"type":"order"}"#).await;
    assert_eq!(missing["dropped"][0]["reason"], "missing field customer");
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"type":"order","customer":"Zoë"}"#).await;
    assert_eq!(status, 202, "{body}");
    let got = a.next().await;
    assert_eq!(got.json()["customer"], "Zoë");
    assert_eq!(got.header("x-filtered-by"), "js");
    assert_eq!(a.count(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn javascript_transform_rewrites_the_payload_as_bytes_through_the_gateway() {
    let Some(js) = plugin_file("js-transform") else { return };
    let plugins = format!(
        "\n[[plugins]]\nname = \"js\"\npath = \"{}\"\nconfig = {{ set = {{ version = 2, note = \"für\" }}, remove = [\"secret\"], event_type = \"order.v2\", headers = {{ x-transformed = \"js\" }} }}\n",
        js.display()
    );
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"js\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(&plugins, routes).await else { return };

    let (status, body) =
        post_event(gateway.addr(), "shop", r#"{"type":"order","customer":"Zoë 🦀","secret":"s"}"#).await;
    assert_eq!(status, 202, "{body}");
    let got = a.next().await;
    let payload = got.json();
    // TextDecoder and TextEncoder round-trip non-ASCII text (two- and four-byte UTF-8) intact.
    assert_eq!(payload["customer"], "Zoë 🦀");
    assert_eq!(payload["note"], "für");
    assert_eq!(payload["version"], 2);
    assert!(payload.get("secret").is_none(), "{payload}");
    assert_eq!(got.header("x-transformed"), "js");
    assert!(signature_valid(&got));
    gateway.shutdown().await;
}

#[tokio::test]
async fn python_router_fans_out_through_the_gateway() {
    let Some(py) = plugin_file("python-router") else { return };
    let plugins = format!(
        "\n[[plugins]]\nname = \"py\"\npath = \"{}\"\nconfig = {{ field = \"region\", table = {{ eu = [\"a\", \"b\"] }} }}\n",
        py.display()
    );
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"py\"]\n";
    let Some((_redis, mut a, mut b, gateway)) = gateway_with(&plugins, routes).await else { return };

    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"type":"order","region":"eu"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(a.next().await.header("x-routed-by"), "python");
    assert_eq!(b.next().await.json()["region"], "eu");
    let (_, none) = post_event(gateway.addr(), "shop", r#"{"type":"order","region":"mars"}"#).await;
    assert_eq!(none["dropped"][0]["reason"], "no route for region=mars");
    let (status, error) = post_event(gateway.addr(), "shop", r#"[1, 2]"#).await;
    assert_eq!(status, 202, "a non-object payload has no field: dropped, {error}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn c_plugin_passes_by_prefix_and_drops_the_rest_through_the_gateway() {
    let Some(c) = plugin_file("c-prefix") else { return };
    let plugins =
        format!("\n[[plugins]]\nname = \"c\"\npath = \"{}\"\nconfig = {{ allow_prefix = \"order\" }}\n", c.display());
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"c\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(&plugins, routes).await else { return };
    let (_, dropped) = post_event(gateway.addr(), "shop", r#"{"type":"refund_issued"}"#).await;
    assert_eq!(dropped["dropped"][0]["reason"], "type refund_issued does not start with order");
    for i in 0..20 {
        let (status, body) =
            post_event(gateway.addr(), "shop", &format!(r#"{{"type":"order_created","n":{i}}}"#)).await;
        assert_eq!(status, 202, "{body}");
        let got = a.next().await;
        assert_eq!(got.header("x-checked-by"), "c");
        assert_eq!(got.json()["n"], i, "warm instances keep answering correctly");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn assemblyscript_core_module_tags_and_drops_through_the_gateway() {
    let Some(wasm) = plugin_file("as-tagger") else { return };
    let plugins = format!(
        "\n[[plugins]]\nname = \"as\"\npath = \"{}\"\nconfig = {{ tag = \"billing\", drop_type = \"test.ping\" }}\n",
        wasm.display()
    );
    let routes = "\n[[routes]]\nsource = \"shop\"\nplugins = [\"as\"]\nendpoints = [\"a\"]\n";
    let Some((_redis, mut a, _b, gateway)) = gateway_with(&plugins, routes).await else { return };
    let (_, dropped) = post_event(gateway.addr(), "shop", r#"{"type":"test.ping"}"#).await;
    assert_eq!(dropped["dropped"][0]["reason"], "type test.ping is dropped by config");
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"type":"invoice_paid","amount":7}"#).await;
    assert_eq!(status, 202, "{body}");
    let got = a.next().await;
    assert_eq!(got.header("x-tagged-by"), "billing");
    assert_eq!(got.json()["amount"], 7);
    gateway.shutdown().await;
}

#[tokio::test]
async fn core_modules_that_break_the_abi_fail_clearly() {
    let Some(_) = plugins_dir() else { return };
    let dir = std::env::temp_dir().join(format!("sluice-core-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Imports WASI, which the core ABI does not grant.
    let greedy = dir.join("greedy.wat");
    std::fs::write(
        &greedy,
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .unwrap();
    // Answers with bytes outside its memory.
    let liar = dir.join("liar.wat");
    std::fs::write(
        &liar,
        r#"(module (memory (export "memory") 1)
        (func (export "sluice_alloc") (param i32) (result i32) (i32.const 16))
        (func (export "sluice_handle") (param i32 i32) (result i64) (i64.const 0x7fff000000000010)))"#,
    )
    .unwrap();
    let load = |path: &std::path::Path| {
        let plugin = sluice::config::PluginConfig {
            name: "p".into(),
            path: path.to_path_buf(),
            config: serde_json::json!({}),
            deadline: std::time::Duration::from_millis(100),
            max_memory_mb: 16,
            max_calls_per_instance: 10,
            grant_clock: false,
            on_error: Default::default(),
            startup_deadline: std::time::Duration::from_secs(1),
            shadow: None,
            shadow_rate: 1.0,
        };
        sluice::plugin::PluginSet::load(&[plugin], &Default::default(), 1 << 20)
    };
    let error = load(&greedy).err().unwrap()[0].to_string();
    assert!(error.contains("imports more than the core ABI allows"), "{error}");
    let set = load(&liar).unwrap();
    let event = sluice::plugin::PluginEvent {
        id: "evt_x".into(),
        source: "s".into(),
        event_type: "t".into(),
        headers: vec![],
        payload: b"{}".to_vec(),
    };
    let error = set.call("p", &event).unwrap_err();
    assert_eq!(error.kind(), "trap");
    assert!(error.to_string().contains("outside memory"), "{error}");

    // Start-up code that never finishes is cut off by the start-up deadline.
    let sleeper = dir.join("sleeper.wat");
    std::fs::write(
        &sleeper,
        r#"(module (memory (export "memory") 1)
        (func $spin (loop br 0)) (start $spin)
        (func (export "sluice_alloc") (param i32) (result i32) (i32.const 16))
        (func (export "sluice_handle") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let set = load(&sleeper).unwrap();
    let error = set.call("p", &event).unwrap_err();
    assert_eq!(error.kind(), "timeout", "{error}");
    assert!(error.to_string().contains("deadline of 1s"), "{error}");
}

#[tokio::test]
async fn plugins_see_no_clock_unless_granted() {
    let plugins = r#"
[[plugins]]
name = "blind"
path = "DIST/rust-chaos.wasm"
config = { mode = "clock" }

[[plugins]]
name = "timed"
path = "DIST/rust-chaos.wasm"
config = { mode = "clock" }
grant_clock = true
"#;
    let routes = "\n[[routes]]\nsource = \"blind\"\nplugins = [\"blind\"]\nendpoints = [\"a\"]\n\n[[routes]]\nsource = \"timed\"\nplugins = [\"timed\"]\nendpoints = [\"b\"]\n";
    let Some((_redis, mut a, mut b, gateway)) = gateway_with(plugins, routes).await else { return };
    post_event(gateway.addr(), "blind", r#"{"type":"x"}"#).await;
    post_event(gateway.addr(), "timed", r#"{"type":"x"}"#).await;
    assert_eq!(a.next().await.header("x-clock"), "0", "an ungranted clock reads zero");
    let seen: u64 = b.next().await.header("x-clock").parse().unwrap();
    assert!(seen > 1_700_000_000, "a granted clock reads the real time, got {seen}");
    gateway.shutdown().await;
}
