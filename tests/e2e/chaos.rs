//! At-least-once under faults: the real `sluice` binary takes 5,000 events while it is SIGKILLed
//! and restarted three times, Redis (AOF, fsync always) is SIGKILLed and restarted once, and the
//! receiver answers 500 to 20 % and hangs past the timeout on 2 % of requests. Every event must be
//! delivered in the end; duplicates are counted and printed (run with `--nocapture` to see them).
//! The same run on the embedded backend (one redb file) takes 3,000 events through two SIGKILLs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

pub(crate) const EVENTS: usize = 5_000;
const PRODUCERS: usize = 8;
/// The most time the whole run may take before the test gives up (a hang, not a speed check).
const GIVE_UP: Duration = Duration::from_secs(300);

/// Starts `sluice run` with its log appended to `log`, and waits until it answers.
async fn start(config: &Path, log: &Path, addr: std::net::SocketAddr) -> SluiceProcess {
    let sluice = SluiceProcess::spawn(&["run", "--config", config.to_str().unwrap()], &[], Some(log));
    wait_listening(addr).await;
    sluice
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) next: AtomicUsize,
    pub(crate) accepted: AtomicUsize,
    pub(crate) unavailable: AtomicUsize,
    pub(crate) other_refusals: AtomicUsize,
}

