//! Running with no other service: the shipped quickstart config and `sluice run` without a config
//! both keep their queue in an embedded file, and what was accepted survives a SIGKILL.
//! No redis-server is started by these tests.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const SOURCE_TOKEN: &str = "change-me-source-token";

async fn post_with_token(addr: std::net::SocketAddr, body: &str) -> (u16, Value) {
    post_event_as(addr, "shop", body, Some(SOURCE_TOKEN)).await
}

/// Polls a delivery until at least one attempt is recorded.
async fn wait_attempted(addr: std::net::SocketAddr, delivery: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, view) = admin_get(addr, &format!("/v1/deliveries/{delivery}")).await;
        // An attempt counts (attempts_made) once it is settled with its record.
        if status == 200 && view["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt of {delivery}: {status} {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_quickstart_config_runs_with_no_redis_and_keeps_events_through_a_sigkill() {
    let Some(_) = plugins_dir() else { return };
    let dir = Scratch::new("quickstart");
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let store = dir.path().join("data").join("queue.redb");
    let config = repo_root().join("config/sluice.toml");
    let args = ["run", "--config", config.to_str().unwrap()];
    let env = [
        ("SLUICE_SERVER__LISTEN", addr.to_string()),
        ("SLUICE_QUEUE__PATH", store.display().to_string()),
        ("SLUICE_ADMIN__TOKEN", ADMIN_TOKEN.to_string()),
        ("HOME", dir.path().display().to_string()),
    ];
    let log = dir.path().join("sluice.log");
    let sluice = SluiceProcess::spawn(&args, &env, Some(&log));
    wait_listening(addr).await;
    let ready = client().get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // The README's curl.
    let (status, accepted) = post_with_token(addr, r#"{"event":"order_created","order_id":12345}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let deliveries = accepted["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{accepted}");
    // Nothing listens on the quickstart's endpoint URL in this test: the attempt fails and is logged.
    let first = deliveries[0]["id"].as_str().unwrap();
    let view = wait_attempted(addr, first).await;
    assert_eq!(view["state"], "pending", "{view}");
    assert!(view["attempts"][0]["error"].is_string(), "{view}");
    let (status, dropped) = post_with_token(addr, r#"{"type":"test.ping"}"#).await;
    assert_eq!((status, dropped["deliveries"].as_array().map(Vec::len)), (202, Some(0)), "{dropped}");
    assert!(store.exists(), "the store is the configured file");

    // SIGKILL, then start again on the same file: the event and its deliveries are still there.
    drop(sluice);
    let _sluice = SluiceProcess::spawn(&args, &env, Some(&log));
    wait_listening(addr).await;
    let event = accepted["id"].as_str().unwrap();
    let (status, stored) = admin_get(addr, &format!("/v1/events/{event}")).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["payload"]["order_id"], 12345);
    let states: Vec<&str> =
        stored["deliveries"].as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending"], "{stored}");
    let (_, again) = admin_get(addr, &format!("/v1/deliveries/{first}")).await;
    assert!(again["attempts_made"].as_u64().unwrap() >= 1, "the attempt log survived: {again}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("embedded store"), "{text}");
    assert!(!text.to_lowercase().contains("redis"), "nothing about Redis on the embedded backend:\n{text}");
}

#[tokio::test]
async fn sluice_run_without_a_config_serves_on_8080_with_its_store_in_the_data_directory() {
    // The built-in defaults, as the binary loads them without a file.
    let defaults = sluice::config::load(None).unwrap();
    assert_eq!(defaults.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(defaults.backend(), sluice::config::Backend::Embedded);
    let dir = Scratch::new("defaults");
    let mut env = vec![
        ("XDG_DATA_HOME", dir.path().join("data").display().to_string()),
        ("HOME", dir.path().display().to_string()),
    ];
    // Run on the default address; should something else hold it on this machine, on another port
    // (the address is then checked through the defaults above only).
    let mut addr: std::net::SocketAddr = defaults.server.listen;
    if std::net::TcpListener::bind(addr).is_err() {
        addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        println!("note: 127.0.0.1:8080 is taken on this machine; the binary runs on {addr} instead");
        env.push(("SLUICE_SERVER__LISTEN", addr.to_string()));
    }
    let log = dir.path().join("sluice.log");
    let _sluice = SluiceProcess::spawn(&["run"], &env, Some(&log));
    wait_listening(addr).await;
    let ready = client().get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert!(dir.path().join("data/sluice/queue.redb").exists(), "the store is under $XDG_DATA_HOME/sluice");
    // Nothing is routed without a config: the answer says so.
    let (status, body) = post_event(addr, "shop", "{}").await;
    assert_eq!(status, 404, "{body}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("No routes configured"), "{text}");
}

#[tokio::test]
async fn a_second_gateway_on_the_same_embedded_store_is_refused() {
    let dir = Scratch::new("store-lock");
    let store = dir.path().join("queue.redb");
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, base_toml_embedded() + &format!("\n[queue]\npath = \"{}\"\n", store.display())).unwrap();
    let first_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("first.log");
    let args = ["run", "--config", config.to_str().unwrap()];
    let _first = SluiceProcess::spawn(&args, &[("SLUICE_SERVER__LISTEN", first_addr.to_string())], Some(&log));
    wait_listening(first_addr).await;

    let second = Command::new(SLUICE_BIN)
        .args(args)
        .env("SLUICE_SERVER__LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second gateway started:\n{stderr}");
    assert!(stderr.contains("another process has it open") && stderr.contains("queue.redb"), "{stderr}");
    let ready = client().get(format!("http://{first_addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "the first gateway keeps serving");
}

#[tokio::test]
async fn a_full_disk_is_503_with_nothing_lost_and_the_store_resumes_when_space_returns() {
    // A full disk without privileges: a file-size limit on the gateway (soft, so it can be lifted
    // again with prlimit), with SIGXFSZ ignored so a write past it fails with EFBIG.
    let dir = Scratch::new("full-disk");
    let mut receiver = Receiver::start().await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("sluice.toml");
    let toml = base_toml_embedded().replace("127.0.0.1:0", &addr.to_string()).replace("65536", "200000")
        + &format!("\n[queue]\npath = \"{}\"\nlease = \"6s\"\n", dir.path().join("queue.redb").display())
        + &endpoint_toml("orders", &receiver.url(), "timeout = \"1s\"")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    std::fs::write(&config, toml).unwrap();
    let log = dir.path().join("sluice.log");
    let script = r#"trap "" XFSZ; ulimit -S -f 4096; exec "$0" run --config "$1""#;
    // `exec` keeps the process: the pid is the gateway's.
    let sluice =
        SluiceProcess::spawn_program("sh", &["-c", script, SLUICE_BIN, config.to_str().unwrap()], &[], Some(&log));
    wait_listening(addr).await;

    // Big events until the store cannot take one.
    let pad = "a".repeat(100_000);
    let mut accepted = Vec::new();
    let refused = loop {
        let n = accepted.len();
        let (status, body) = post_event(addr, "shop", &format!(r#"{{"event":"e","n":{n},"pad":"{pad}"}}"#)).await;
        match status {
            202 => accepted.push((n as i64, body["id"].as_str().unwrap().to_string())),
            _ => break (status, body),
        }
        assert!(accepted.len() < 500, "the file-size limit never bit");
    };
    assert_eq!(refused.0, 503, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "queue_unavailable");
    assert!(!accepted.is_empty(), "events were accepted before the disk filled up");
    let text = std::fs::read_to_string(&log).unwrap();
    let ready = client().get(format!("http://{addr}/readyz")).send().await.unwrap().status().as_u16();
    // Not ready until a write succeeds again (one may, when a commit freed pages meanwhile).
    assert!(ready == 503 || text.contains("writes again"), "readyz {ready} while the store cannot write");
    assert_eq!(client().get(format!("http://{addr}/healthz")).send().await.unwrap().status().as_u16(), 200);
    // While the disk stays full, big events get 503 (never a 500), or 202 when space was freed.
    let mut refused_n = vec![accepted.len() as i64];
    for _ in 0..5 {
        let n = (accepted.len() + refused_n.len()) as i64;
        let (status, body) = post_event(addr, "shop", &format!(r#"{{"event":"e","n":{n},"pad":"{pad}"}}"#)).await;
        match status {
            202 => accepted.push((n, body["id"].as_str().unwrap().to_string())),
            503 => refused_n.push(n),
            other => panic!("a full disk answered {other}: {body}"),
        }
    }

    // Space comes back: the next write reopens the store and succeeds, without a restart.
    let pid = sluice.0.id().to_string();
    let lifted = Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited"]).status().unwrap();
    assert!(lifted.success(), "prlimit could not lift the limit");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = (accepted.len() + refused_n.len()) as i64;
        let (status, body) = post_event(addr, "shop", &format!(r#"{{"event":"e","n":{n}}}"#)).await;
        if status == 202 {
            accepted.push((n, body["id"].as_str().unwrap().to_string()));
            break;
        }
        refused_n.push(n);
        assert!(tokio::time::Instant::now() < deadline, "ingest never recovered: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = client().get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // Every accepted event arrives (settlements that failed meanwhile come round after their lease).
    let mut seen = std::collections::HashSet::new();
    while seen.len() < accepted.len() {
        let got = tokio::time::timeout(PATIENCE, receiver.next()).await.expect("an accepted event never arrived");
        seen.insert(got.json()["n"].as_i64().unwrap());
    }
    let expected: std::collections::HashSet<i64> = accepted.iter().map(|(n, _)| *n).collect();
    assert_eq!(seen, expected, "every accepted event delivered, no refused one");
    assert!(refused_n.iter().all(|n| !seen.contains(n)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("could not write (disk full or failing?)") && text.contains("writes again"), "{text}");
}
