//! The real `sluice` binary: `run` serves the seed story end to end, `check` reports config problems.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Starts `sluice run` on a free port with the tests' base config plus `extra` (endpoint and route
/// tables), and waits until it answers. Its log goes to `sluice.log` beside the config, in the
/// system's temp dir, for a failing test to be read against.
async fn spawn_sluice(redis: &RedisServer, extra: &str) -> (SluiceProcess, std::net::SocketAddr) {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = bin_dir(addr);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    // Redis calls get 5 s rather than the base's 500 ms: these tests are about the binary, not about
    // Redis dropping out, and a Redis starved of CPU by the rest of the suite must not fail a settle.
    let base = base_toml(redis).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let base = base.replace("timeout = \"500ms\"", "timeout = \"5s\"");
    std::fs::write(&config, base + extra).unwrap();
    let log = dir.join("sluice.log");
    let mut sluice = SluiceProcess(
        Command::new(SLUICE_BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info,sluice=debug")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // This process must be the one listening (its log says so), not whatever else may answer on
    // the port.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("Sluice is listening.") {
        let exited = sluice.0.try_wait().unwrap();
        assert!(exited.is_none(), "sluice ended at start ({exited:?}){}", log_of(addr));
        assert!(tokio::time::Instant::now() < deadline, "sluice did not start{}", log_of(addr));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_listening(addr).await;
    (sluice, addr)
}

/// The directory of the `sluice run` that [`spawn_sluice`] started on `addr`: its config
/// (`sluice.toml`) and its log (`sluice.log`).
fn bin_dir(addr: std::net::SocketAddr) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sluice-bin-{}", addr.port()))
}

/// The log of the `sluice run` that [`spawn_sluice`] started on `addr`, for a failure message.
fn log_of(addr: std::net::SocketAddr) -> String {
    let path = bin_dir(addr).join("sluice.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    format!("\n--- {} ---\n{log}", path.display())
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
    // One run reports the route's unknown endpoint and both broken plugins.
    let output = Command::new(SLUICE_BIN).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown endpoint `b`"), "{stderr}");
    assert!(stderr.contains("plugin `ghost` failed to load: cannot read"), "{stderr}");
    assert!(
        stderr.contains("plugin `not-wasm` failed to load")
            && stderr.contains("neither a Wasm component nor a valid core module"),
        "{stderr}"
    );
}

#[test]
fn sluice_check_lists_type_key_semantic_and_plugin_problems_in_one_run_each_once_with_its_line() {
    let dir = Scratch::new("check-all");
    let config = dir.path().join("sluice.toml");
    // What a new user wrote: a bad duration, a misspelt key, a short admin token, an ftp endpoint,
    // unknown route targets and a missing plugin file.
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:0"
max_body_byte = 1000

[queue]
retention = "7 dayz"

[admin]
token = "short"

[[sources]]
name = "shop"
token = "a-long-enough-token"

[[endpoints]]
name = "billing"
url = "ftp://example.com/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[plugins]]
name = "ghost"
path = "missing.wasm"

[[routes]]
source = "shop"
plugins = ["ghost", "nobody"]
endpoints = ["nowhere"]
"#,
    )
    .unwrap();
    let output = Command::new(SLUICE_BIN).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = config.display().to_string();
    let expected = [
        format!("server: unknown key `max_body_byte` (did you mean `max_body_bytes`?) (in {file}, line 3)"),
        "queue.retention: ".to_string(),
        format!("(in {file}, line 6)"),
        "admin.token: must be at least 16 characters".to_string(),
        "scheme must be http or https, not `ftp`".to_string(),
        "unknown endpoint `nowhere`".to_string(),
        "unknown plugin `nobody`".to_string(),
        "plugin `ghost` failed to load: cannot read".to_string(),
    ];
    for problem in &expected {
        assert_eq!(stderr.matches(problem.as_str()).count(), 1, "`{problem}` once in:\n{stderr}");
    }
    // Each problem on its own line, none twice.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    assert_eq!(lines.len(), 7, "{stderr}");
    let distinct: std::collections::HashSet<&&str> = lines.iter().collect();
    assert_eq!(distinct.len(), lines.len(), "{stderr}");

    // Overridden from the environment: said so, instead of a line of the file.
    let output = Command::new(SLUICE_BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .env("SLUICE_QUEUE__CONCURRENCY", "many")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("queue.concurrency: ") && stderr.contains("(from the environment: SLUICE_QUEUE__CONCURRENCY)"),
        "{stderr}"
    );
}

#[test]
fn sluice_check_accepts_the_shipped_configs() {
    let Some(_) = plugins_dir() else { return };
    for name in ["config/sluice.toml", "config/sluice-redis.toml"] {
        let config = repo_root().join(name);
        let output = Command::new(SLUICE_BIN).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("OK"));
    }
    // The quickstart runs on the embedded store, the second config on Redis.
    let quickstart = sluice::config::load(Some(&repo_root().join("config/sluice.toml"))).unwrap();
    assert_eq!(quickstart.backend(), sluice::config::Backend::Embedded);
    let redis = sluice::config::load(Some(&repo_root().join("config/sluice-redis.toml"))).unwrap();
    assert_eq!(redis.backend(), sluice::config::Backend::Redis);
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
        let mut command = Command::new(SLUICE_BIN);
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
    assert!(exit.success(), "sluice exited with {exit}{}", log_of(addr));

    // The attempt finished and was recorded before the process ended: nothing to redo. (Read
    // through the store: a first attempt's success leaves no hash, only its log.)
    let config = sluice::config::from_toml(&format!("[redis]\nurl = \"{}\"\n", redis.url())).unwrap();
    let store = sluice::queue::Store::open(&config).unwrap();
    let id = sluice::id::parse_delivery(&delivery_id).unwrap();
    let shown = sluice::queue::Queue::delivery(&store, id).await.unwrap();
    let state = shown.as_ref().map(|d| (d.state.as_str(), d.attempts_made));
    assert_eq!(state, Some(("succeeded", 1)), "{}", log_of(addr));
    assert_eq!(receiver.count(), 1, "{}", log_of(addr));
}

