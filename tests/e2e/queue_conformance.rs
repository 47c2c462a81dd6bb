//! The queue contract, one suite run against both backends (a real redis-server of the test's own,
//! and an embedded store in a scratch directory): every test below is instantiated once per backend
//! by `conformance!`, so the backends cannot drift apart.
//!
//! Waiting here is for time itself (a delay or lease to run out), the thing under test; every wait
//! is bounded by what the store says is next (`next_due_in`) or polls for the awaited state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice::queue::search::Search;
use sluice::queue::{AttemptRecord, Claimed, DeadCursor, NewDelivery, NewEvent, Queue, Settle, Store};
use ulid::Ulid;

use crate::harness::{RedisServer, Scratch, PATIENCE};

/// A store under test with what keeps it alive.
pub struct Subject {
    pub store: Store,
    _redis: Option<RedisServer>,
    _dir: Scratch,
}

pub enum Kind {
    Redis,
    Embedded,
    /// A Redis Cluster's seed nodes (the cluster is shared: each subject gets a key prefix of its own).
    Cluster(Vec<String>),
}

pub async fn open(kind: Kind, queue_toml: &str) -> Subject {
    let dir = Scratch::new("queue");
    let (toml, redis) = match kind {
        Kind::Redis => {
            let redis = RedisServer::start().await;
            (format!("[redis]\nurl = \"{}\"\n[queue]\n{queue_toml}\n", redis.url()), Some(redis))
        }
        Kind::Cluster(seeds) => {
            let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
            let prefix = format!("c{}", Ulid::new().to_string().to_lowercase());
            let redis = format!("[redis]\ncluster_nodes = [{}]\nprefix = \"{prefix}\"\n", seeds.join(", "));
            (format!("{redis}[queue]\n{queue_toml}\n"), None)
        }
        Kind::Embedded => {
            let path = dir.path().join("queue.redb");
            (format!("[queue]\nbackend = \"embedded\"\npath = \"{}\"\n{queue_toml}\n", path.display()), None)
        }
    };
    let config = sluice::config::from_toml(&toml).unwrap();
    config.validate().unwrap();
    let store = Store::open(&config).unwrap();
    Subject { store, _redis: redis, _dir: dir }
}

/// Instantiates each named test for both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
        /// The whole suite against one Redis Cluster (3 primaries, 3 replicas), a test after another.
        #[tokio::test]
        async fn a_redis_cluster_passes_every_conformance_test() {
            let cluster = crate::cluster::RedisCluster::start().await;
            $(
                println!("cluster conformance: {}", stringify!($name));
                $name(Kind::Cluster(cluster.seeds())).await;
            )*
        }
    };
}

conformance!(
    claims_in_order_of_next_attempt,
    a_lease_hides_a_delivery_until_it_runs_out_and_a_lapsed_lease_spends_no_attempt,
    retry_bury_replay_ack_with_the_attempt_log,
    defer_puts_back_without_counting_an_attempt,
    pause_parks_until_enable_and_only_while_disabled,
    endpoint_failure_runs_are_recorded_once,
    idempotency_keys_claim_complete_release_expire,
    an_idempotent_enqueue_stores_only_while_its_key_holds_its_mark,
    events_keep_payloads_headers_and_rewritten_bodies,
    finished_deliveries_expire_after_retention,
    dead_letters_expire_after_the_dead_letter_retention_and_their_event_outlives_them,
    replaying_an_endpoint_replays_every_dead_letter_however_many,
    depth_counts_due_scheduled_dead_and_parked,
    dead_letters_filter_by_endpoint_newest_first,
    dead_letter_pages_skip_nothing_when_one_batch_buries_many_at_once,
    search_finds_deliveries_by_endpoint_state_and_time_newest_first,
    a_search_over_more_records_than_a_page_reads_stops_and_resumes_where_it_stopped,
);

const LEASE: Duration = Duration::from_secs(60);

/// Stores one event with a delivery per `(endpoint, delay)`; returns the event id and delivery ids.
pub(crate) async fn enqueue(store: &Store, deliveries: &[(&str, Duration)]) -> (Ulid, Vec<Ulid>) {
    enqueue_with(store, b"{\"n\":1}", deliveries.iter().map(|(e, d)| (*e, *d, None)).collect()).await
}

async fn enqueue_with(
    store: &Store,
    payload: &[u8],
    deliveries: Vec<(&str, Duration, Option<Bytes>)>,
) -> (Ulid, Vec<Ulid>) {
    let event = sluice::id::new_event();
    let headers = vec![("x-origin".to_string(), "test".to_string())];
    let new = NewEvent {
        id: event,
        source: "shop",
        event_type: "order.created",
        headers: &headers,
        payload,
        idempotency: None,
    };
    let deliveries: Vec<NewDelivery> = deliveries
        .into_iter()
        .enumerate()
        .map(|(i, (endpoint, delay, payload))| NewDelivery {
            id: sluice::id::delivery_of(event, i + 1),
            endpoint: Arc::from(endpoint),
            headers: if payload.is_some() { vec![("x-rewritten".into(), "yes".into())] } else { Vec::new() },
            payload,
            delay,
        })
        .collect();
    store.enqueue(&new, &deliveries).await.unwrap();
    (event, deliveries.iter().map(|d| d.id).collect())
}

async fn claim(store: &Store, limit: usize, lease: Duration) -> (Vec<Claimed>, Option<Duration>) {
    let token = Ulid::new().to_string();
    let batch = store.claim(0, limit, lease, &token).await.unwrap();
    (batch.deliveries, batch.next_due_in)
}

/// Claims until `want` deliveries came back, waiting for the store's own `next_due_in` in between.
pub(crate) async fn claim_when_due(store: &Store, want: usize, lease: Duration) -> Vec<Claimed> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < want {
        let (mut claimed, next) = claim(store, want - got.len(), lease).await;
        got.append(&mut claimed);
        assert!(tokio::time::Instant::now() < deadline, "only {} of {want} deliveries fell due", got.len());
        if got.len() < want {
            let next = next.expect("deliveries left, so something is scheduled");
            tokio::time::sleep(next.max(Duration::from_millis(1))).await;
        }
    }
    got
}

pub(crate) fn record(attempt: u32, status: Option<u16>, error: Option<&str>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        at: 1,
        outcome: if status.is_some_and(|s| (200..300).contains(&s)) { "success" } else { "http_error" }.to_string(),
        status,
        error: error.map(str::to_string),
        latency_ms: 1.5,
        response: None,
    }
}

async fn view(store: &Store, id: Ulid) -> sluice::queue::DeliveryView {
    store.delivery(id).await.unwrap().expect("delivery is known")
}

pub(crate) async fn claimed_settles(store: &Store, claimed: &Claimed, record: Option<&AttemptRecord>, action: Settle) {
    assert!(store.settle(claimed, record, action).await.unwrap(), "the lease holder settles");
}

async fn claims_in_order_of_next_attempt(kind: Kind) {
    let s = open(kind, "").await;
    let (_, later) = enqueue(&s.store, &[("a", Duration::from_millis(2000))]).await;
    let (_, sooner) = enqueue(&s.store, &[("a", Duration::from_millis(1000))]).await;
    let (_, now) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let (_, tomorrow) = enqueue(&s.store, &[("a", Duration::from_secs(86_400))]).await;

    let (first, next) = claim(&s.store, 10, LEASE).await;
    assert_eq!(first.iter().map(|c| c.id).collect::<Vec<_>>(), now, "only the due delivery is claimed");
    assert!(next.is_some_and(|n| n <= Duration::from_millis(1000)), "next due within the shortest delay: {next:?}");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (rest, next) = claim(&s.store, 10, LEASE).await;
    let order: Vec<Ulid> = rest.iter().map(|c| c.id).collect();
    assert_eq!(order, [sooner[0], later[0]], "earliest next attempt first");
    assert!(rest.iter().all(|c| c.attempt == 1 && c.endpoint == "a"));
    // Left: the one due tomorrow (and the leases, due in a minute).
    let next = next.expect("something is scheduled");
    assert!(next > Duration::from_secs(50) && next <= LEASE, "{next:?}");
    assert_eq!(view(&s.store, tomorrow[0]).await.state, "pending");
}

