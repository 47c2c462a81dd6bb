//! Config reload (`POST /v1/config/reload`, SIGHUP): applied whole while producers run at full
//! speed, or refused whole with every problem listed; keys that need a restart are refused.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::harness::*;

/// The most a receiver may take to get every delivery once the producers stop (a hang, not a speed check).
const GIVE_UP: Duration = Duration::from_secs(120);

/// What the producers saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// Every answer that was not 202, with its body.
    failures: Mutex<Vec<(u16, Value)>>,
    /// (delivery id, endpoint) of every delivery of every 202.
    deliveries: Mutex<Vec<(String, String)>>,
    progress: Notify,
}

impl Seen {
    /// Waits until at least `n` events were accepted in all.
    async fn accepted_at_least(&self, n: usize) {
        loop {
            let notified = self.progress.notified();
            if self.accepted.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }
}

fn spawn_producers(
    addr: std::net::SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|p| {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body = format!(r#"{{"event":"order_created","order_id":{n},"producer":{p}}}"#);
                    let (status, answer) = post_event(addr, "shop", &body).await;
                    if status != 202 {
                        seen.failures.lock().unwrap().push((status, answer));
                        continue;
                    }
                    let deliveries =
                        answer["deliveries"].as_array().unwrap().iter().map(|d| {
                            (d["id"].as_str().unwrap().to_string(), d["endpoint"].as_str().unwrap().to_string())
                        });
                    seen.deliveries.lock().unwrap().extend(deliveries);
                    seen.accepted.fetch_add(1, Ordering::SeqCst);
                    seen.progress.notify_waiters();
                }
            })
        })
        .collect()
}