/// Runs `sluice admin … args` against `gateway`; returns (success, stdout, stderr).
fn sluice_admin(gateway: std::net::SocketAddr, token: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = Command::new(SLUICE_BIN)
        .args(["admin", "--url", &format!("http://{gateway}"), "--token", token])
        .args(args)
        .output()
        .unwrap();
    let stdout = serde_json::from_slice(&output.stdout).unwrap_or_default();
    (output.status.success(), stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn sluice_admin_shows_lists_replays_and_switches_endpoints() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_next([Answer::Status(500), Answer::Status(500), Answer::Status(500)]);
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();
    let (_, accepted) = post_event(addr, "shop", r#"{"event":"order_created","n":1}"#).await;
    let event = accepted["id"].as_str().unwrap().to_string();
    let delivery = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();
    wait_for_state(addr, &delivery, "dead").await;

    // The CLI blocks; run it off the async threads.
    let admin = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sluice_admin(addr, ADMIN_TOKEN, &args)
        })
    };
    let (ok, shown, _) = admin(vec!["event".into(), event.clone()]).await.unwrap();
    assert!(ok && shown["payload"]["n"] == 1, "{shown}");
    let (ok, dead, _) = admin(vec!["dead-letters".into(), "--endpoint".into(), "orders".into()]).await.unwrap();
    assert!(ok && dead["dead_letters"][0]["id"] == delivery.as_str(), "{dead}");
    let (ok, replayed, _) = admin(vec!["replay".into(), delivery.clone()]).await.unwrap();
    assert!(ok && replayed["replayed"][0] == delivery.as_str(), "{replayed}");
    wait_for_state(addr, &delivery, "succeeded").await;
    let (ok, view, _) = admin(vec!["delivery".into(), delivery.clone()]).await.unwrap();
    assert!(ok && view["state"] == "succeeded" && view["attempts"].as_array().unwrap().len() == 5, "{view}");

    let (ok, _, _) = admin(vec!["disable".into(), "orders".into()]).await.unwrap();
    assert!(ok);
    let (_, listed, _) = admin(vec!["endpoints".into()]).await.unwrap();
    assert_eq!(listed["endpoints"][0]["state"], "disabled", "{listed}");
    let (ok, enabled, _) = admin(vec!["enable".into(), "orders".into()]).await.unwrap();
    assert!(ok && enabled["state"] == "enabled", "{enabled}");

    // Errors: a non-zero exit naming the cause.
    let (ok, _, stderr) = admin(vec!["replay-dead".into(), "nope".into()]).await.unwrap();
    assert!(!ok && stderr.contains("404") && stderr.contains("endpoint `nope` not found"), "{stderr}");
    let wrong = tokio::task::spawn_blocking(move || sluice_admin(addr, "wrong-token", &["endpoints"])).await.unwrap();
    assert!(!wrong.0 && wrong.2.contains("401"), "{}", wrong.2);
    gateway.shutdown().await;
}