async fn a_lease_hides_a_delivery_until_it_runs_out_and_a_lapsed_lease_spends_no_attempt(kind: Kind) {
    let s = open(kind, "").await;
    let (_, ids) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let lease = Duration::from_secs(2);
    let (first, next) = claim(&s.store, 10, lease).await;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].attempt, first[0].lapsed), (1, 0));
    let (none, next_again) = claim(&s.store, 10, lease).await;
    assert!(none.is_empty(), "a leased delivery is not claimed twice");
    assert!(next.is_some_and(|n| n <= lease) && next_again.is_some_and(|n| n <= lease));
    let leased = view(&s.store, ids[0]).await;
    assert_eq!((leased.state.as_str(), leased.attempts_made), ("pending", 0), "a claim counts no attempt");
    assert!(leased.next_attempt_at.is_some(), "the lease expiry is its next chance");

    // The holder never settled (it died, or the claim's reply was lost on the way): the lease runs
    // out and another worker gets it, still for attempt 1, the lapse counted.
    let second = claim_when_due(&s.store, 1, LEASE).await;
    assert_eq!(second[0].id, ids[0]);
    assert_eq!((second[0].attempt, second[0].lapsed), (1, 1), "a lapsed lease is not an attempt");
    assert_ne!(second[0].token, first[0].token);
    let stale = s.store.settle(&first[0], Some(&record(1, Some(200), None)), Settle::Ack).await.unwrap();
    assert!(!stale, "the old holder's settlement is refused");
    assert_eq!(view(&s.store, ids[0]).await.state, "pending", "...and changed nothing");
    claimed_settles(&s.store, &second[0], Some(&record(1, Some(200), None)), Settle::Ack).await;
    let done = view(&s.store, ids[0]).await;
    assert_eq!(done.state, "succeeded");
    assert_eq!((done.attempts_made, done.attempts.len()), (1, 1), "only the holder's attempt counts and is logged");
    assert!(!s.store.settle(&second[0], None, Settle::Ack).await.unwrap(), "a settled lease is spent");
}

async fn retry_bury_replay_ack_with_the_attempt_log(kind: Kind) {
    let s = open(kind, "").await;
    let (event, ids) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let id = ids[0];

    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &c, Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Retry(Duration::ZERO)).await;
    let v = view(&s.store, id).await;
    assert_eq!((v.state.as_str(), v.attempts_made, v.last_error.as_deref()), ("pending", 1, Some("HTTP 500")));
    assert_eq!(v.attempts.len(), 1);
    assert_eq!(v.attempts[0]["status"], 500);
    assert!(v.updated_at.is_some());

    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    assert_eq!(c.attempt, 2);
    claimed_settles(&s.store, &c, Some(&record(2, None, Some("timed out"))), Settle::Bury).await;
    let v = view(&s.store, id).await;
    assert_eq!((v.state.as_str(), v.attempts_made, v.next_attempt_at), ("dead", 2, None));
    assert_eq!(v.attempts.len(), 2);
    let (nothing, _) = claim(&s.store, 10, LEASE).await;
    assert!(nothing.is_empty(), "a dead letter is not claimed");
    let dead = s.store.dead_letters(None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, sluice::id::format_delivery(id));
    assert_eq!((dead[0].endpoint.as_str(), dead[0].attempts), ("a", 2));
    assert_eq!(dead[0].last_error.as_deref(), Some("timed out"));

    let not_dead = sluice::id::delivery_of(event, 2);
    let replayed = s.store.replay(&[id, not_dead], Duration::ZERO).await.unwrap();
    assert_eq!(replayed, [sluice::id::format_delivery(id)], "only dead deliveries are replayed");
    assert!(s.store.dead_letters(None, None, 10).await.unwrap().is_empty());
    let v = view(&s.store, id).await;
    assert_eq!((v.state.as_str(), v.attempts_made), ("pending", 0));
    assert_eq!(v.attempts.len(), 3);
    assert_eq!(v.attempts[2]["outcome"], "replayed");

    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    assert_eq!(c.attempt, 1, "a replay starts the schedule again");
    claimed_settles(&s.store, &c, Some(&record(1, Some(204), None)), Settle::Ack).await;
    let v = view(&s.store, id).await;
    assert_eq!((v.state.as_str(), v.attempts_made, v.attempts.len()), ("succeeded", 1, 4));
    let e = s.store.event(event).await.unwrap().unwrap();
    assert_eq!(e.deliveries[0].state.as_deref(), Some("succeeded"));
}

async fn defer_puts_back_without_counting_an_attempt(kind: Kind) {
    let s = open(kind, "").await;
    let (_, ids) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &c, None, Settle::Defer(Duration::from_millis(20))).await;
    let v = view(&s.store, ids[0]).await;
    assert_eq!((v.state.as_str(), v.attempts_made, v.attempts.len()), ("pending", 0, 0));
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    assert_eq!(c.attempt, 1, "the deferred claim was not counted");
    // A defer after a failed attempt keeps that attempt's error as the delivery's last error.
    claimed_settles(
        &s.store,
        &c,
        Some(&record(1, Some(500), Some("HTTP 500"))),
        Settle::Retry(Duration::from_millis(20)),
    )
    .await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &c, None, Settle::Defer(Duration::from_millis(20))).await;
    let v = view(&s.store, ids[0]).await;
    assert_eq!((v.attempts_made, v.last_error.as_deref()), (1, Some("HTTP 500")));
}