/// Producers post events 0..total, each until it is answered 202 (a producer's own at-least-once).
pub(crate) fn spawn_producers(
    addr: std::net::SocketAddr,
    counters: Arc<Counters>,
    total: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..PRODUCERS)
        .map(|_| {
            let counters = counters.clone();
            tokio::spawn(async move {
                let http = client();
                loop {
                    let n = counters.next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        return;
                    }
                    loop {
                        let sent = http
                            .post(format!("http://{addr}/v1/events/shop"))
                            .header("content-type", "application/json")
                            .body(format!(r#"{{"event":"order_created","n":{n}}}"#))
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        match sent.map(|r| r.status().as_u16()) {
                            Ok(202) => {
                                counters.accepted.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(503) => counters.unavailable.fetch_add(1, Ordering::SeqCst),
                            _ => counters.other_refusals.fetch_add(1, Ordering::SeqCst),
                        };
                        // The producer's retry pace while the gateway or Redis is away.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

pub(crate) async fn wait_until(what: &str, started: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(started.elapsed() < GIVE_UP, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_sigkills_and_a_redis_restart() {
    let started = Instant::now();
    let scratch = Scratch::new("chaos-redis");
    let dir = scratch.path();
    let redis_port = free_port();
    let mut redis = RedisServer::start_persistent(redis_port, dir).await;
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Mixed { fail: 20, hang: 2, hang_for: Duration::from_secs(3) });

    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(&config, chaos_toml(base_toml(&redis), addr, "", &receiver)).unwrap();
    let log = dir.join("sluice.log");

    let mut sluice = start(&config, &log, addr).await;
    let counters = Arc::new(Counters::default());
    let producers = spawn_producers(addr, counters.clone(), EVENTS);
    let accepted = || counters.accepted.load(Ordering::SeqCst);
    let mut kills = 0;

    // Faults, each once the run has reached a given point.
    wait_until("1,000 events are accepted", started, || accepted() >= 1_000).await;
    sluice.kill();
    kills += 1;
    sluice = start(&config, &log, addr).await;

    wait_until("2,000 events are accepted", started, || accepted() >= 2_000).await;
    let claim_warnings_before = count_lines(&log, "Cannot claim deliveries");
    let unavailable_before = counters.unavailable.load(Ordering::SeqCst);
    redis.kill();
    let outage = Instant::now();
    // Redis stays away for 2 s (long enough for several worker back-off rounds) and until ingest
    // has refused events with 503.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_until("ingest answers 503", started, || counters.unavailable.load(Ordering::SeqCst) > unavailable_before)
        .await;
    redis = RedisServer::start_persistent(redis_port, dir).await;
    let outage = outage.elapsed();
    let accepted_during_outage = accepted();

    wait_until("3,000 events are accepted", started, || accepted() >= 3_000).await;
    wait_until("the worker claims again", started, || count_lines(&log, "Queue reachable again") >= 1).await;
    let claim_warnings = count_lines(&log, "Cannot claim deliveries") - claim_warnings_before;
    let refusal_lines = count_lines(&log, "Event refused: the queue could not store it");
    sluice.kill();
    kills += 1;
    sluice = start(&config, &log, addr).await;

    wait_until("4,000 events are accepted", started, || accepted() >= 4_000).await;
    sluice.kill();
    kills += 1;
    sluice = start(&config, &log, addr).await;

    for producer in producers {
        producer.await.unwrap();
    }
    let all_accepted = Instant::now();

    let drained = drain(&receiver, EVENTS, started).await;
    let all_accepted = all_accepted.elapsed();
    println!(
        "chaos (redis): {EVENTS} events, {kills} SIGKILLs of sluice, 1 Redis SIGKILL + restart (AOF, down \
         {outage:.1?}; {} ingest 503s, {} other refusals/connection errors); {drained}; drained {all_accepted:.1?} \
         after the last 202; whole run {:.1?}",
        counters.unavailable.load(Ordering::SeqCst),
        counters.other_refusals.load(Ordering::SeqCst),
        started.elapsed(),
    );

    assert!(accepted_during_outage < 3_000, "the outage did not happen mid-run");
    // The worker backs off while Redis is away: one warning for the outage, not one per retry.
    assert!(
        (1..=2).contains(&claim_warnings),
        "{claim_warnings} `Cannot claim deliveries` warnings during a {outage:?} outage"
    );
    // Ingest refusals are logged at most once a second, not once per request.
    assert!(
        refusal_lines as f64 <= outage.as_secs_f64() + 2.0,
        "{refusal_lines} refusal lines for a {outage:?} outage ({} 503s)",
        counters.unavailable.load(Ordering::SeqCst)
    );
    drop(sluice);
    drop(redis);
}

/// The chaos run's config: `base` (with its queue backend) plus a short lease, an endpoint at
/// `receiver` with a 1 s timeout and 30 quick retries, and a route to it.
pub(crate) fn chaos_toml(base: String, addr: std::net::SocketAddr, queue: &str, receiver: &Receiver) -> String {
    let schedule = ["\"0s\"", "\"100ms\"", "\"200ms\"", "\"400ms\"", "\"800ms\""]
        .into_iter()
        .chain(std::iter::repeat_n("\"1s\"", 25))
        .collect::<Vec<_>>()
        .join(", ");
    base.replace("127.0.0.1:0", &addr.to_string())
        .replace("[admin]", &format!("[queue]\nlease = \"6s\"\n{queue}\n[admin]"))
        + &endpoint_toml("orders", &receiver.url(), &format!("timeout = \"1s\"\nretry_schedule = [{schedule}]"))
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n"
}

/// Waits until every event 0..total was answered 2xx at the receiver, asserts none is missing, and
/// describes the duplicates.
pub(crate) async fn drain(receiver: &Receiver, total: usize, started: Instant) -> String {
    let delivered = |receiver: &Receiver| -> HashSet<u64> {
        receiver.all().iter().filter(|r| r.ok).filter_map(|r| r.json()["n"].as_u64()).collect()
    };
    wait_until("every event is delivered", started, || delivered(receiver).len() == total).await;

    let requests = receiver.all();
    let ok: Vec<_> = requests.iter().filter(|r| r.ok).collect();
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    let mut per_event: HashMap<u64, HashSet<String>> = HashMap::new();
    for r in &ok {
        let delivery = r.header("webhook-id").to_string();
        *per_delivery.entry(delivery.clone()).or_default() += 1;
        per_event.entry(r.json()["n"].as_u64().unwrap()).or_default().insert(delivery);
    }
    let missing: Vec<usize> = (0..total).filter(|n| !per_event.contains_key(&(*n as u64))).collect();
    assert!(missing.is_empty(), "events never delivered: {missing:?}");
    let redelivered: usize = per_delivery.values().map(|c| c - 1).sum();
    let resubmitted: usize = per_event.values().map(|ids| ids.len() - 1).sum();
    format!(
        "receiver got {} requests, {} answered 2xx; duplicates: {redelivered} redeliveries of a delivery already \
         answered 2xx (lease expiry after a kill), {resubmitted} events stored twice (producer resent after a lost 202)",
        requests.len(),
        ok.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_sigkills_on_the_embedded_store() {
    const TOTAL: usize = 3_000;
    let started = Instant::now();
    let scratch = Scratch::new("chaos-embedded");
    let dir = scratch.path();
    let receiver = Receiver::start().await;
    receiver.answer_always(Answer::Mixed { fail: 20, hang: 2, hang_for: Duration::from_secs(3) });
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let store = dir.join("queue.redb");
    let config = dir.join("sluice.toml");
    let queue = format!("backend = \"embedded\"\npath = \"{}\"\n", store.display());
    std::fs::write(&config, chaos_toml(base_toml_embedded(), addr, &queue, &receiver)).unwrap();
    let log = dir.join("sluice.log");

    let mut sluice = start(&config, &log, addr).await;
    let counters = Arc::new(Counters::default());
    let producers = spawn_producers(addr, counters.clone(), TOTAL);
    let accepted = || counters.accepted.load(Ordering::SeqCst);
    for at in [1_000, 2_000] {
        wait_until(&format!("{at} events are accepted"), started, || accepted() >= at).await;
        sluice.kill();
        sluice = start(&config, &log, addr).await;
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let all_accepted = Instant::now();
    let drained = drain(&receiver, TOTAL, started).await;
    println!(
        "chaos (embedded): {TOTAL} events, 2 SIGKILLs of sluice ({} refusals/connection errors); {drained}; drained \
         {:.1?} after the last 202; whole run {:.1?}",
        counters.other_refusals.load(Ordering::SeqCst) + counters.unavailable.load(Ordering::SeqCst),
        all_accepted.elapsed(),
        started.elapsed(),
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("embedded store"), "the run used the embedded store");
    drop(sluice);
}