#[tokio::test]
async fn json_logs_carry_delivery_ids_and_never_a_secret() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    receiver.answer_next([Answer::Status(500)]);
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-logs-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "source-token-that-must-not-leak";
    let github_secret = "github-secret-that-must-not-leak";
    let toml = base_toml(&redis).replace("127.0.0.1:0", &addr.to_string()).replace("allow_unauthenticated_sources = true", "")
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[sources]]\nname = \"shop\"\ntoken = \"{token}\"\n[[sources]]\nname = \"gh\"\nverify = \"github\"\nsecret = \"{github_secret}\"\n\
             [[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n[[routes]]\nsource = \"gh\"\nendpoints = [\"orders\"]\n"
        );
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let log = dir.join("sluice.log");
    let child = Command::new(SLUICE_BIN)
        .args(["--log-format", "json", "run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info,sluice=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let sluice = SluiceProcess(child);
    wait_listening(addr).await;
    let post = |source: &str, auth: (&'static str, String)| {
        client()
            .post(format!("http://{addr}/v1/events/{source}"))
            .header("content-type", "application/json")
            .header(auth.0, auth.1)
            .body(r#"{"event":"order_created"}"#)
            .send()
    };
    let answer = post("shop", ("authorization", format!("Bearer {token}"))).await.unwrap().bytes().await.unwrap();
    let accepted: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(post("shop", ("authorization", "Bearer wrong-but-secret".into())).await.unwrap().status(), 401);
    assert_eq!(post("gh", ("x-hub-signature-256", "sha256=deadbeef".into())).await.unwrap().status(), 401);
    let delivery = accepted["deliveries"][0]["id"].as_str().unwrap();
    // 500, then 200: one failed and one successful attempt are logged.
    wait_for_state(addr, delivery, "succeeded").await;
    drop(sluice);

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [token, github_secret, "wrong-but-secret", "deadbeef", SECRET, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "`{secret}` appears in the log");
    }
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let about_deliveries: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("delivery_id").is_some()).collect();
    assert!(about_deliveries.len() >= 2, "expected the failed and the successful attempt:\n{text}");
    for line in about_deliveries {
        assert!(line["event_id"].is_string() && line["endpoint"] == "orders", "delivery line without ids: {line}");
    }
}

