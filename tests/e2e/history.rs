//! History in PostgreSQL (`[history]`), against a real `postgres` of the test's own
//! ([`crate::postgres`]) and a real Redis: finished deliveries are written there, leave Redis after
//! `keep_in_redis`, and are still served by the admin API; PostgreSQL going away stops nothing and
//! loses nothing; old day partitions are dropped whole.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::postgres::PostgresServer;

fn history_toml(pg: &PostgresServer, keep: &str) -> String {
    format!("\n[history]\npostgres_url = \"{}\"\nkeep_in_redis = \"{keep}\"\n", pg.url())
}

fn config(redis: &RedisServer, pg: &PostgresServer, receiver: &Receiver, keep: &str) -> String {
    base_toml(redis)
        + &history_toml(pg, keep)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n"
}

async fn metrics(gateway: std::net::SocketAddr) -> String {
    client().get(format!("http://{gateway}/metrics")).send().await.unwrap().text().await.unwrap()
}

/// Waits until the gateway's `metric` reaches `want`.
async fn wait_for_metric(gateway: std::net::SocketAddr, metric: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = metric_value(&metrics(gateway).await, metric);
        if got == Some(want) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metric} is {got:?}, never {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pg: &PostgresServer, sql: &str) -> i64 {
    pg.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn finished_deliveries_move_to_postgres_and_are_served_from_it_once_they_leave_redis() {
    let Some(pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = start_gateway(&config(&redis, &pg, &receiver, "1s")).await;
    let mut accepted = Vec::new();
    for i in 0..20 {
        let (status, body) =
            post_event(gateway.addr(), "shop", &format!(r#"{{"event":"order_created","order_id":{i}}}"#)).await;
        assert_eq!(status, 202, "{body}");
        accepted.push(body);
    }
    for _ in 0..20 {
        receiver.next().await;
    }
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 20).await;
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries WHERE state = 'succeeded'").await, 20);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events_all").await, 20);
    // Each event has one delivery: it is kept in that delivery's row, not in a row of its own.
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events").await, 0);

    // After keep_in_redis the delivery and its event are gone from Redis...
    let event = accepted[0]["id"].as_str().unwrap().to_string();
    let delivery = accepted[0]["deliveries"][0]["id"].as_str().unwrap().to_string();
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left: usize = redis::cmd("EXISTS")
            .arg(format!("sluice:{{s0}}:d:{delivery}"))
            .arg(format!("sluice:{{s0}}:d:{delivery}:log"))
            .arg(format!("sluice:{{s0}}:e:{}", event.trim_start_matches("evt_")))
            .query_async(&mut conn)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} of the delivery's keys are still in Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the admin API serves both from PostgreSQL, as they were.
    let (status, shown) = admin_get(gateway.addr(), &format!("/v1/deliveries/{delivery}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!((shown["state"].as_str(), shown["endpoint"].as_str()), (Some("succeeded"), Some("orders")));
    assert_eq!((shown["attempts_made"].as_u64(), shown["attempts"][0]["status"].as_u64()), (Some(1), Some(200)));
    // Its history entry was packed by the gateway (a first attempt's success, no hash in Redis),
    // with the finish time Redis' view showed: the attempt's start plus its latency.
    let attempt = &shown["attempts"][0];
    let finished = attempt["at"].as_u64().unwrap() + attempt["latency_ms"].as_f64().unwrap().ceil() as u64;
    assert_eq!(shown["updated_at"].as_u64(), Some(finished), "{shown}");
    let (status, shown) = admin_get(gateway.addr(), &format!("/v1/events/{event}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["payload"]["order_id"], 0);
    assert_eq!(shown["source"], "shop");
    assert_eq!(shown["deliveries"][0]["state"], "succeeded", "{shown}");
    assert!(shown["headers"].as_array().unwrap().iter().any(|h| h[0] == "content-type"), "{shown}");
    assert_eq!(metric_value(&metrics(gateway.addr()).await, "sluice_history_backlog"), Some(0));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_is_written_to_history_and_stays_in_redis_to_be_listed_and_replayed() {
    let Some(pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    receiver.answer_always(Answer::Status(500));
    let gateway = start_gateway(&config(&redis, &pg, &receiver, "1s")).await;
    let (status, body) = post_event(gateway.addr(), "shop", r#"{"event":"order_created"}"#).await;
    assert_eq!(status, 202);
    let delivery = body["deliveries"][0]["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        receiver.next().await;
    }
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 1).await;
    let row = pg
        .client()
        .await
        .query_one("SELECT state, attempts_made, json_array_length(attempts) FROM sluice_deliveries", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, i32>(2)), ("dead".to_string(), 3, 3));
    // Well past keep_in_redis, it is still a dead letter in Redis: listed and replayable.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, listed) = admin_get(gateway.addr(), "/v1/dead-letters").await;
    assert_eq!(status, 200);
    assert_eq!(listed["dead_letters"][0]["id"], delivery.as_str(), "{listed}");
    receiver.answer_always(Answer::Status(200));
    let (status, _) = admin_post(gateway.addr(), &format!("/v1/deliveries/{delivery}/replay")).await;
    assert_eq!(status, 200);
    receiver.next().await;
    // Replayed and delivered: history is written again, now succeeded.
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 2).await;
    let state: String = pg.client().await.query_one("SELECT state FROM sluice_deliveries", &[]).await.unwrap().get(0);
    assert_eq!(state, "succeeded");
    gateway.shutdown().await;
}

#[tokio::test]
async fn postgres_going_away_under_load_stops_no_delivery_and_loses_nothing_from_history() {
    let Some(mut pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let gateway = start_gateway(&config(&redis, &pg, &receiver, "15m")).await;
    let addr = gateway.addr();
    let post = |from: usize, to: usize| async move {
        let posts = (from..to).map(|i| async move {
            let (status, body) = post_event(addr, "shop", &format!(r#"{{"event":"order_created","n":{i}}}"#)).await;
            assert_eq!(status, 202, "{body}");
        });
        futures_util::future::join_all(posts).await;
    };
    post(0, 100).await;
    // PostgreSQL dies (SIGKILL) with writes in flight; events keep coming and being delivered.
    pg.stop();
    post(100, 300).await;
    for _ in 0..300 {
        receiver.next().await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, ready) = get_json(addr, "/readyz").await;
        if ready["status"] == "degraded" {
            assert_eq!(status, 200, "events are still taken: {ready}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz never said degraded: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = metrics(addr).await;
    assert!(metric_value(&text, "sluice_history_backlog").unwrap() > 0, "finished records wait in Redis");
    // Dead letters are still listed (Redis' alone), and the answer says history is missing.
    let (status, listed) = admin_get(addr, "/v1/dead-letters").await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed["history_unavailable"].as_str().is_some_and(|r| !r.is_empty()), "{listed}");
    // So is the search for finished deliveries, which history serves when it is up: Redis holds
    // the 300 delivered while PostgreSQL is away, and says what is missing.
    let (status, found) = admin_get(addr, "/v1/deliveries?state=succeeded&limit=500").await;
    assert_eq!(status, 200, "{found}");
    assert!(found["history_unavailable"].as_str().is_some_and(|r| !r.is_empty()), "{found}");
    assert_eq!(found["deliveries"].as_array().unwrap().len(), 300, "{found}");
    assert_eq!(metric_value(&text, "sluice_history_up"), Some(0));

    // Back (recovering from its WAL): the backlog drains, every delivery once in history.
    pg.spawn().await;
    post(300, 350).await;
    for _ in 0..50 {
        receiver.next().await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics(addr).await;
        if metric_value(&text, "sluice_history_backlog") == Some(0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the history backlog never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pg, "SELECT count(DISTINCT id) FROM sluice_deliveries").await, 350);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries").await, 350, "one row per delivery");
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events_all").await, 350);
    let (_, ready) = get_json(addr, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    gateway.shutdown().await;
}

async fn get_json(gateway: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = client().get(format!("http://{gateway}{path}")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn finished(days_ago: u64) -> sluice::queue::Finished {
    finished_at(now_ms() - days_ago * 86_400_000, "orders", "succeeded")
}

fn finished_at(at: u64, endpoint: &str, state: &str) -> sluice::queue::Finished {
    let event = ulid::Ulid(ulid::Ulid::from_parts(at, rand_bits()).0 & !0xFFFF);
    let delivery = sluice::id::delivery_of(event, 1);
    sluice::queue::Finished {
        delivery: sluice::queue::FinishedDelivery {
            id: sluice::id::format_delivery(delivery),
            event_id: sluice::id::format_event(event),
            endpoint: endpoint.into(),
            state: state.into(),
            attempts_made: 1,
            lapsed_leases: 0,
            created_at: at,
            finished_at: Some(at + 5),
            last_error: None,
            attempts: sluice::queue::AttemptList::of(&[serde_json::json!({"attempt": 1, "status": 200})]),
        },
        event: Some(sluice::queue::EventView {
            id: sluice::id::format_event(event),
            source: "shop".into(),
            event_type: "order_created".into(),
            received_at: Some(at),
            headers: vec![("x-tenant".into(), "acme".into())],
            payload: bytes::Bytes::from_static(b"{\"a\":1}"),
            deliveries: Vec::new(),
        }),
        only: true,
        own: Default::default(),
        entry: None,
    }
}

fn rand_bits() -> u128 {
    ulid::Ulid::new().random()
}

#[tokio::test]
async fn day_partitions_older_than_the_retention_are_dropped_whole_and_a_batch_written_twice_is_one_row_each() {
    let Some(pg) = PostgresServer::start().await else { return };
    let config = sluice::config::HistoryConfig { postgres_url: pg.url(), ..Default::default() };
    let history = sluice::history::History::open(&config).unwrap();
    let batch = [finished(40), finished(29), finished(0)];
    history.write(&batch).await.unwrap();
    // A writer killed before marking its batch writes it again: the upsert absorbs it.
    history.write(&batch).await.unwrap();
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries").await, 3);
    let partitions = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'sluice_deliveries_p%'";
    assert_eq!(count(&pg, partitions).await, 3);
    let old = history.delivery(sluice::id::parse_delivery(&batch[0].delivery.id).unwrap()).await.unwrap();
    assert_eq!(old.expect("found by id in its day's partition").attempts[0]["status"], 200);

    // Default retention 30 days: the 40-day-old partition (of both tables) goes, rows and all.
    assert_eq!(history.drop_expired().await.unwrap(), 2);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries").await, 2);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events_all").await, 2);
    assert_eq!(count(&pg, partitions).await, 2);
    assert!(history.delivery(sluice::id::parse_delivery(&batch[0].delivery.id).unwrap()).await.unwrap().is_none());
    assert!(history.delivery(sluice::id::parse_delivery(&batch[1].delivery.id).unwrap()).await.unwrap().is_some());
}

#[tokio::test]
async fn a_delivery_twice_in_one_batch_or_already_in_history_keeps_its_latest_record() {
    let Some(pg) = PostgresServer::start().await else { return };
    let config = sluice::config::HistoryConfig { postgres_url: pg.url(), ..Default::default() };
    let history = sluice::history::History::open(&config).unwrap();
    let first = finished(0);
    history.write(std::slice::from_ref(&first)).await.unwrap();
    // Replayed and finished again, twice, before the writer came round: both records in one batch,
    // the newest last, and the row of its first finish already in history.
    let mut dead = first.clone();
    (dead.delivery.state, dead.delivery.attempts_made) = ("dead".into(), 2);
    let mut again = first.clone();
    again.delivery.attempts_made = 3;
    again.delivery.attempts = sluice::queue::AttemptList::of(&[
        serde_json::json!({"attempt": 1, "status": 200}),
        serde_json::json!({"attempt": 2, "status": 500}),
        serde_json::json!({"attempt": 3, "status": 204}),
    ]);
    history.write(&[dead, again]).await.unwrap();
    let id = sluice::id::parse_delivery(&first.delivery.id).unwrap();
    let row = history.delivery(id).await.unwrap().expect("in history");
    assert_eq!((row.state.as_str(), row.attempts_made), ("succeeded", 3));
    assert_eq!(row.attempts.len(), 3);
    assert_eq!(row.attempts[2]["status"], 204);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries").await, 1);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events_all").await, 1);
    // Its event, kept in its row, came through the upsert whole.
    let event = history.event(sluice::id::parse_event(&first.delivery.event_id).unwrap()).await.unwrap();
    let event = event.expect("its event in history");
    assert_eq!((event.source.as_str(), event.payload.as_ref()), ("shop", &b"{\"a\":1}"[..]));
    assert_eq!(event.headers, vec![("x-tenant".to_string(), "acme".to_string())]);
    assert_eq!(event.deliveries.len(), 1);
}

#[tokio::test]
async fn an_event_with_several_deliveries_is_one_row_of_its_own_and_one_with_a_single_delivery_is_in_its_row() {
    let Some(pg) = PostgresServer::start().await else { return };
    let config = sluice::config::HistoryConfig { postgres_url: pg.url(), ..Default::default() };
    let history = sluice::history::History::open(&config).unwrap();
    // Two deliveries of one event, finished in different batches; and an event with one delivery.
    let mut first = finished(0);
    first.only = false;
    let event = sluice::id::parse_event(&first.delivery.event_id).unwrap();
    let mut second = first.clone();
    second.delivery.id = sluice::id::format_delivery(sluice::id::delivery_of(event, 2));
    second.delivery.endpoint = "audit".into();
    let single = finished(0);
    history.write(&[first, single.clone()]).await.unwrap();
    history.write(std::slice::from_ref(&second)).await.unwrap();
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events").await, 1, "the shared event, once");
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_deliveries WHERE event_source IS NOT NULL").await, 1);
    assert_eq!(count(&pg, "SELECT count(*) FROM sluice_events_all").await, 2);
    let shared = history.event(event).await.unwrap().expect("the shared event");
    let endpoints: Vec<&str> = shared.deliveries.iter().map(|d| d.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["orders", "audit"]);
    assert_eq!(shared.payload.as_ref(), b"{\"a\":1}");
    let inline = sluice::id::parse_event(&single.delivery.event_id).unwrap();
    let inline = history.event(inline).await.unwrap().expect("the event kept in its delivery's row");
    assert_eq!((inline.event_type.as_str(), inline.received_at), ("order_created", Some(single.delivery.created_at)));
    assert_eq!(inline.deliveries.len(), 1);
    assert!(history.event(sluice::id::new_event()).await.unwrap().is_none());
}

#[test]
fn a_history_section_is_checked_with_the_rest_of_the_config() {
    let problems = |toml: &str| match sluice::config::from_toml(toml).unwrap().validate() {
        Err(sluice::config::ConfigError::Invalid(problems)) => problems.join("\n"),
        other => panic!("expected problems, got {other:?}"),
    };
    let embedded = problems("[history]\npostgres_url = \"postgres://u:secret@127.0.0.1:1/db\"\n");
    assert!(embedded.contains("history: needs the redis backend"), "{embedded}");
    let bad = problems(
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[history]\npostgres_url = \"mysql://u:hunter2@h/db\"\nkeep_in_redis = \"0s\"\n",
    );
    assert!(bad.contains("history.postgres_url: ") && !bad.contains("hunter2"), "{bad}");
    assert!(bad.contains("history.keep_in_redis: must be at least 1s"), "{bad}");
}

#[tokio::test]
async fn finished_deliveries_are_searched_by_endpoint_state_and_time_a_page_at_a_time() {
    let Some(pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let gateway = start_gateway(&config(&redis, &pg, &receiver, "15m")).await;
    let history =
        sluice::history::History::open(&sluice::config::HistoryConfig { postgres_url: pg.url(), ..Default::default() })
            .unwrap();
    // Ten deliveries a minute apart (two days back, so two partitions): orders, audit in turn;
    // every third one dead.
    let start = now_ms() - 2 * 86_400_000;
    let rows: Vec<_> = (0..10u64)
        .map(|i| {
            let endpoint = if i % 2 == 0 { "orders" } else { "audit" };
            finished_at(
                start + i * 60_000 + i * 86_400_000 / 5,
                endpoint,
                if i % 3 == 0 { "dead" } else { "succeeded" },
            )
        })
        .collect();
    history.write(&rows).await.unwrap();
    let ids = |page: &Value| -> Vec<String> {
        page["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
    };
    let newest_first: Vec<String> = rows.iter().rev().map(|f| f.delivery.id.clone()).collect();

    // Paged: 4 + 4 + 2, newest first, nothing skipped or repeated.
    let mut seen = Vec::new();
    let mut path = "/v1/deliveries?limit=4".to_string();
    loop {
        let (status, page) = admin_get(gateway.addr(), &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next_before_id"].as_str() {
            Some(next) => path = format!("/v1/deliveries?limit=4&before_id={next}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?endpoint=audit&state=dead").await;
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| {
            rows.iter().any(|f| &f.delivery.id == *id && f.delivery.endpoint == "audit" && f.delivery.state == "dead")
        })
        .cloned()
        .collect();
    assert_eq!(ids(&page), want, "{page}");
    assert_eq!(page["deliveries"][0]["state"], "dead");
    let (since, until) = (rows[3].delivery.created_at, rows[6].delivery.created_at);
    let (_, page) = admin_get(gateway.addr(), &format!("/v1/deliveries?since={since}&until={until}")).await;
    assert_eq!(ids(&page), newest_first[4..7].to_vec(), "created in [since, until)");

    // Nothing is pending: history has no pending deliveries, and Redis has none.
    let (status, answer) = admin_get(gateway.addr(), "/v1/deliveries?state=pending").await;
    assert_eq!((status, ids(&answer)), (200, Vec::<String>::new()), "{answer}");

    // A live delivery (in Redis, and in history once the writer has it) comes first, once.
    let (status, posted) = post_event(gateway.addr(), "shop", r#"{"n":1}"#).await;
    assert_eq!(status, 202);
    let live = posted["deliveries"][0]["id"].as_str().unwrap().to_string();
    wait_for_state(gateway.addr(), &live, "succeeded").await;
    wait_in_history(&history, &live).await;
    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?limit=50").await;
    let mut want = vec![live.clone()];
    want.extend(newest_first.iter().cloned());
    assert_eq!(ids(&page), want, "{page}");
    assert_eq!(page["deliveries"][0]["state"], "succeeded");

    // A dead letter only history held, replayed: Redis holds it again, and its state there is the
    // one shown; it is no longer found among the dead.
    let oldest = newest_first.last().unwrap().clone();
    let (status, replayed) = admin_post(gateway.addr(), &format!("/v1/deliveries/{oldest}/replay")).await;
    assert_eq!(status, 200, "{replayed}");
    wait_for_state(gateway.addr(), &oldest, "succeeded").await;
    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?limit=50").await;
    assert_eq!(ids(&page), want, "still once each: {page}");
    assert_eq!(page["deliveries"][10]["state"], "succeeded", "{page}");
    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?endpoint=orders&state=dead").await;
    assert!(!ids(&page).contains(&oldest), "{page}");

    // An open delivery (parked while its endpoint is disabled) is only in Redis: found there, first.
    // The worker sees the disable within a second: until it does, a delivery goes out (noted).
    assert_eq!(admin_post(gateway.addr(), "/v1/endpoints/orders/disable").await.0, 200);
    let mut went_out = Vec::new();
    let parked = loop {
        let (status, posted) = post_event(gateway.addr(), "shop", r#"{"n":2}"#).await;
        assert_eq!(status, 202);
        let id = posted["deliveries"][0]["id"].as_str().unwrap().to_string();
        match settled_state(gateway.addr(), &id).await.as_str() {
            "paused" => break id,
            _ => went_out.push(id),
        }
    };
    // The newest (ids made in the same millisecond are not in the order they were made).
    let newest = went_out.iter().chain([&parked]).max().unwrap().clone();
    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?limit=1").await;
    assert_eq!(ids(&page), [newest], "{page}");
    let (_, page) = admin_get(gateway.addr(), "/v1/deliveries?state=paused").await;
    assert_eq!(ids(&page), std::slice::from_ref(&parked), "{page}");
    assert_eq!(admin_post(gateway.addr(), "/v1/endpoints/orders/enable").await.0, 200);
    wait_for_state(gateway.addr(), &parked, "succeeded").await;
    gateway.shutdown().await;

    // Without [history], the same search reads Redis alone: what went through this gateway, not
    // what was only written to PostgreSQL.
    let plain = start_gateway(&(base_toml(&redis) + &endpoint_toml("orders", &receiver.url(), ""))).await;
    let (status, page) = admin_get(plain.addr(), "/v1/deliveries?limit=500").await;
    assert_eq!(status, 200, "{page}");
    went_out.push(parked);
    went_out.sort();
    let mut want: Vec<String> = went_out.into_iter().rev().collect();
    want.extend([live, oldest]);
    assert_eq!(ids(&page), want, "{page}");
    assert!(page["next_before_id"].is_null());
    plain.shutdown().await;
}

/// Waits until `delivery` is parked or delivered, and says which.
async fn settled_state(gateway: std::net::SocketAddr, delivery: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, shown) = admin_get(gateway, &format!("/v1/deliveries/{delivery}")).await;
        if let Some(state @ ("paused" | "succeeded")) = shown["state"].as_str() {
            return state.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "{delivery} was never parked or delivered: {shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until history holds `delivery`.
async fn wait_in_history(history: &sluice::history::History, delivery: &str) {
    let id = sluice::id::parse_delivery(delivery).unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while history.delivery(id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "{delivery} never reached history");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until Redis holds none of `keys`.
async fn wait_gone_from_redis(redis: &RedisServer, keys: &[String]) {
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left: usize = redis::cmd("EXISTS").arg(keys).query_async(&mut conn).await.unwrap();
        if left == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} of {keys:?} are still in Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dead_ids(page: &Value) -> Vec<String> {
    page["dead_letters"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_dead_letter_only_history_holds_is_listed_and_replayed_with_its_event_its_own_body_and_its_attempts() {
    let Some(pg) = PostgresServer::start().await else { return };
    let Some(transform) = plugin_file("rust-transform") else { return };
    let redis = RedisServer::start().await;
    let (mut orders, mut audit) = (Receiver::start().await, Receiver::start().await);
    orders.answer_always(Answer::Status(500));
    // Redis keeps the dead letter for a second, its event for three: it soon lives in PostgreSQL alone.
    let toml = base_toml(&redis)
        + "\n[queue]\nretention = \"3s\"\ndead_retention = \"1s\"\n"
        + &history_toml(&pg, "1s")
        + &endpoint_toml("orders", &orders.url(), "")
        + &endpoint_toml("audit", &audit.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"v2\"\npath = \"{}\"\nconfig = {{ set = {{ version = 2 }}, remove = [\"secret\"], headers = {{ x-transformed = \"yes\" }} }}\n",
            transform.display()
        )
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"v2\"]\nendpoints = [\"orders\", \"audit\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, accepted) =
        post_event(gateway.addr(), "shop", r#"{"event":"order_created","order_id":7,"secret":"x"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let event = accepted["id"].as_str().unwrap().to_string();
    let dead = accepted["deliveries"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(accepted["deliveries"][0]["endpoint"], "orders");
    audit.next().await;
    for _ in 0..3 {
        orders.next().await;
    }
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 2).await;
    wait_gone_from_redis(
        &redis,
        &[
            format!("sluice:{{s0}}:d:{dead}"),
            format!("sluice:{{s0}}:d:{dead}:log"),
            format!("sluice:{{s0}}:e:{}", event.trim_start_matches("evt_")),
        ],
    )
    .await;

    // Listed, and shown, from history.
    let (status, listed) = admin_get(gateway.addr(), "/v1/dead-letters").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(dead_ids(&listed), std::slice::from_ref(&dead), "{listed}");
    assert_eq!(listed["dead_letters"][0]["attempts"], 3);
    assert_eq!(listed["dead_letters"][0]["endpoint"], "orders");

    // Replayed: back in the queue with its event, sent with the plugin's body and headers again.
    orders.answer_always(Answer::Status(200));
    let (status, replayed) = admin_post(gateway.addr(), &format!("/v1/deliveries/{dead}/replay")).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"][0], dead.as_str());
    let got = orders.next().await;
    assert_eq!((got.json()["version"].as_u64(), got.json()["order_id"].as_u64()), (Some(2), Some(7)));
    assert!(got.json().get("secret").is_none(), "{}", got.json());
    assert_eq!(got.header("x-transformed"), "yes");
    assert!(signature_valid(&got));
    let shown = wait_for_state(gateway.addr(), &dead, "succeeded").await;
    let outcomes: Vec<&str> =
        shown["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["http_error", "http_error", "http_error", "replayed", "success"], "{shown}");
    // The event is whole again: its record names both deliveries.
    let (status, shown) = admin_get(gateway.addr(), &format!("/v1/events/{event}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["payload"]["secret"], "x", "the stored event keeps what the producer sent");

    // No longer a dead letter anywhere (history says so once it holds the new outcome).
    let (_, listed) = admin_get(gateway.addr(), "/v1/dead-letters").await;
    assert!(dead_ids(&listed).is_empty(), "{listed}");
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 3).await;
    let row = pg
        .client()
        .await
        .query_one("SELECT state, json_array_length(attempts) FROM sluice_deliveries WHERE id = $1", &[&dead])
        .await
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("succeeded".to_string(), 5));
    let (status, _) = admin_post(gateway.addr(), &format!("/v1/deliveries/{dead}/replay")).await;
    assert_eq!(status, 409, "only dead letters are replayed");
    let unknown = sluice::id::format_delivery(sluice::id::delivery_of(sluice::id::new_event(), 1));
    let (status, _) = admin_post(gateway.addr(), &format!("/v1/deliveries/{unknown}/replay")).await;
    assert_eq!(status, 404);
    gateway.shutdown().await;
}

#[tokio::test]
async fn dead_letters_of_redis_and_of_history_are_paged_as_one_list_and_replayed_all_at_once() {
    let Some(pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let mut orders = Receiver::start().await;
    orders.answer_always(Answer::Status(500));
    let audit = Receiver::start().await;
    let toml = config(&redis, &pg, &orders, "15m") + &endpoint_toml("audit", &audit.url(), "");
    let gateway = start_gateway(&toml).await;
    // Three dead letters in Redis (and, once written, in history too: each must be listed once).
    for i in 0..3 {
        let (status, _) = post_event(gateway.addr(), "shop", &format!(r#"{{"n":{i}}}"#)).await;
        assert_eq!(status, 202);
    }
    for _ in 0..9 {
        orders.next().await;
    }
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 3).await;
    // Four that only history holds, older and newer than those, and one of another endpoint.
    let history =
        sluice::history::History::open(&sluice::config::HistoryConfig { postgres_url: pg.url(), ..Default::default() })
            .unwrap();
    let now = now_ms();
    let only_in_history: Vec<_> = [now - 60_000, now - 30_000, now + 30_000, now + 60_000]
        .into_iter()
        .map(|at| finished_at(at, "orders", "dead"))
        .collect();
    history.write(&only_in_history).await.unwrap();
    history.write(&[finished_at(now - 45_000, "audit", "dead")]).await.unwrap();

    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut path = "/v1/dead-letters?endpoint=orders&limit=2".to_string();
    loop {
        let (status, page) = admin_get(gateway.addr(), &path).await;
        assert_eq!(status, 200, "{page}");
        for d in page["dead_letters"].as_array().unwrap() {
            seen.push((d["dead_at"].as_u64().unwrap(), d["id"].as_str().unwrap().to_string()));
        }
        match (page["next_before"].as_u64(), page["next_before_id"].as_str()) {
            (Some(at), Some(id)) => {
                path = format!("/v1/dead-letters?endpoint=orders&limit=2&before={at}&before_id={id}")
            }
            _ => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "newest first, each once");
    assert_eq!(seen.len(), 7, "{seen:?}");
    for f in &only_in_history {
        assert!(seen.iter().any(|(_, id)| *id == f.delivery.id), "{} not listed", f.delivery.id);
    }
    let (_, all) = admin_get(gateway.addr(), "/v1/dead-letters").await;
    assert_eq!(dead_ids(&all).len(), 8, "{all}");

    // Replay all of the endpoint: those in Redis and those only history holds.
    orders.answer_always(Answer::Status(200));
    let (status, answer) = admin_post(gateway.addr(), "/v1/endpoints/orders/replay-dead").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replayed"], 7, "{answer}");
    let (_, left) = admin_get(gateway.addr(), "/v1/dead-letters?endpoint=orders").await;
    assert!(dead_ids(&left).is_empty(), "Redis holds them all again: {left}");
    let mut bodies = Vec::new();
    for _ in 0..7 {
        bodies.push(orders.next().await.json());
    }
    assert_eq!(bodies.iter().filter(|b| b["a"] == 1).count(), 4, "history's events were stored again: {bodies:?}");
    for f in &only_in_history {
        wait_for_state(gateway.addr(), &f.delivery.id, "succeeded").await;
    }
    let (_, all) = admin_get(gateway.addr(), "/v1/dead-letters").await;
    assert_eq!(dead_ids(&all).len(), 1, "only audit's is left: {all}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn finished_deliveries_previous_versions_left_for_history_are_written_by_this_one() {
    let Some(pg) = PostgresServer::start().await else { return };
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    // A delivery the previous version finished and indexed in the shard's `done` set: its hash,
    // its log string and its event's record are there, with the retention's TTL.
    let event = sluice::id::new_event();
    let delivery = sluice::id::format_delivery(sluice::id::delivery_of(event, 1));
    let finished_at = now_ms();
    let prefix = "sluice:{s0}:";
    let mut conn = redis.connection().await;
    let record = "00\nshop\norder_created\norders\n\ncontent-type:application/json\n\n{\"order_id\":41}";
    let attempt = format!(
        r#"{{"attempt":1,"at":{finished_at},"outcome":"success","status":200,"error":null,"latency_ms":1.5,"response":"ok"}}"#
    );
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{prefix}e:{}", event))
        .arg(record)
        .arg("EX")
        .arg(3600)
        .cmd("HSET")
        .arg(format!("{prefix}d:{delivery}"))
        .arg(&[("endpoint", "orders"), ("status", "succeeded"), ("attempts", "1"), ("lease", "")])
        .arg("updated")
        .arg(finished_at)
        .cmd("EXPIRE")
        .arg(format!("{prefix}d:{delivery}"))
        .arg(3600)
        .cmd("SET")
        .arg(format!("{prefix}d:{delivery}:log"))
        .arg(format!("{attempt}\n"))
        .arg("EX")
        .arg(3600)
        .cmd("ZADD")
        .arg(format!("{prefix}done"))
        .arg(finished_at)
        .arg(&delivery)
        .query_async(&mut conn)
        .await
        .unwrap();
    // And one an older version handed over in its history stream (an entry per delivery), one
    // field a part.
    let streamed_event = sluice::id::new_event();
    let streamed = sluice::id::format_delivery(sluice::id::delivery_of(streamed_event, 1));
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}history"))
        .arg("*")
        .arg(&[
            ("d", streamed.as_str()),
            ("ep", "orders"),
            ("m", &format!("dead {finished_at} 2 1")),
            ("e", "HTTP 500"),
            ("l", &format!("{attempt}\n{attempt}\n")),
            ("r", record),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    // And one the previous version handed over in that stream, its parts packed in one field
    // (this version packs a settle call's deliveries into one entry of another stream).
    let packed_event = sluice::id::new_event();
    let packed = sluice::id::format_delivery(sluice::id::delivery_of(packed_event, 1));
    let packed_record = record.replace("{\"order_id\":41}", "{\"order_id\":43}");
    let _: String = redis::cmd("EVAL")
        .arg(
            "return redis.call('XADD', KEYS[1], '*', 'v1', \
             cmsgpack.pack(ARGV[1], 'orders', ARGV[2], '', ARGV[3], ARGV[4], nil, nil, nil))",
        )
        .arg(1)
        .arg(format!("{prefix}history"))
        .arg(&packed)
        .arg(format!("succeeded {finished_at} 1 0"))
        .arg(format!("{attempt}\n"))
        .arg(&packed_record)
        .query_async(&mut conn)
        .await
        .unwrap();
    // This version's writer drains all three into PostgreSQL, empties the index and lets the keys
    // go after keep_in_redis.
    let gateway = start_gateway(&config(&redis, &pg, &receiver, "1s")).await;
    wait_for_metric(gateway.addr(), "sluice_history_written_total", 3).await;
    let row = pg
        .client()
        .await
        .query_one(
            "SELECT state, attempts_made, lapsed_leases, last_error, json_array_length(attempts) \
             FROM sluice_deliveries WHERE id = $1",
            &[&streamed],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, i32>(2),
            row.get::<_, String>(3),
            row.get::<_, i32>(4)
        ),
        ("dead".to_string(), 2, 1, "HTTP 500".to_string(), 2)
    );
    let streamed_left: u64 = redis::cmd("XLEN").arg(format!("{prefix}history")).query_async(&mut conn).await.unwrap();
    assert_eq!(streamed_left, 0);
    let row = pg
        .client()
        .await
        .query_one("SELECT state, attempts_made, event_payload FROM sluice_deliveries WHERE id = $1", &[&packed])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, Vec<u8>>(2)),
        ("succeeded".to_string(), 1, br#"{"order_id":43}"#.to_vec())
    );
    let row = pg
        .client()
        .await
        .query_one(
            "SELECT state, attempts_made, attempts->0->>'status' FROM sluice_deliveries WHERE id = $1",
            &[&delivery],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, Option<String>>(2)),
        ("succeeded".to_string(), 1, Some("200".to_string()))
    );
    let payload: Vec<u8> = pg
        .client()
        .await
        .query_one("SELECT payload FROM sluice_events_all WHERE id = $1", &[&sluice::id::format_event(event)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, br#"{"order_id":41}"#);
    let left: u64 = redis::cmd("ZCARD").arg(format!("{prefix}done")).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);
    wait_gone_from_redis(
        &redis,
        &[format!("{prefix}d:{delivery}"), format!("{prefix}d:{delivery}:log"), format!("{prefix}e:{}", event)],
    )
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_history_stream_drops_entries_older_than_the_retention_while_postgres_stays_away() {
    use crate::queue_conformance::{claim_when_due, claimed_settles, enqueue, record};
    use sluice::queue::{Queue, Settle};
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    // No writer runs, and PostgreSQL is never reached: what waits for it is only ever trimmed.
    let toml = format!(
        "[redis]\nurl = \"{}\"\n[queue]\nretention = \"1s\"\ndead_retention = \"1s\"\n\
         [history]\npostgres_url = \"postgres://127.0.0.1:1/unreached\"\nkeep_in_redis = \"1s\"\n",
        redis.url()
    );
    let config = sluice::config::from_toml(&toml).unwrap();
    config.validate().unwrap();
    let store = sluice::queue::Store::open(&config).unwrap();
    let stream = "sluice:{s0}:history:v2";
    let finish = |n: usize| {
        let store = store.clone();
        async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.extend(enqueue(&store, &[("orders", Duration::ZERO)]).await.1);
            }
            for claimed in claim_when_due(&store, n, Duration::from_secs(60)).await {
                claimed_settles(&store, &claimed, Some(&record(1, Some(200), None)), Settle::Ack).await;
            }
            ids
        }
    };
    let backlog = || async { store.depth(&[]).await.unwrap().history_backlog };
    finish(3).await;
    // One settlement at a time: an entry each.
    let entries: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut conn).await.unwrap();
    assert_eq!(entries, 3, "each settle call's finished deliveries wait in the stream");
    assert_eq!(backlog().await, Some(3));
    // Past the retention (1 s, on Redis' clock: the same machine's), the next settle call that
    // appends drops them; its own entry stays, and the count follows.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let last = finish(1).await;
    let entries: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut conn).await.unwrap();
    assert_eq!(entries, 1, "the entries older than the retention were dropped");
    assert_eq!(backlog().await, Some(1));
    let left = store.finished(0, 10).await.unwrap();
    let ids: Vec<&str> = left.iter().map(|f| f.delivery.id.as_str()).collect();
    assert_eq!(ids, vec![sluice::id::format_delivery(last[0])]);
    // Marked exported (PostgreSQL committed it), it leaves, twice marked or not.
    store.mark_exported(0, &left, Duration::from_secs(1)).await.unwrap();
    store.mark_exported(0, &left, Duration::from_secs(1)).await.unwrap();
    assert_eq!(backlog().await, Some(0));
    assert!(store.finished(0, 10).await.unwrap().is_empty());

    // Settled at once, deliveries share entries (a settle call's); every one is read back, once.
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.extend(enqueue(&store, &[("orders", Duration::ZERO)]).await.1);
    }
    let claimed = claim_when_due(&store, 40, Duration::from_secs(60)).await;
    let ok = record(1, Some(200), None);
    futures_util::future::join_all(claimed.iter().map(|c| claimed_settles(&store, c, Some(&ok), Settle::Ack))).await;
    assert_eq!(backlog().await, Some(40));
    let mut read = Vec::new();
    loop {
        // A small batch: entries are read whole, so a batch may hold more than it asked for.
        let batch = store.finished(0, 5).await.unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(batch.iter().map(|f| f.delivery.id.clone()));
        store.mark_exported(0, &batch, Duration::from_secs(1)).await.unwrap();
    }
    let mut want: Vec<String> = ids.iter().map(|id| sluice::id::format_delivery(*id)).collect();
    want.sort();
    read.sort();
    assert_eq!(read, want);
    assert_eq!(backlog().await, Some(0));
}

#[tokio::test]
async fn a_finished_delivery_whose_record_cannot_be_read_is_left_out_and_holds_up_no_other() {
    use sluice::queue::Queue;
    let redis = RedisServer::start().await;
    let mut conn = redis.connection().await;
    let toml =
        format!("[redis]\nurl = \"{}\"\n[history]\npostgres_url = \"postgres://127.0.0.1:1/unreached\"\n", redis.url());
    let store = sluice::queue::Store::open(&sluice::config::from_toml(&toml).unwrap()).unwrap();
    let ids: Vec<String> =
        (0..3).map(|_| sluice::id::format_delivery(sluice::id::delivery_of(sluice::id::new_event(), 1))).collect();
    let attempt =
        r#"{"attempt":1,"at":1,"outcome":"success","status":200,"error":null,"latency_ms":1.5,"response":"ok"}"#;
    let record = "00\nshop\norder_created\norders\n\ncontent-type:application/json\n\n{\"order_id\":41}";
    // One settle call's entry, as settle.lua packs it: a readable delivery, one whose attempt log is
    // not JSON, one whose event record is not a record, and parts that are not packed at all.
    let _: () = redis::cmd("EVAL")
        .arg(
            "local ok = cmsgpack.pack(ARGV[1], 'orders', ARGV[4], '', ARGV[5], ARGV[6], nil, nil, nil) \
             local bad_log = cmsgpack.pack(ARGV[2], 'orders', ARGV[4], '', 'not json\\n', ARGV[6], nil, nil, nil) \
             local bad_record = cmsgpack.pack(ARGV[3], 'orders', ARGV[4], '', ARGV[5], 'zz\\nno record', nil, nil, nil) \
             redis.call('XADD', KEYS[1], '*', 'n', '4', 'v2', cmsgpack.pack(bad_log, ok, bad_record, '\\5')) \
             redis.call('INCRBY', KEYS[2], 4)",
        )
        .arg(2)
        .arg("sluice:{s0}:history:v2")
        .arg("sluice:{s0}:history:v2:n")
        .arg(&ids[0])
        .arg(&ids[1])
        .arg(&ids[2])
        .arg("succeeded 1 1 0")
        .arg(format!("{attempt}\n"))
        .arg(record)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.depth(&[]).await.unwrap().history_backlog, Some(4));
    let batch = store.finished(0, 10).await.unwrap();
    let read: Vec<&str> = batch.iter().map(|f| f.delivery.id.as_str()).collect();
    assert_eq!(read, vec![ids[0].as_str()], "the readable delivery comes, the rest are left out");
    store.mark_exported(0, &batch, Duration::from_secs(1)).await.unwrap();
    assert_eq!(store.depth(&[]).await.unwrap().history_backlog, Some(0));
    let left: u64 = redis::cmd("XLEN").arg("sluice:{s0}:history:v2").query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0, "the entry went with the batch");
    assert!(store.finished(0, 10).await.unwrap().is_empty());
}