async fn pause_parks_until_enable_and_only_while_disabled(kind: Kind) {
    let s = open(kind, "").await;
    let (_, ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    assert!(s.store.disable("a", "410 Gone", 1234).await.unwrap(), "the first disable reports it");
    assert!(!s.store.disable("a", "again", 9999).await.unwrap(), "a second one does not");
    let states = s.store.endpoint_states(&["a", "b"]).await.unwrap();
    assert_eq!((states[0].disabled.as_deref(), states[0].disabled_at), (Some("410 Gone"), Some(1234)));
    assert!(states[1].disabled.is_none());

    let claimed = claim_when_due(&s.store, 2, LEASE).await;
    for c in &claimed {
        claimed_settles(&s.store, c, None, Settle::Pause).await;
    }
    let a = view(&s.store, ids[0]).await;
    let b = view(&s.store, ids[1]).await;
    assert_eq!((a.state.as_str(), a.attempts_made), ("paused", 0), "parked without spending an attempt");
    assert_eq!(b.state, "pending", "an enabled endpoint's delivery is deferred, not parked");
    assert_eq!(s.store.paused_count("a").await.unwrap(), 1);
    assert_eq!(s.store.paused_count("b").await.unwrap(), 0);

    // b comes back after the deferral; a stays parked.
    let again = claim_when_due(&s.store, 1, LEASE).await;
    assert_eq!(again[0].id, ids[1]);
    assert_eq!(s.store.enable("a").await.unwrap(), 1);
    assert!(s.store.endpoint_states(&["a"]).await.unwrap()[0].disabled.is_none());
    assert_eq!(s.store.paused_count("a").await.unwrap(), 0);
    assert_eq!(view(&s.store, ids[0]).await.state, "pending");
    let resumed = claim_when_due(&s.store, 1, LEASE).await;
    assert_eq!((resumed[0].id, resumed[0].attempt), (ids[0], 1));
    assert_eq!(s.store.enable("a").await.unwrap(), 0, "enabling twice moves nothing");
}

async fn endpoint_failure_runs_are_recorded_once(kind: Kind) {
    let s = open(kind, "").await;
    s.store.mark_failing("a", 5).await.unwrap();
    s.store.mark_failing("a", 9).await.unwrap();
    assert_eq!(s.store.endpoint_states(&["a"]).await.unwrap()[0].failing_since, Some(5), "the run's start stays");
    s.store.clear_failing("a").await.unwrap();
    assert_eq!(s.store.endpoint_states(&["a"]).await.unwrap()[0].failing_since, None);
    s.store.mark_failing("a", 11).await.unwrap();
    assert_eq!(s.store.endpoint_states(&["a"]).await.unwrap()[0].failing_since, Some(11));
}

async fn idempotency_keys_claim_complete_release_expire(kind: Kind) {
    let s = open(kind, "").await;
    let q = &s.store;
    let (ev1, ev2) = (sluice::id::new_event(), sluice::id::new_event());
    assert_eq!(q.claim_idempotency("shop", "k1", ev1).await.unwrap(), None, "a new key is claimed");
    let pending = q.claim_idempotency("shop", "k1", ev2).await.unwrap().unwrap();
    assert_eq!(pending, sluice::queue::idempotency_pending(ev1), "in progress, for the first request's event");
    assert!(pending.starts_with(sluice::queue::IDEMPOTENCY_PENDING));
    assert_eq!(q.claim_idempotency("other", "k1", ev2).await.unwrap(), None, "keys are per source");
    q.complete_idempotency("shop", "k1", "{\"id\":\"evt_1\"}", Duration::from_secs(60)).await.unwrap();
    assert_eq!(q.claim_idempotency("shop", "k1", ev2).await.unwrap().as_deref(), Some("{\"id\":\"evt_1\"}"));
    assert_eq!(q.release_idempotency("other", "k1", ev1).await.unwrap(), None);
    assert!(q.claim_idempotency("other", "k1", ev1).await.unwrap().is_some(), "another request's mark stays");
    assert_eq!(q.release_idempotency("other", "k1", ev2).await.unwrap(), None);
    assert_eq!(q.claim_idempotency("other", "k1", ev1).await.unwrap(), None, "a released key can be claimed again");

    let window = Duration::from_secs(1);
    q.complete_idempotency("shop", "k2", "answer", window).await.unwrap();
    assert_eq!(q.claim_idempotency("shop", "k2", ev1).await.unwrap().as_deref(), Some("answer"));
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    assert_eq!(q.claim_idempotency("shop", "k2", ev1).await.unwrap(), None, "the window is over");
}

/// Stores one event under an idempotency key (its id in the key's shard, as ingest makes it).
async fn enqueue_keyed(store: &Store, key: &str, answer: &str) -> (Ulid, Result<(), sluice::queue::QueueError>) {
    let event = sluice::id::new_event_in(store.idempotency_shard("shop", key), store.shards());
    (event, enqueue_as(store, event, key, answer).await)
}

async fn enqueue_as(store: &Store, event: Ulid, key: &str, answer: &str) -> Result<(), sluice::queue::QueueError> {
    let commit = sluice::queue::IdempotencyCommit { key, answer, window: Duration::from_secs(60) };
    let new = NewEvent {
        id: event,
        source: "shop",
        event_type: "order.created",
        headers: &[],
        payload: b"{}",
        idempotency: Some(commit),
    };
    let delivery = NewDelivery {
        id: sluice::id::delivery_of(event, 1),
        endpoint: Arc::from("a"),
        headers: Vec::new(),
        payload: None,
        delay: Duration::ZERO,
    };
    store.enqueue(&new, &[delivery]).await
}

async fn an_idempotent_enqueue_stores_only_while_its_key_holds_its_mark(kind: Kind) {
    let s = open(kind, "shards = 1").await;
    let q = &s.store;
    // Claimed, then stored: the answer is recorded in the same step.
    let event = sluice::id::new_event_in(q.idempotency_shard("shop", "k1"), q.shards());
    assert_eq!(q.claim_idempotency("shop", "k1", event).await.unwrap(), None);
    enqueue_as(q, event, "k1", "first answer").await.unwrap();
    assert_eq!(
        q.claim_idempotency("shop", "k1", sluice::id::new_event()).await.unwrap().as_deref(),
        Some("first answer")
    );
    // Its outcome unknown to the gateway (a lost reply), the key says it was stored.
    assert_eq!(q.release_idempotency("shop", "k1", event).await.unwrap().as_deref(), Some("first answer"));
    assert!(q.event(event).await.unwrap().is_some());

    // Released first (the gateway settled a lost reply as "not stored"): the late enqueue stores nothing.
    let event = sluice::id::new_event_in(q.idempotency_shard("shop", "k2"), q.shards());
    assert_eq!(q.claim_idempotency("shop", "k2", event).await.unwrap(), None);
    assert_eq!(q.release_idempotency("shop", "k2", event).await.unwrap(), None);
    let late = enqueue_as(q, event, "k2", "late answer").await.unwrap_err();
    assert!(late.is_idempotency_lost(), "{late}");
    assert!(q.event(event).await.unwrap().is_none(), "nothing was stored");
    assert_eq!(q.claim_idempotency("shop", "k2", event).await.unwrap(), None, "the key is free for the retry");

    // Never claimed (or expired): nothing is stored either.
    let (event, unclaimed) = enqueue_keyed(q, "k3", "answer").await;
    assert!(unclaimed.unwrap_err().is_idempotency_lost());
    assert!(q.event(event).await.unwrap().is_none());
}

async fn events_keep_payloads_headers_and_rewritten_bodies(kind: Kind) {
    let s = open(kind, "").await;
    let payload = b"{\"order\":42}";
    let rewritten = Bytes::from_static(b"{\"order\":42,\"tagged\":true}");
    let (event, ids) = enqueue_with(
        &s.store,
        payload,
        vec![("a", Duration::ZERO, None), ("b", Duration::ZERO, Some(rewritten.clone()))],
    )
    .await;
    let mut claimed = claim_when_due(&s.store, 2, LEASE).await;
    claimed.sort_by_key(|c| c.id);
    assert_eq!(claimed[0].payload.as_ref(), payload);
    assert!(claimed[0].headers.is_empty());
    assert_eq!(claimed[1].payload, rewritten, "a plugin's rewrite is what goes out");
    assert_eq!(claimed[1].headers, [("x-rewritten".to_string(), "yes".to_string())]);
    assert!(claimed.iter().all(|c| c.event_id == event && c.event_type == "order.created"));

    let e = s.store.event(event).await.unwrap().expect("event is known");
    assert_eq!((e.source.as_str(), e.event_type.as_str()), ("shop", "order.created"));
    assert_eq!(e.payload.as_ref(), payload);
    assert_eq!(e.headers, [("x-origin".to_string(), "test".to_string())]);
    let listed: Vec<(String, String)> =
        e.deliveries.iter().map(|d| (d.id.clone(), d.endpoint.clone())).collect::<Vec<_>>();
    assert_eq!(
        listed,
        [
            (sluice::id::format_delivery(ids[0]), "a".to_string()),
            (sluice::id::format_delivery(ids[1]), "b".to_string())
        ]
    );
    assert!(s.store.event(sluice::id::new_event()).await.unwrap().is_none());
    assert!(s.store.delivery(sluice::id::delivery_of(sluice::id::new_event(), 1)).await.unwrap().is_none());
}

async fn finished_deliveries_expire_after_retention(kind: Kind) {
    let s = open(kind, "retention = \"1s\"").await;
    let (event, ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    let claimed = claim_when_due(&s.store, 2, LEASE).await;
    let (acked, buried) = if claimed[0].id == ids[0] { (&claimed[0], &claimed[1]) } else { (&claimed[1], &claimed[0]) };
    claimed_settles(&s.store, acked, Some(&record(1, Some(200), None)), Settle::Ack).await;
    claimed_settles(&s.store, buried, Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
    assert!(s.store.delivery(ids[0]).await.unwrap().is_some(), "kept for the retention period");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while s.store.delivery(ids[0]).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the succeeded delivery never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A dead letter stays for the dead-letter retention (30 days by default); so does its event.
    assert_eq!(view(&s.store, ids[1]).await.state, "dead");
    let e = s.store.event(event).await.unwrap().expect("an event with a dead delivery is kept");
    assert_eq!(e.deliveries[0].state.as_deref(), Some("expired"));
    assert_eq!(e.deliveries[1].state.as_deref(), Some("dead"));
}

async fn dead_letters_expire_after_the_dead_letter_retention_and_their_event_outlives_them(kind: Kind) {
    let s = open(kind, "retention = \"1h\"\ndead_retention = \"1s\"").await;
    let (event, ids) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &c, Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
    assert_eq!(s.store.dead_letters(None, None, 10).await.unwrap().len(), 1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // A claim also trims the dead-letter index on Redis.
        claim(&s.store, 10, LEASE).await;
        let gone = s.store.delivery(ids[0]).await.unwrap().is_none();
        if gone && s.store.dead_letters(None, None, 10).await.unwrap().is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the dead letter was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.store.replay(&ids, Duration::ZERO).await.unwrap().is_empty(), "nothing left to replay");
    let e = s.store.event(event).await.unwrap().expect("the event is kept for the longer retention");
    assert_eq!(e.deliveries[0].state.as_deref(), Some("expired"));
}

async fn replaying_an_endpoint_replays_every_dead_letter_however_many(kind: Kind) {
    let s = open(kind, "").await;
    // More than one step's worth, most buried in the same millisecond by one settle batch.
    let mut wanted: Vec<(&str, Duration)> = (0..2500).map(|_| ("a", Duration::ZERO)).collect();
    wanted.extend((0..10).map(|_| ("b", Duration::ZERO)));
    enqueue(&s.store, &wanted).await;
    let mut claimed = Vec::new();
    while claimed.len() < wanted.len() {
        claimed.extend(claim_when_due(&s.store, 1000.min(wanted.len() - claimed.len()), LEASE).await);
    }
    let failed = record(1, Some(500), Some("HTTP 500"));
    let settles = claimed.iter().map(|c| s.store.settle(c, Some(&failed), Settle::Bury));
    for settled in futures_util::future::join_all(settles).await {
        assert!(settled.unwrap());
    }
    assert_eq!(s.store.depth(&[]).await.unwrap().dead, 2510);
    assert_eq!(s.store.replay_endpoint("a", Duration::ZERO).await.unwrap(), 2500, "every one of a's");
    assert!(s.store.dead_letters(Some("a"), None, 10).await.unwrap().is_empty());
    assert_eq!(s.store.dead_letters(Some("b"), None, 100).await.unwrap().len(), 10, "b's stay dead");
    assert_eq!(s.store.depth(&[]).await.unwrap().due, 2500);
    assert_eq!(s.store.replay_endpoint("a", Duration::ZERO).await.unwrap(), 0, "nothing twice");
}

async fn depth_counts_due_scheduled_dead_and_parked(kind: Kind) {
    let s = open(kind, "").await;
    enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    enqueue(&s.store, &[("a", Duration::from_secs(3600))]).await;
    let names = ["a".to_string(), "b".to_string()];
    let depth = s.store.depth(&names).await.unwrap();
    assert_eq!((depth.due, depth.scheduled, depth.dead), (2, 1, 0));

    s.store.disable("b", "test", 1).await.unwrap();
    let claimed = claim_when_due(&s.store, 2, LEASE).await;
    for c in &claimed {
        let action = if c.endpoint == "a" { Settle::Bury } else { Settle::Pause };
        claimed_settles(&s.store, c, Some(&record(1, Some(500), Some("HTTP 500"))), action).await;
    }
    let depth = s.store.depth(&names).await.unwrap();
    assert_eq!((depth.due, depth.scheduled, depth.dead), (0, 1, 1));
    assert_eq!(depth.paused, [("a".to_string(), 0), ("b".to_string(), 1)]);
    s.store.ping().await.unwrap();
}

async fn dead_letters_filter_by_endpoint_newest_first(kind: Kind) {
    let s = open(kind, "").await;
    let mut buried = Vec::new();
    for endpoint in ["a", "b", "a"] {
        let (_, ids) = enqueue(&s.store, &[(endpoint, Duration::ZERO)]).await;
        let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
        claimed_settles(&s.store, &c, Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
        buried.push(sluice::id::format_delivery(ids[0]));
        // Distinct burial times, so "newest first" has one answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = s.store.dead_letters(None, None, 10).await.unwrap();
    assert_eq!(all.iter().map(|d| &d.id).collect::<Vec<_>>(), [&buried[2], &buried[1], &buried[0]]);
    let a = s.store.dead_letters(Some("a"), None, 10).await.unwrap();
    assert_eq!(a.iter().map(|d| &d.id).collect::<Vec<_>>(), [&buried[2], &buried[0]]);
    let page = s.store.dead_letters(None, None, 1).await.unwrap();
    assert_eq!(page[0].id, buried[2]);
    let next = s.store.dead_letters(None, Some(DeadCursor { at: page[0].dead_at, id: None }), 10).await.unwrap();
    assert_eq!(next.iter().map(|d| &d.id).collect::<Vec<_>>(), [&buried[1], &buried[0]], "`before` pages on");
}

async fn dead_letter_pages_skip_nothing_when_one_batch_buries_many_at_once(kind: Kind) {
    let s = open(kind, "").await;
    let endpoints: Vec<(&str, Duration)> = (0..100).map(|_| ("a", Duration::ZERO)).collect();
    enqueue(&s.store, &endpoints).await;
    let mut claimed = Vec::new();
    while claimed.len() < 100 {
        claimed.extend(claim_when_due(&s.store, 100, LEASE).await);
    }
    // Settled concurrently: the batcher makes them one script call / one transaction, one millisecond.
    let failed = record(1, Some(500), Some("HTTP 500"));
    let settles = claimed.iter().map(|c| s.store.settle(c, Some(&failed), Settle::Bury));
    for settled in futures_util::future::join_all(settles).await {
        assert!(settled.unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = s.store.dead_letters(None, cursor, 7).await.unwrap();
        for d in &page {
            assert!(seen.insert(d.id.clone()), "{} came twice", d.id);
        }
        match page.last() {
            Some(last) if page.len() == 7 => {
                cursor = Some(DeadCursor { at: last.dead_at, id: sluice::id::parse_delivery(&last.id) })
            }
            _ => break,
        }
    }
    assert_eq!(seen.len(), 100, "paging 7 at a time saw every dead letter once");
}

/// An event id created at `ms` in `shard` (of `shards`).
fn event_at(ms: u64, shard: u32, shards: u32) -> Ulid {
    let high = Ulid::from_parts(ms, rand_low()).0 >> 16;
    Ulid((high - high % u128::from(shards) + u128::from(shard)) << 16)
}

/// A store with four shards where the backend has shards (the searches span them all).
async fn open_sharded(kind: Kind) -> Subject {
    let toml = if matches!(kind, Kind::Embedded) { "" } else { "shards = 4" };
    open(kind, toml).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Random low bits for an id (distinct ids at the same ms).
fn rand_low() -> u128 {
    Ulid::new().random()
}

/// Stores an event created at `ms` in `shard` with a delivery per `(endpoint, delay)`; returns its
/// delivery ids.
async fn enqueue_created_at(store: &Store, ms: u64, shard: u32, deliveries: &[(&str, Duration)]) -> Vec<Ulid> {
    let event = event_at(ms, shard, store.shards());
    let new = NewEvent {
        id: event,
        source: "shop",
        event_type: "order.created",
        headers: &[],
        payload: b"{}",
        idempotency: None,
    };
    let deliveries: Vec<NewDelivery> = deliveries
        .iter()
        .enumerate()
        .map(|(i, (endpoint, delay))| NewDelivery {
            id: sluice::id::delivery_of(event, i + 1),
            endpoint: Arc::from(*endpoint),
            headers: Vec::new(),
            payload: None,
            delay: *delay,
        })
        .collect();
    store.enqueue(&new, &deliveries).await.unwrap();
    deliveries.iter().map(|d| d.id).collect()
}

/// A search's matching ids, in the order given.
async fn search_ids(store: &Store, search: &Search) -> Vec<Ulid> {
    let page = store.search(search).await.unwrap();
    assert!(page.stopped_at.is_none(), "a small store is read whole");
    page.found.iter().map(|f| sluice::id::parse_delivery(&f.id).unwrap()).collect()
}

async fn search_finds_deliveries_by_endpoint_state_and_time_newest_first(kind: Kind) {
    let s = open_sharded(kind).await;
    // Six events a minute apart, ten hours ago, each with a delivery to `a` and one to `b`. Even
    // ones: a succeeds, b dies. Odd ones: a waits a day (pending), b is parked (paused).
    let base =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 - 10 * 3_600_000;
    let day = Duration::from_secs(86_400);
    let mut want: Vec<(Ulid, &str, &str)> = Vec::new();
    for i in 0..6u64 {
        let a_delay = if i % 2 == 0 { Duration::ZERO } else { day };
        // In shard 0, where the test claims.
        let ids = enqueue_created_at(&s.store, base + i * 60_000, 0, &[("a", a_delay), ("b", Duration::ZERO)]).await;
        let (a, b) = if i % 2 == 0 { ("succeeded", "dead") } else { ("pending", "paused") };
        want.push((ids[0], "a", a));
        want.push((ids[1], "b", b));
    }
    // Newer ones, in every shard, that the time range leaves out.
    let (mut outside, now) = (Vec::new(), now_ms());
    for shard in 0..s.store.shards() {
        outside.extend(enqueue_created_at(&s.store, now - u64::from(shard), shard, &[("a", day)]).await);
    }
    assert!(s.store.disable("b", "test", 1).await.unwrap());
    for c in claim_when_due(&s.store, 9, LEASE).await {
        let (_, endpoint, state) = *want.iter().find(|(id, _, _)| *id == c.id).expect("one of the test's deliveries");
        assert_eq!(c.endpoint, endpoint);
        let (record, action) = match state {
            "succeeded" => (Some(record(1, Some(200), None)), Settle::Ack),
            "dead" => (Some(record(1, Some(500), Some("HTTP 500"))), Settle::Bury),
            _ => (None, Settle::Pause),
        };
        claimed_settles(&s.store, &c, record.as_ref(), action).await;
    }
    want.sort_by_key(|(id, _, _)| std::cmp::Reverse(*id));
    let in_range = Search { since: Some(base), until: Some(base + 3_600_000), limit: 100, ..Search::default() };

    // Everything in range, newest first, each with its endpoint, state, time and attempt.
    let page = s.store.search(&in_range).await.unwrap();
    let shown: Vec<(Ulid, &str, &str)> = page
        .found
        .iter()
        .map(|f| (sluice::id::parse_delivery(&f.id).unwrap(), f.endpoint.as_str(), f.state.as_str()))
        .collect();
    assert_eq!(shown, want);
    for found in &page.found {
        let id = sluice::id::parse_delivery(&found.id).unwrap();
        assert_eq!(found.event_id, sluice::id::format_event(sluice::id::event_of(id)));
        assert_eq!(found.created_at, id.timestamp_ms());
        let finished = found.state == "succeeded" || found.state == "dead";
        assert_eq!(found.finished_at.is_some(), finished, "{found:?}");
        assert_eq!(found.next_attempt_at.is_some(), found.state == "pending", "{found:?}");
        assert_eq!(found.attempts_made, u32::from(finished), "{found:?}");
        assert_eq!(found.last_error.as_deref(), (found.state == "dead").then_some("HTTP 500"), "{found:?}");
    }
    // Without a time range, the newer ones come first, from every shard.
    let all = search_ids(&s.store, &Search { limit: 100, ..Search::default() }).await;
    assert_eq!(all.len(), 12 + outside.len());
    assert_eq!(all[..outside.len()], outside[..], "newest first across shards");

    // By state, by endpoint and state, by a narrower time range.
    let only = |endpoint: Option<&str>, state: Option<&str>| -> Vec<Ulid> {
        want.iter()
            .filter(|(_, e, s)| endpoint.is_none_or(|x| x == *e) && state.is_none_or(|x| x == *s))
            .map(|(id, _, _)| *id)
            .collect()
    };
    for state in ["pending", "paused", "succeeded", "dead"] {
        let search = Search { state: Some(state.into()), ..in_range.clone() };
        assert_eq!(search_ids(&s.store, &search).await, only(None, Some(state)), "{state}");
    }
    // Open ones only (what a search asks the store for when history holds the finished ones).
    let open = Search { open_only: true, ..in_range.clone() };
    let want_open: Vec<Ulid> =
        want.iter().filter(|(_, _, s)| *s == "pending" || *s == "paused").map(|(id, _, _)| *id).collect();
    assert_eq!(search_ids(&s.store, &open).await, want_open);
    let search = Search { endpoint: Some("a".into()), state: Some("pending".into()), ..in_range.clone() };
    assert_eq!(search_ids(&s.store, &search).await, only(Some("a"), Some("pending")));
    let search = Search { endpoint: Some("b".into()), ..in_range.clone() };
    assert_eq!(search_ids(&s.store, &search).await, only(Some("b"), None));
    let narrow = Search { since: Some(base + 120_000), until: Some(base + 240_000), ..in_range.clone() };
    let minutes_2_and_3: Vec<Ulid> = want[4..8].iter().map(|(id, _, _)| *id).collect();
    assert_eq!(search_ids(&s.store, &narrow).await, minutes_2_and_3, "created in [since, until)");

    // Pages of 5 resume below the last id shown, also from the middle of an event.
    let mut seen: Vec<Ulid> = Vec::new();
    let mut search = Search { limit: 5, ..in_range.clone() };
    loop {
        let page = search_ids(&s.store, &search).await;
        seen.extend(&page);
        match page.len() {
            5 => search.before = page.last().copied(),
            _ => break,
        }
    }
    assert_eq!(seen, want.iter().map(|(id, _, _)| *id).collect::<Vec<_>>());
    let mid_event = Search { before: Some(want[2].0), limit: 1, ..in_range.clone() };
    assert_eq!(search_ids(&s.store, &mid_event).await, [want[3].0], "the cursor's event's older delivery is next");
}

async fn a_search_over_more_records_than_a_page_reads_stops_and_resumes_where_it_stopped(kind: Kind) {
    let s = open_sharded(kind).await;
    let day = Duration::from_secs(86_400);
    let needle = enqueue(&s.store, &[("needle", day)]).await.1[0];
    // A millisecond later, more events than one page reads (about 10,000), none to `needle`.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let hay_deliveries = [("hay", day)];
    let hay = (0..10_400).map(|_| enqueue(&s.store, &hay_deliveries));
    use futures_util::StreamExt;
    futures_util::stream::iter(hay).buffer_unordered(256).collect::<Vec<_>>().await;

    // Every delivery, and open ones only (on Redis: a pass over the keyspace, and a read of the
    // queue's sorted set).
    for open_only in [false, true] {
        let wanted = Search { endpoint: Some("needle".into()), limit: 10, open_only, ..Search::default() };
        let first = s.store.search(&wanted).await.unwrap();
        assert!(first.found.is_empty(), "{:?}", first.found);
        let stopped = first.stopped_at.expect("the page stopped before reading everything, and says where");
        assert!(stopped > needle, "it stopped above the needle");
        let rest = s.store.search(&Search { before: Some(stopped), ..wanted.clone() }).await.unwrap();
        let found: Vec<String> = rest.found.iter().map(|f| f.id.clone()).collect();
        assert_eq!(found, [sluice::id::format_delivery(needle)], "open_only: {open_only}");
        assert!(rest.stopped_at.is_none());
    }
}

/// Redis only: one disable reaches every shard's `off` hash in the same script as the endpoint's
/// own state, so deliveries of any shard park.
#[tokio::test]
async fn redis_disable_marks_every_shard_in_one_step() {
    let s = open(Kind::Redis, "shards = 4").await;
    let redis = s._redis.as_ref().unwrap();
    assert!(s.store.disable("a", "410 Gone", 1234).await.unwrap());
    let mut conn = redis.connection().await;
    for shard in 0..4 {
        let reason: Option<String> =
            ::redis::cmd("HGET").arg(format!("sluice:{{s{shard}}}:off")).arg("a").query_async(&mut conn).await.unwrap();
        assert_eq!(reason.as_deref(), Some("410 Gone"), "shard {shard}");
    }
    // A second disable keeps the first reason everywhere.
    assert!(!s.store.disable("a", "other", 9999).await.unwrap());
    let reason: Option<String> =
        ::redis::cmd("HGET").arg("sluice:{s3}:off").arg("a").query_async(&mut conn).await.unwrap();
    assert_eq!(reason.as_deref(), Some("410 Gone"));
    let states = s.store.endpoint_states(&["a"]).await.unwrap();
    assert_eq!((states[0].disabled.as_deref(), states[0].disabled_at), (Some("410 Gone"), Some(1234)));
}

/// Redis only: a record with a field a newer version added and one it dropped is still claimed
/// and settled; a malformed record in a claimed batch is dead-lettered with the reason and the
/// rest of the batch is served.
#[tokio::test]
async fn redis_records_of_another_version_load_and_a_malformed_one_does_not_block_its_batch() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let (_, ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("a", Duration::ZERO), ("a", Duration::ZERO)]).await;
    let key = |id: Ulid| format!("sluice:{{s0}}:d:{}", sluice::id::format_delivery(id));
    let mut conn = redis.connection().await;
    let _: () = ::redis::cmd("HSET").arg(key(ids[0])).arg("added_later").arg("x").query_async(&mut conn).await.unwrap();
    let _: () = ::redis::cmd("HDEL").arg(key(ids[0])).arg("attempts").query_async(&mut conn).await.unwrap();
    let _: () =
        ::redis::cmd("HSET").arg(key(ids[1])).arg("headers").arg("{not json").query_async(&mut conn).await.unwrap();
    // Queued as a version that writes hashes queues them: at a whole millisecond (a score ending
    // in `.5` says no hash describes the delivery, and the claim would not read one), and before
    // the third, so one claim of two takes both.
    for id in &ids[..2] {
        let _: () = ::redis::cmd("ZADD")
            .arg("sluice:{s0}:queue")
            .arg("XX")
            .arg(id.timestamp_ms() - 1)
            .arg(sluice::id::format_delivery(*id))
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let claimed = claim_when_due(&s.store, 2, LEASE).await;
    let mut got: Vec<Ulid> = claimed.iter().map(|c| c.id).collect();
    got.sort();
    assert_eq!(got, [ids[0], ids[2]], "the malformed one is set aside, the others served");
    let bad = view(&s.store, ids[1]).await;
    assert_eq!(bad.state, "dead");
    assert!(bad.last_error.as_deref().unwrap_or_default().contains("malformed record"), "{:?}", bad.last_error);
    for c in &claimed {
        assert_eq!(c.attempt, 1);
        claimed_settles(&s.store, c, Some(&record(1, Some(200), None)), Settle::Ack).await;
    }
    assert_eq!(view(&s.store, ids[0]).await.state, "succeeded");
}

/// Redis only: a dead letter buried by a version whose burials did not expire (no `closed` flag,
/// no TTL, its event still counting it open) is removed once it is older than the dead-letter
/// retention, and lets go of its event.
#[tokio::test]
async fn redis_dead_letters_of_an_older_version_are_removed_after_the_dead_letter_retention() {
    let s = open(Kind::Redis, "dead_retention = \"1s\"").await;
    let redis = s._redis.as_ref().unwrap();
    let event = sluice::id::new_event();
    let delivery = sluice::id::delivery_of(event, 1);
    let (ev, d) = (sluice::id::format_event(event), sluice::id::format_delivery(delivery));
    let mut conn = redis.connection().await;
    let old_layout: () = ::redis::pipe()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:ev:{ev}"))
        .arg(&["source", "shop", "type", "t", "payload", "{}", "n", "1", "open", "1"])
        .ignore()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:d:{d}"))
        .arg(&["event", ev.as_str(), "endpoint", "a", "attempts", "2", "status", "dead", "lease", ""])
        .ignore()
        .cmd("ZADD")
        .arg("sluice:{s0}:dead")
        .arg(sluice::id::new_event().timestamp_ms() - 5000)
        .arg(&d)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = old_layout;
    assert_eq!(s.store.dead_letters(None, None, 10).await.unwrap().len(), 1, "listed as before");
    claim(&s.store, 10, LEASE).await;
    assert!(s.store.delivery(delivery).await.unwrap().is_none(), "removed by the claim's trim");
    assert!(s.store.dead_letters(None, None, 10).await.unwrap().is_empty());
    let ttl: i64 = ::redis::cmd("TTL").arg(format!("sluice:{{s0}}:ev:{ev}")).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "its event no longer counts it open and expires: TTL {ttl}");
}

/// Redis only: an event stored by a version that kept its headers and body in the event hash
/// (no `:b` string), and a delivery whose attempt log is in its hash, are still claimed with the
/// body, shown with the headers, and logged on.
#[tokio::test]
async fn redis_events_of_an_older_layout_are_claimed_and_shown_with_their_body() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let event = sluice::id::new_event();
    let delivery = sluice::id::delivery_of(event, 1);
    let (ev, d) = (sluice::id::format_event(event), sluice::id::format_delivery(delivery));
    let mut conn = redis.connection().await;
    let headers = r#"[["x-origin","old"]]"#;
    let old_layout: () = ::redis::pipe()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:ev:{ev}"))
        .arg(&["source", "shop", "type", "t", "headers", headers, "payload", "{\"old\":true}", "n", "1", "open", "1"])
        .ignore()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:d:{d}"))
        .arg(&["event", ev.as_str(), "endpoint", "a", "attempts", "1", "status", "pending"])
        .arg(&["log", r#"{"attempt":1,"at":1,"outcome":"http_error","status":500}"#])
        .ignore()
        .cmd("ZADD")
        .arg("sluice:{s0}:due")
        .arg(0)
        .arg(&d)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = old_layout;
    let claimed = claim_when_due(&s.store, 1, LEASE).await;
    assert_eq!(claimed[0].payload.as_ref(), b"{\"old\":true}");
    assert_eq!(claimed[0].attempt, 2);
    claimed_settles(&s.store, &claimed[0], Some(&record(2, Some(200), None)), Settle::Ack).await;
    // The log the old version kept in the hash, then the attempt this one appended beside it.
    let v = view(&s.store, delivery).await;
    let statuses: Vec<&serde_json::Value> = v.attempts.iter().map(|a| &a["status"]).collect();
    assert_eq!(statuses, [500, 200], "{:?}", v.attempts);
    let shown = s.store.event(event).await.unwrap().expect("the event is found");
    assert_eq!(shown.payload.as_ref(), b"{\"old\":true}");
    assert_eq!(shown.headers, [("x-origin".to_string(), "old".to_string())]);
}

/// Redis only: an event of the layout before the event record (a small hash with its headers and
/// body in a `:b` string, a hash per delivery from the start, queued in `due`, as a gateway of
/// that version still writes during an upgrade), fanned out to two endpoints, is served to the
/// end: both claimed (and moved to the queue ZSET), one acked, one buried and replayed, its event
/// counting them and expiring only once none is open.
#[tokio::test]
async fn redis_deliveries_of_the_previous_layout_are_served_to_the_end() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let event = sluice::id::new_event();
    let ids = [sluice::id::delivery_of(event, 1), sluice::id::delivery_of(event, 2)];
    let ev = sluice::id::format_event(event);
    let evkey = format!("sluice:{{s0}}:ev:{ev}");
    let d = |k: usize| sluice::id::format_delivery(ids[k]);
    let mut conn = redis.connection().await;
    let previous: () = ::redis::pipe()
        .cmd("HSET")
        .arg(&evkey)
        .arg(&["source", "shop", "type", "t", "n", "2", "open", "2"])
        .ignore()
        .cmd("SET")
        .arg(format!("{evkey}:b"))
        .arg("[[\"x-origin\",\"previous\"]]\n{\"previous\":\ntrue}")
        .ignore()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:d:{}", d(0)))
        .arg(&["event", ev.as_str(), "endpoint", "a", "attempts", "0", "status", "pending"])
        .ignore()
        .cmd("HSET")
        .arg(format!("sluice:{{s0}}:d:{}", d(1)))
        .arg(&["event", ev.as_str(), "endpoint", "b", "attempts", "0", "status", "pending"])
        .ignore()
        .cmd("ZADD")
        .arg("sluice:{s0}:due")
        .arg(&[(0, d(0)), (0, d(1))])
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = previous;
    assert_eq!(view(&s.store, ids[0]).await.state, "pending", "shown while still in the older queue");

    let mut claimed = claim_when_due(&s.store, 2, LEASE).await;
    claimed.sort_by_key(|c| c.id);
    let endpoints: Vec<&str> = claimed.iter().map(|c| &*c.endpoint).collect();
    assert_eq!(endpoints, ["a", "b"]);
    assert!(claimed.iter().all(|c| c.payload.as_ref() == b"{\"previous\":\ntrue}" && c.attempt == 1));
    let zcard = |key: &'static str| {
        let mut conn = conn.clone();
        async move { ::redis::cmd("ZCARD").arg(key).query_async::<usize>(&mut conn).await.unwrap() }
    };
    assert_eq!((zcard("sluice:{s0}:due").await, zcard("sluice:{s0}:queue").await), (0, 2), "moved when leased");
    let ttl = |conn: &mut ::redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = evkey.clone();
        async move { ::redis::cmd("TTL").arg(key).query_async::<i64>(&mut conn).await.unwrap() }
    };

    claimed_settles(&s.store, &claimed[0], Some(&record(1, Some(200), None)), Settle::Ack).await;
    assert_eq!(ttl(&mut conn).await, -1, "one delivery still open: the event stays");
    claimed_settles(&s.store, &claimed[1], Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
    assert!(ttl(&mut conn).await > 0, "none open: the event expires");
    assert_eq!(s.store.dead_letters(None, None, 10).await.unwrap()[0].endpoint, "b");

    assert_eq!(s.store.replay(&ids[1..], Duration::ZERO).await.unwrap(), [d(1)]);
    assert_eq!(ttl(&mut conn).await, -1, "open again: the event stays");
    let again = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    assert_eq!((again.id, again.payload.as_ref()), (ids[1], b"{\"previous\":\ntrue}".as_slice()));
    claimed_settles(&s.store, &again, Some(&record(1, Some(200), None)), Settle::Ack).await;

    let shown = s.store.event(event).await.unwrap().expect("the event is found");
    assert_eq!(shown.headers, [("x-origin".to_string(), "previous".to_string())]);
    let states: Vec<(&str, Option<&str>)> =
        shown.deliveries.iter().map(|d| (d.endpoint.as_str(), d.state.as_deref())).collect();
    assert_eq!(states, [("a", Some("succeeded")), ("b", Some("succeeded"))]);
    assert!(ttl(&mut conn).await > 0);
}

/// Redis only: the settle that closes an event's only delivery writes the event's counts and sets
/// its TTL without reading them (its claim noted that the event has one delivery), and ends where
/// the general path of an event with more deliveries ends: none open, one dead when buried (kept
/// for the longer retention), open again once replayed. A record that is gone is not made again.
#[tokio::test]
async fn redis_an_events_only_delivery_closes_it_with_the_counts_and_ttl_the_general_path_gives() {
    let s = open(Kind::Redis, "retention = \"1h\"\ndead_retention = \"2h\"").await;
    let redis = s._redis.as_ref().unwrap();
    let conn = redis.connection().await;
    let key = |event: Ulid| format!("sluice:{{s0}}:e:{event}");
    // The record's counts (open, dead: one hex digit each below 16 deliveries) and its TTL.
    let counts = |event: Ulid| {
        let (mut conn, key) = (conn.clone(), key(event));
        async move {
            let head: String = ::redis::cmd("GETRANGE").arg(&key).arg(0).arg(1).query_async(&mut conn).await.unwrap();
            let ttl: i64 = ::redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
            (head, ttl)
        }
    };
    let hour = 3600;

    let (acked, _) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    assert_eq!(counts(acked).await, ("10".to_string(), -1));
    claimed_settles(&s.store, &c, Some(&record(1, Some(200), None)), Settle::Ack).await;
    let (head, ttl) = counts(acked).await;
    assert_eq!(head, "00", "acked: none open, none dead");
    assert!(ttl > 0 && ttl <= hour, "kept for the retention, not {ttl} s");

    let (buried, ids) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &c, Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
    let (head, ttl) = counts(buried).await;
    assert_eq!(head, "01", "buried: none open, one dead");
    assert!(ttl > hour && ttl <= 2 * hour, "kept for the dead-letter retention, not {ttl} s");
    assert_eq!(s.store.replay(&ids, Duration::ZERO).await.unwrap(), [sluice::id::format_delivery(ids[0])]);
    assert_eq!(counts(buried).await, ("10".to_string(), -1), "replayed: open again, kept");
    let again = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    claimed_settles(&s.store, &again, Some(&record(2, Some(200), None)), Settle::Ack).await;
    let (head, ttl) = counts(buried).await;
    assert_eq!(head, "00", "acked after the replay: none dead any more");
    assert!(ttl > 0 && ttl <= hour);

    // The general path, for comparison: two deliveries, the event closes with the second.
    let (two, _) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    let mut both = claim_when_due(&s.store, 2, LEASE).await;
    both.sort_by_key(|c| c.id);
    claimed_settles(&s.store, &both[0], Some(&record(1, Some(200), None)), Settle::Ack).await;
    assert_eq!(counts(two).await, ("10".to_string(), -1), "one still open: the event stays");
    claimed_settles(&s.store, &both[1], Some(&record(1, Some(500), Some("HTTP 500"))), Settle::Bury).await;
    let (head, ttl) = counts(two).await;
    assert_eq!(head, "01");
    assert!(ttl > hour && ttl <= 2 * hour);

    let (gone, _) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let c = claim_when_due(&s.store, 1, LEASE).await.remove(0);
    let mut raw = conn.clone();
    let _: () = ::redis::cmd("DEL").arg(key(gone)).query_async(&mut raw).await.unwrap();
    claimed_settles(&s.store, &c, Some(&record(1, Some(200), None)), Settle::Ack).await;
    let exists: i64 = ::redis::cmd("EXISTS").arg(key(gone)).query_async(&mut raw).await.unwrap();
    assert_eq!(exists, 0, "the close made no record for an event that is gone");
}

/// Redis only: an event record that cannot be read (damaged, or naming fewer endpoints than it has
/// deliveries) does not block the claims of others: its deliveries are dead-lettered with the
/// reason, and burying them does not trip over its counts.
#[tokio::test]
async fn redis_an_unreadable_event_record_dead_letters_its_deliveries_and_blocks_nothing() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let (damaged, damaged_ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    let (short, short_ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", Duration::ZERO)]).await;
    let (_, fine) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    let key = |event: Ulid| format!("sluice:{{s0}}:e:{event}");
    let mut conn = redis.connection().await;
    let _: () = ::redis::cmd("SET").arg(key(damaged)).arg("zz\nno blank line").query_async(&mut conn).await.unwrap();
    // A record that names one endpoint for two deliveries.
    let _: () = ::redis::cmd("SET").arg(key(short)).arg("20\nshop\nt\na\n\n\n{}").query_async(&mut conn).await.unwrap();

    // All five are due (no delay, by Redis' clock): one claim takes them all.
    let (claimed, _) = claim(&s.store, 10, LEASE).await;
    let mut got: Vec<Ulid> = claimed.iter().map(|c| c.id).collect();
    got.sort();
    let mut readable = [short_ids[0], fine[0]];
    readable.sort();
    assert_eq!(got, readable, "the readable ones are served");
    for id in [damaged_ids[0], damaged_ids[1], short_ids[1]] {
        let v = view(&s.store, id).await;
        assert_eq!(v.state, "dead", "{id}");
        assert!(v.last_error.as_deref().unwrap_or_default().contains("unreadable event record"), "{:?}", v.last_error);
    }
}

/// Redis only: once a reply has shown the gateway Redis' clock, a batch with no idempotency key and
/// no delivery of its own headers or payload is stored by a `MULTI` transaction instead of the
/// script, with the same keys and scores: queued half a millisecond before it is due, by Redis'
/// clock, a delay after now for a delayed one.
#[tokio::test]
async fn redis_a_plain_enqueue_scores_by_redis_clock_as_the_script_does() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let mut conn = redis.connection().await;
    let redis_ms = |mut conn: ::redis::aio::MultiplexedConnection| async move {
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        (secs * 1000 + micros / 1000) as f64
    };
    let calls = |mut conn: ::redis::aio::MultiplexedConnection, command: &'static str| async move {
        let info: String = ::redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        let line = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse::<u64>().unwrap())
    };
    // The first enqueue has seen no reply yet: the script stores it (and its reply shows the clock).
    let (_, first) = enqueue(&s.store, &[("a", Duration::ZERO)]).await;
    assert_eq!(calls(conn.clone(), "exec").await, 0, "the first enqueue went through the script");

    let before = redis_ms(conn.clone()).await;
    let day = Duration::from_secs(86_400);
    let (_, ids) = enqueue(&s.store, &[("a", Duration::ZERO), ("b", day)]).await;
    let after = redis_ms(conn.clone()).await;
    assert_eq!(calls(conn.clone(), "exec").await, 1, "the second went through a transaction");
    assert_eq!(calls(conn.clone(), "mset").await, 1);

    for (id, delay) in [(ids[0], 0.0), (ids[1], day.as_millis() as f64)] {
        let name = sluice::id::format_delivery(id);
        let score: f64 =
            ::redis::cmd("ZSCORE").arg("sluice:{s0}:queue").arg(&name).query_async(&mut conn).await.unwrap();
        assert_eq!(score.fract(), 0.5, "queued without a hash: {score}");
        // Due by Redis' clock as the transaction ran: not after it, and the estimate trails Redis by
        // at most a reply's latency (generously: a second).
        let due = score + 0.5 - delay;
        assert!(due <= after && due >= before - 1000.0, "due {due}, Redis' clock {before}..{after}");
    }
    // Stored whole: both due ones are served with their event, the delayed one is not yet.
    let (mut claimed, _) = claim(&s.store, 10, LEASE).await;
    claimed.sort_by_key(|c| c.id);
    // Sorted alike: two ids made in the same millisecond order by their random bits, not by when.
    let mut due = [first[0], ids[0]];
    due.sort();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), due, "the delayed one waits");
    for c in &claimed {
        assert_eq!(
            (c.endpoint.as_str(), c.event_type.as_str(), &c.payload[..]),
            ("a", "order.created", &b"{\"n\":1}"[..])
        );
    }
}