#[test]
fn sluice_check_names_the_queue_and_masks_a_redis_password() {
    let dir = Scratch::new("check-queue");
    let config = dir.path().join("sluice.toml");
    let toml =
        "[redis]\nurl = \"redis://:s3cret-pass@127.0.0.1:6379/\"\n[security]\nallow_unauthenticated_sources = true\n"
            .to_string()
            + &endpoint_toml("orders", "https://example.com/hook", "")
            + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    std::fs::write(&config, toml).unwrap();
    let output = Command::new(SLUICE_BIN).args(["check", "--config", config.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("queue: redis redis://:***@127.0.0.1:6379/"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_plan_compares_a_file_with_the_running_gateway_and_exits_0_2_or_1() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let dir = Scratch::new("config-plan");
    let file = dir.path().join("sluice.toml");
    let running = base_toml(&redis)
        + "\n[queue]\nbatch = 100\n"
        + &endpoint_toml("billing", &receiver.url(), "")
        + &endpoint_toml("crm", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"billing\", \"crm\"]\n";
    std::fs::write(&file, &running).unwrap();
    let gateway = sluice::Gateway::start(sluice::config::load(Some(&file)).unwrap()).await.unwrap();

    // What the admin API shows: every key, secrets masked with a fingerprint, and a hash.
    let (status, shown) = admin_get(gateway.addr(), "/v1/config").await;
    assert_eq!(status, 200, "{shown}");
    assert!(shown["hash"].as_str().unwrap().starts_with("sha256:"), "{shown}");
    assert_eq!(shown["config"]["queue"]["batch"], 100);
    assert!(shown["config"]["endpoints"][0]["secret"].as_str().unwrap().starts_with("***sha256:"));
    let text = shown.to_string();
    assert!(!text.contains(SECRET.trim_start_matches("whsec_")) && !text.contains(ADMIN_TOKEN), "{text}");
    let anonymous = client().get(format!("http://{}/v1/config", gateway.addr())).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let plan = |file: &std::path::Path| {
        Command::new(SLUICE_BIN)
            .args(["config", "plan", "--config", file.to_str().unwrap()])
            .args(["--url", &format!("http://{}", gateway.addr()), "--token", ADMIN_TOKEN])
            .output()
            .unwrap()
    };
    // The file it runs on: nothing to change.
    let output = plan(&file);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no change"));

    // crm goes, audit comes, a queue key changes: each named, with a warning for crm's deliveries.
    let changed = dir.path().join("changed.toml");
    let proposed = running
        .replace("batch = 100", "batch = 200")
        .replace("name = \"crm\"", "name = \"audit\"")
        .replace("[\"billing\", \"crm\"]", "[\"billing\", \"audit\"]");
    std::fs::write(&changed, proposed).unwrap();
    let output = plan(&changed);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    for line in [
        "~ changed `queue.batch`: 100 → 200",
        "- removed endpoint `crm`",
        "+ added endpoint `audit`",
        "~ changed `routes[0].endpoints`",
        "! endpoint `crm` removed",
    ] {
        assert_eq!(stdout.matches(line).count(), 1, "`{line}` once in:\n{stdout}");
    }

    // An invalid file: every problem, exit 1, nothing compared.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, running.replace("batch = 100", "batch = \"many\"\nbatchez = 1")).unwrap();
    let output = plan(&broken);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("queue.batch: ") && stderr.contains("unknown key `batchez`"), "{stderr}");
    gateway.shutdown().await;
}

/// Runs `sluice plugin test PLUGIN --fixtures DIR`; returns (exit code, stdout).
fn plugin_fixtures(plugin: &std::path::Path, fixtures: &std::path::Path) -> (Option<i32>, String) {
    let output = Command::new(SLUICE_BIN)
        .args(["plugin", "test", plugin.to_str().unwrap(), "--fixtures", fixtures.to_str().unwrap()])
        .args(["--cache-dir", shared_wasm_cache().to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[test]
fn every_example_plugin_passes_the_fixtures_it_ships() {
    let Some(dist) = plugins_dir() else { return };
    let mut tested = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("plugins")).unwrap() {
        let dir = entry.unwrap().path();
        let fixtures = dir.join("fixtures");
        if !fixtures.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let (code, out) = plugin_fixtures(&dist.join(format!("{name}.wasm")), &fixtures);
        assert_eq!(code, Some(0), "{name}:\n{out}");
        assert!(out.contains(", 0 failed"), "{name}:\n{out}");
        tested.push(name);
    }
    tested.sort();
    let languages = ["as-tagger", "c-prefix", "js-filter", "python-router", "rust-filter"];
    assert!(languages.iter().all(|l| tested.iter().any(|t| t == l)), "every language ships fixtures: {tested:?}");
}

#[test]
fn a_fixture_whose_verdict_differs_fails_with_where_it_differs() {
    let Some(dist) = plugins_dir() else { return };
    let dir = Scratch::new("fixtures");
    std::fs::write(dir.path().join("a.event.json"), r#"{"type":"test.ping","order_id":1}"#).unwrap();
    std::fs::write(dir.path().join("a.config.toml"), "drop_types = [\"test.*\"]\n").unwrap();
    std::fs::write(dir.path().join("a.expect.json"), r#"{"verdict":"pass"}"#).unwrap();
    std::fs::write(dir.path().join("b.event.json"), r#"{"type":"order","order_id":1}"#).unwrap();
    std::fs::write(dir.path().join("b.expect.json"), r#"{"verdict":"pass","payload":{"order_id":1}}"#).unwrap();
    std::fs::write(dir.path().join("c.event.json"), r#"{"type":"order"}"#).unwrap();
    let (code, out) = plugin_fixtures(&dist.join("rust-filter.wasm"), dir.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL a") && out.contains("at `verdict`: expected \"pass\", got \"drop\""), "{out}");
    assert!(out.contains("ok   b"), "{out}");
    assert!(out.contains("FAIL c") && out.contains("c.expect.json"), "a fixture without its expectation fails: {out}");
    assert!(out.contains("3 fixture(s), 1 passed, 2 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_plan_names_plugins_the_same_way_wherever_the_file_is_given_from() {
    let Some(filter) = plugin_file("rust-filter") else { return };
    let redis = RedisServer::start().await;
    let dir = Scratch::new("config-plan-paths");
    std::fs::copy(&filter, dir.path().join("filter.wasm")).unwrap();
    let file = dir.path().join("sluice.toml");
    let text = base_toml(&redis) + "\n[[plugins]]\nname = \"filter\"\npath = \"filter.wasm\"\n";
    std::fs::write(&file, text).unwrap();
    // The gateway started with the file's absolute path, the plan run from its directory with a
    // relative one: the plugin's path is the same file, so nothing changes.
    let gateway = sluice::Gateway::start(sluice::config::load(Some(&file)).unwrap()).await.unwrap();
    let output = Command::new(SLUICE_BIN)
        .current_dir(dir.path())
        .args(["config", "plan", "--config", "sluice.toml"])
        .args(["--url", &format!("http://{}", gateway.addr()), "--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("no change"), "{stdout}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn sighup_and_config_reload_apply_the_edited_file_to_a_running_sluice_or_list_its_problems() {
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let routes =
        endpoint_toml("orders", &receiver.url(), "") + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let (mut sluice, addr) = spawn_sluice(&redis, &routes).await;
    let config = bin_dir(addr).join("sluice.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(post_event(addr, "crm", "{}").await.0, 404);
    let (_, before) = admin_get(addr, "/v1/config").await;

    // SIGHUP: the file is read again and the new route serves.
    std::fs::write(&config, text.clone() + "\n[[routes]]\nsource = \"crm\"\nendpoints = [\"orders\"]\n").unwrap();
    let pid = rustix::process::Pid::from_child(&sluice.0);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // SIGHUP's default action ends a process: this one must have taken it as a reload.
        let exited = sluice.0.try_wait().unwrap();
        assert!(exited.is_none(), "sluice ended ({exited:?}) on SIGHUP{}", log_of(addr));
        if admin_get(addr, "/v1/config").await.1["hash"] != before["hash"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the configuration{}", log_of(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, accepted) = post_event(addr, "crm", r#"{"event":"lead_created"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(receiver.next().await.json()["event"], "lead_created");

    let reload = || {
        Command::new(SLUICE_BIN)
            .args(["config", "reload", "--url", &format!("http://{addr}"), "--token", ADMIN_TOKEN])
            .output()
            .unwrap()
    };
    // `sluice config reload`: the route goes again, and the change is printed.
    std::fs::write(&config, &text).unwrap();
    let output = reload();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("removed routes[1] (source `crm`"), "{stdout}");
    assert_eq!(post_event(addr, "crm", "{}").await.0, 404);
    assert_eq!(admin_get(addr, "/v1/config").await.1["hash"], before["hash"]);

    // A broken file: exit 1, every problem on stderr, nothing applied.
    std::fs::write(&config, text + "\n[queue]\nlease = \"soon\"\nbatchez = 1\n").unwrap();
    let output = reload();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("queue.lease") && stderr.contains("batchez"), "{stderr}");
    assert_eq!(post_event(addr, "shop", "{}").await.0, 202);
}