/// Waits until `receiver` got every id of `expected` (duplicates allowed: at least once).
async fn receive_all(receiver: &mut Receiver, expected: &HashSet<String>) -> Vec<Received> {
    let mut got = HashSet::new();
    let mut all = Vec::new();
    for received in receiver.all() {
        got.insert(received.header("webhook-id").to_string());
        all.push(received);
    }
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    while !expected.is_subset(&got) {
        let missing = expected.difference(&got).count();
        let received = tokio::time::timeout_at(deadline, receiver.next())
            .await
            .unwrap_or_else(|_| panic!("{missing} of {} deliveries never arrived", expected.len()));
        got.insert(received.header("webhook-id").to_string());
        all.push(received);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_that_add_and_remove_routes_endpoints_and_a_plugin_under_four_producers_fail_nothing_and_lose_nothing(
) {
    let Some(transform) = plugin_file("rust-transform") else { return };
    let redis = RedisServer::start().await;
    let (mut stable, mut extra) = (Receiver::start().await, Receiver::start().await);
    let dir = Scratch::new("reload");
    let file = dir.path().join("sluice.toml");
    let base = base_toml(&redis) + &endpoint_toml("stable", &stable.url(), "");
    // A: shop → stable. B: shop → transform → stable + extra, and a second route (source crm).
    let a = base.clone() + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"stable\"]\n";
    let b = base
        + &endpoint_toml("extra", &extra.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"v2\"\npath = \"{}\"\nconfig = {{ headers = {{ x-transformed = \"yes\" }} }}\n",
            transform.display()
        )
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"v2\"]\nendpoints = [\"stable\", \"extra\"]\n"
        + "\n[[routes]]\nsource = \"crm\"\nendpoints = [\"extra\"]\n";
    std::fs::write(&file, &a).unwrap();
    let gateway = sluice::Gateway::start_file(&file).await.unwrap();
    let addr = gateway.addr();

    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let producers = spawn_producers(addr, seen.clone(), stop.clone());
    let mut hashes = HashSet::new();
    for round in 0..10 {
        // Each configuration serves a share of the traffic before the next reload.
        seen.accepted_at_least(100 * (round + 1)).await;
        std::fs::write(&file, if round % 2 == 0 { &b } else { &a }).unwrap();
        let (status, reloaded) = admin_post(addr, "/v1/config/reload").await;
        assert_eq!(status, 200, "reload {round}: {reloaded}");
        assert_eq!(reloaded["changed"], true, "reload {round}: {reloaded}");
        let changes: Vec<&str> = reloaded["changes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let (added, removed) = if round % 2 == 0 { ("added", "removed") } else { ("removed", "added") };
        assert!(changes.contains(&format!("{added} endpoint `extra`").as_str()), "reload {round}: {changes:?}");
        assert!(changes.contains(&format!("{added} plugin `v2`").as_str()), "reload {round}: {changes:?}");
        assert!(changes.iter().any(|c| c.starts_with(&format!("{added} routes[1]"))), "reload {round}: {changes:?}");
        assert!(!changes.iter().any(|c| c.starts_with(removed) && c.contains("stable")), "{changes:?}");
        let (_, shown) = admin_get(addr, "/v1/config").await;
        assert_eq!(shown["hash"], reloaded["hash"], "GET /v1/config shows what the reload applied");
        hashes.insert(reloaded["hash"].as_str().unwrap().to_string());
        if round % 2 == 0 {
            // The route B adds answers at once.
            let (status, answer) = post_event(addr, "crm", r#"{"event":"lead"}"#).await;
            assert_eq!(status, 202, "{answer}");
            let delivery = answer["deliveries"][0]["id"].as_str().unwrap().to_string();
            seen.deliveries.lock().unwrap().push((delivery, "extra".into()));
        }
    }
    assert_eq!(hashes.len(), 2, "A and B alternate: {hashes:?}");
    // The last reload applied A: put B back so `extra`'s waiting deliveries go out.
    seen.accepted_at_least(1_100).await;
    std::fs::write(&file, &b).unwrap();
    assert_eq!(admin_post(addr, "/v1/config/reload").await.0, 200);
    stop.store(true, Ordering::SeqCst);
    for producer in producers {
        producer.await.unwrap();
    }

    let failures = seen.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} requests failed during reloads, e.g. {:?}", failures.len(), failures.first());
    let deliveries = seen.deliveries.lock().unwrap().clone();
    let of = |endpoint: &str| -> HashSet<String> {
        deliveries.iter().filter(|(_, e)| e == endpoint).map(|(id, _)| id.clone()).collect()
    };
    let (to_stable, to_extra) = (of("stable"), of("extra"));
    assert!(to_extra.len() >= 5, "B's routes made deliveries to extra: {}", to_extra.len());
    let got = receive_all(&mut stable, &to_stable).await;
    receive_all(&mut extra, &to_extra).await;
    // Events under B went through the plugin, those under A did not: each ran under one config.
    let transformed = got.iter().filter(|r| r.header("x-transformed") == "yes").count();
    assert!(transformed > 0 && transformed < got.len(), "{transformed} of {} transformed", got.len());
    println!(
        "reloads: {} events accepted, {} deliveries to stable and {} to extra all arrived, 0 failed requests",
        seen.accepted.load(Ordering::SeqCst),
        to_stable.len(),
        to_extra.len()
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_problems_or_restart_keys_applies_nothing_and_says_why() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let dir = Scratch::new("reload-refused");
    let file = dir.path().join("sluice.toml");
    let good = base_toml(&redis)
        + &endpoint_toml("billing", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"billing\"]\n";
    std::fs::write(&file, &good).unwrap();
    let gateway = sluice::Gateway::start_file(&file).await.unwrap();
    let addr = gateway.addr();
    let (_, before) = admin_get(addr, "/v1/config").await;

    // Three problems at once: a bad duration, a route to an endpoint that does not exist, a
    // plugin file that is not there. Every one is listed; nothing changes.
    let broken = good
        .replace("[[routes]]", "[[plugins]]\nname = \"gone\"\npath = \"/nonexistent/gone.wasm\"\n\n[[routes]]")
        + "\n[[routes]]\nsource = \"crm\"\nendpoints = [\"nobody\"]\n"
        + "\n[queue]\nlease = \"soon\"\n";
    std::fs::write(&file, &broken).unwrap();
    let (status, refused) = admin_post(addr, "/v1/config/reload").await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_config");
    let problems = refused["error"]["problems"].to_string();
    for expected in ["queue.lease", "nobody", "gone"] {
        assert!(problems.contains(expected), "`{expected}` in {problems}");
    }
    let (_, after) = admin_get(addr, "/v1/config").await;
    assert_eq!(after["hash"], before["hash"]);
    assert_eq!(post_event(addr, "crm", "{}").await.0, 404, "the refused route is not there");

    // A key only a restart applies: refused with the key, its old and new value.
    std::fs::write(&file, good.replace("[admin]", "[queue]\nshards = 4\n\n[admin]")).unwrap();
    let (status, refused) = admin_post(addr, "/v1/config/reload").await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "needs_restart");
    assert_eq!(refused["error"]["problems"][0], "`queue.shards`: 1 → 4", "{refused}");
    assert_eq!(admin_get(addr, "/v1/config").await.1["hash"], before["hash"]);

    // The same file as running: nothing to apply.
    std::fs::write(&file, &good).unwrap();
    let (status, same) = admin_post(addr, "/v1/config/reload").await;
    assert_eq!((status, &same["changed"]), (200, &Value::Bool(false)), "{same}");
    assert_eq!(post_event(addr, "shop", "{}").await.0, 202);
    gateway.shutdown().await;

    // A gateway started from a value has no file to read again.
    let gateway = start_gateway(&good).await;
    let (status, refused) = admin_post(gateway.addr(), "/v1/config/reload").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("no_config_file")), "{refused}");
    gateway.shutdown().await;
}

/// Polls `probe` (an admin read) until `done` holds for its answer, up to [`GIVE_UP`].
async fn until(what: &str, mut probe: impl AsyncFnMut() -> Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: last seen {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entry of `name` in `GET /v1/endpoints`, or null.
fn endpoint_entry(listing: &Value, name: &str) -> Value {
    listing["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null)
}

/// A reload removes endpoint `gone` while its deliveries are failing: they are parked (state
/// `paused`, the endpoint listed as `removed`), resume when a reload brings it back, and once
/// removed again are discarded on request as dead letters that say so.
async fn removed_endpoint_parks_resumes_and_discards(base: String, tag: &str) {
    let (keep, gone) = (Receiver::start().await, Receiver::start().await);
    gone.answer_always(Answer::Status(500));
    let dir = Scratch::new(tag);
    let file = dir.path().join("sluice.toml");
    let retries = format!("retry_schedule = [\"0s\"{}]", ", \"300ms\"".repeat(99));
    let with = base.clone()
        + &endpoint_toml("keep", &keep.url(), "")
        + &endpoint_toml("gone", &gone.url(), &retries)
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"keep\", \"gone\"]\n";
    let without =
        base + &endpoint_toml("keep", &keep.url(), "") + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"keep\"]\n";
    std::fs::write(&file, &with).unwrap();
    let gateway = sluice::Gateway::start_file(&file).await.unwrap();
    let addr = gateway.addr();
    let post = async |n: usize| -> HashSet<String> {
        let mut ids = HashSet::new();
        for i in 0..n {
            let (status, answer) = post_event(addr, "shop", &format!(r#"{{"event":"order_created","n":{i}}}"#)).await;
            assert_eq!(status, 202, "{answer}");
            let to_gone = answer["deliveries"].as_array().unwrap().iter().find(|d| d["endpoint"] == "gone").unwrap();
            ids.insert(to_gone["id"].as_str().unwrap().to_string());
        }
        ids
    };
    let remove = async |expect_parked: u64| {
        std::fs::write(&file, &without).unwrap();
        let (status, reloaded) = admin_post(addr, "/v1/config/reload").await;
        assert_eq!(status, 200, "{reloaded}");
        assert!(reloaded["changes"].to_string().contains("removed endpoint `gone`"), "{reloaded}");
        assert!(reloaded["warnings"].to_string().contains("endpoint `gone` removed"), "{reloaded}");
        // Each is parked when it next falls due (within a retry's 300 ms).
        until(
            "gone's deliveries parked",
            async || admin_get(addr, "/v1/endpoints").await.1,
            |listing| endpoint_entry(listing, "gone")["paused_deliveries"] == expect_parked,
        )
        .await
    };

    // Five deliveries to `gone` failing, then `gone` is removed: all five wait, none is attempted.
    let first = post(5).await;
    until("each attempted", async || Value::from(gone.count()), |n| n.as_u64() >= Some(5)).await;
    let listing = remove(5).await;
    let entry = endpoint_entry(&listing, "gone");
    assert_eq!(entry["state"], "removed", "{listing}");
    assert!(entry["removed_since"].as_u64().is_some(), "{listing}");
    let one = first.iter().next().unwrap();
    assert_eq!(admin_get(addr, &format!("/v1/deliveries/{one}")).await.1["state"], "paused");
    let attempts_while_removed = gone.count();

    // `gone` comes back (and answers 200 now): every parked delivery goes out.
    gone.answer_always(Answer::Status(200));
    std::fs::write(&file, &with).unwrap();
    assert_eq!(admin_post(addr, "/v1/config/reload").await.0, 200);
    for id in &first {
        wait_for_state(addr, id, "succeeded").await;
    }
    assert!(gone.count() >= attempts_while_removed + first.len(), "each attempted again once configured again");
    let listing = admin_get(addr, "/v1/endpoints").await.1;
    let entry = endpoint_entry(&listing, "gone");
    assert_eq!((entry["state"].as_str(), entry["paused_deliveries"].as_u64()), (Some("enabled"), Some(0)), "{listing}");

    // Removed again with three waiting, then discarded: dead letters that say why.
    gone.answer_always(Answer::Status(500));
    let before = gone.count();
    let second = post(3).await;
    until("each attempted", async || Value::from(gone.count()), |n| n.as_u64() >= Some(before as u64 + 3)).await;
    remove(3).await;
    let (status, discarded) = admin_post(addr, "/v1/endpoints/gone/discard").await;
    assert_eq!((status, discarded["discarded"].as_u64()), (200, Some(3)), "{discarded}");
    assert!(endpoint_entry(&admin_get(addr, "/v1/endpoints").await.1, "gone").is_null(), "no longer listed");
    let (_, dead) = admin_get(addr, "/v1/dead-letters?endpoint=gone").await;
    let dead: HashSet<String> =
        dead["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(dead, second, "the discarded deliveries are the dead letters");
    for id in &second {
        let view = admin_get(addr, &format!("/v1/deliveries/{id}")).await.1;
        assert_eq!(view["state"], "dead", "{view}");
        assert!(view["last_error"].as_str().unwrap().contains("discarded through the admin API"), "{view}");
    }
    assert_eq!(admin_post(addr, "/v1/endpoints/nobody/discard").await.0, 404);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_of_an_endpoint_a_reload_removed_wait_parked_resume_when_it_returns_or_are_discarded_on_redis() {
    let redis = RedisServer::start().await;
    removed_endpoint_parks_resumes_and_discards(base_toml(&redis), "removed-redis").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_of_an_endpoint_a_reload_removed_wait_parked_resume_when_it_returns_or_are_discarded_embedded() {
    let dir = Scratch::new("removed-embedded-store");
    let base = base_toml_embedded() + &format!("\n[queue]\npath = \"{}\"\n", dir.path().join("q.redb").display());
    removed_endpoint_parks_resumes_and_discards(base, "removed-embedded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_event_redriven_after_a_route_gained_an_endpoint_goes_only_to_the_new_one() {
    let redis = RedisServer::start().await;
    let (mut billing, mut audit) = (Receiver::start().await, Receiver::start().await);
    let dir = Scratch::new("redrive");
    let file = dir.path().join("sluice.toml");
    let base =
        base_toml(&redis) + &endpoint_toml("billing", &billing.url(), "") + &endpoint_toml("audit", &audit.url(), "");
    std::fs::write(&file, base.clone() + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"billing\"]\n").unwrap();
    let gateway = sluice::Gateway::start_file(&file).await.unwrap();
    let addr = gateway.addr();
    let body = r#"{"event":"order_created","order_id":12345}"#;
    let (status, accepted) = post_event(addr, "shop", body).await;
    assert_eq!(status, 202, "{accepted}");
    let event = accepted["id"].as_str().unwrap().to_string();
    wait_for_state(addr, accepted["deliveries"][0]["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(billing.next().await.json()["order_id"], 12345);

    // The route gains `audit`; the stored event is redriven: only audit gets it.
    std::fs::write(&file, base + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"billing\", \"audit\"]\n").unwrap();
    assert_eq!(admin_post(addr, "/v1/config/reload").await.0, 200);
    let (status, redriven) = admin_post(addr, &format!("/v1/events/{event}/redrive")).await;
    assert_eq!(status, 200, "{redriven}");
    assert_eq!(redriven["redrive_of"], event.as_str());
    assert_ne!(redriven["id"], event.as_str(), "a new event carries the deliveries");
    let deliveries = redriven["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{redriven}");
    assert_eq!(deliveries[0]["endpoint"], "audit");
    assert_eq!(redriven["skipped"][0]["endpoint"], "billing", "{redriven}");
    assert_eq!(redriven["skipped"][0]["state"], "succeeded", "{redriven}");
    let got = audit.next().await;
    assert_eq!(&got.body[..], body.as_bytes(), "the stored body, as received");
    assert!(signature_valid(&got));
    wait_for_state(addr, deliveries[0]["id"].as_str().unwrap(), "succeeded").await;
    let (_, copy) = admin_get(addr, &format!("/v1/events/{}", redriven["id"].as_str().unwrap())).await;
    assert_eq!((copy["source"].as_str(), copy["type"].as_str()), (Some("shop"), Some("order_created")), "{copy}");
    assert_eq!(billing.count(), 1, "billing had it: not sent again");

    // An unknown event is 404.
    assert_eq!(admin_post(addr, "/v1/events/evt_01JD0000000000000000000000/redrive").await.0, 404);
    gateway.shutdown().await;
}