/// Redis only: a delivery no hash describes yet (no headers or payload of its own) is queued with a
/// score ending in `.5`, and its first claim writes nothing but its score (the lease expiry plus a
/// quarter of a millisecond). A first attempt that succeeds leaves no hash either, only the
/// attempt log, and every reader takes that for a success; one that fails makes the hash whole.
/// A delivery with a plugin's own payload has a hash from the start, is queued at a whole
/// millisecond and leased in its hash.
#[tokio::test]
async fn redis_a_first_claim_writes_only_the_queue_score_and_a_first_success_only_the_log() {
    let s = open(Kind::Redis, "").await;
    let redis = s._redis.as_ref().unwrap();
    let conn = redis.connection().await;
    let own = Some(Bytes::from_static(b"{\"own\":true}"));
    let (event, ids) = enqueue_with(
        &s.store,
        b"{}",
        vec![("a", Duration::ZERO, None), ("b", Duration::ZERO, own), ("c", Duration::ZERO, None)],
    )
    .await;
    let names: Vec<String> = ids.iter().map(|id| sluice::id::format_delivery(*id)).collect();
    // A delivery's score's fraction, its hash's fields, and whether it has an attempt log.
    let state = |name: &str| {
        let (mut conn, name) = (conn.clone(), name.to_string());
        async move {
            let score: Option<f64> =
                ::redis::cmd("ZSCORE").arg("sluice:{s0}:queue").arg(&name).query_async(&mut conn).await.unwrap();
            let hash: std::collections::HashMap<String, String> =
                ::redis::cmd("HGETALL").arg(format!("sluice:{{s0}}:d:{name}")).query_async(&mut conn).await.unwrap();
            let logged: bool =
                ::redis::cmd("EXISTS").arg(format!("sluice:{{s0}}:d:{name}:log")).query_async(&mut conn).await.unwrap();
            (score.map(f64::fract), hash, logged)
        }
    };
    for plain in [&names[0], &names[2]] {
        let (fraction, hash, _) = state(plain).await;
        assert_eq!((fraction, hash.len()), (Some(0.5), 0), "queued without a hash");
    }
    let (fraction, hash, _) = state(&names[1]).await;
    assert_eq!(fraction, Some(0.0));
    assert!(hash.contains_key("payload"), "{hash:?}");

    let mut claimed = claim_when_due(&s.store, 3, LEASE).await;
    claimed.sort_by_key(|c| c.id);
    assert_eq!(claimed.iter().map(|c| c.endpoint.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    for plain in [&names[0], &names[2]] {
        let (fraction, hash, _) = state(plain).await;
        assert_eq!((fraction, hash.len()), (Some(0.25), 0), "leased by its score alone");
    }
    let (fraction, hash, _) = state(&names[1]).await;
    assert_eq!(fraction, Some(0.0));
    assert!(hash.get("lease").is_some_and(|l| !l.is_empty()), "leased in its hash: {hash:?}");
    let leased = view(&s.store, ids[0]).await;
    assert_eq!((leased.state.as_str(), leased.endpoint.as_str()), ("pending", "a"));

    let ok = record(1, Some(200), None);
    claimed_settles(&s.store, &claimed[0], Some(&ok), Settle::Ack).await;
    claimed_settles(&s.store, &claimed[1], Some(&ok), Settle::Ack).await;
    let failed = record(1, Some(500), Some("HTTP 500"));
    claimed_settles(&s.store, &claimed[2], Some(&failed), Settle::Retry(Duration::from_secs(3600))).await;

    let (score, hash, logged) = state(&names[0]).await;
    assert_eq!((score, hash.len(), logged), (None, 0, true), "a first success leaves only its log");
    let (_, hash, _) = state(&names[1]).await;
    assert_eq!(hash.get("status").map(String::as_str), Some("succeeded"), "{hash:?}");
    let (fraction, hash, _) = state(&names[2]).await;
    let field = |name: &str| hash.get(name).map(String::as_str);
    assert_eq!(fraction, Some(0.0), "queued again at a whole millisecond: it has a hash now");
    assert_eq!((field("endpoint"), field("attempts"), field("last_error")), (Some("c"), Some("1"), Some("HTTP 500")));
    assert_eq!(field("lease"), None, "no lease to release");

    // Every reader takes the log alone for a success.
    for (id, endpoint) in [(ids[0], "a"), (ids[1], "b")] {
        let done = view(&s.store, id).await;
        assert_eq!((done.state.as_str(), done.endpoint.as_str()), ("succeeded", endpoint));
        assert_eq!((done.attempts_made, done.attempts.len(), done.last_error), (1, 1, None));
        assert!(done.updated_at.is_some_and(|at| at >= ok.at), "{:?}", done.updated_at);
    }
    let shown = s.store.event(event).await.unwrap().expect("the event is kept");
    let states: Vec<Option<&str>> = shown.deliveries.iter().map(|d| d.state.as_deref()).collect();
    assert_eq!(states, [Some("succeeded"), Some("succeeded"), Some("pending")]);
    assert_eq!(
        s.store.states_of(&ids).await.unwrap(),
        [Some("succeeded".to_string()), Some("succeeded".to_string()), Some("pending".to_string())]
    );
    let search = Search { state: Some("succeeded".into()), limit: 10, ..Search::default() };
    let found = s.store.search(&search).await.unwrap().found;
    let mut found: Vec<(&str, &str, u32, bool)> = found
        .iter()
        .map(|f| (f.endpoint.as_str(), f.state.as_str(), f.attempts_made, f.finished_at.is_some()))
        .collect();
    found.sort();
    assert_eq!(found, [("a", "succeeded", 1, true), ("b", "succeeded", 1, true)]);
}
