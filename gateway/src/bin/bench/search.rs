//! `--search`: what one page of `GET /v1/deliveries` costs as the store grows, on both backends.
//!
//! Fills a store of the bench's own (a `redis-server` on a free loopback port, or a scratch redb
//! file) with pending events of one delivery each, straight through the queue (no HTTP: this
//! measures the search, not ingest), then times pages (median of 5) of:
//! - the newest 50, unfiltered;
//! - the newest 50 of one endpoint that one event in 1,000 goes to (a selective filter: the page
//!   reads its budget of 10,000 records and stops, or fills first);
//! - the newest 50 of the last tenth of the time range;
//! - the newest 50 open ones (what the store is asked with `[history]`).
//!
//! Redis keeps no index of finished deliveries (see `queue/redis/search.rs`): a page walks the
//! keyspace with `SCAN`, so its cost grows with the number of keys, and a page of open ones reads
//! the queue's sorted sets, so its cost grows with the deliveries waiting (here, all of them); the
//! embedded store reads its table from the cursor down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::queue::search::Search;
use sluice::queue::{NewDelivery, NewEvent, Queue, Store};
use ulid::Ulid;

use super::{ms, start_redis};

/// Store sizes measured, in events (one delivery each).
const SIZES: [usize; 2] = [100_000, 1_000_000];
/// One event in this many goes to the rare endpoint.
const RARE: usize = 1_000;

/// Prints ms per search page at each store size, on Redis and on the embedded store.
pub async fn cost() -> anyhow::Result<()> {
    for embedded in [false, true] {
        let (_redis, dir, store_toml) = if embedded {
            let dir = std::env::temp_dir().join(format!("sluice-bench-search-{}", std::process::id()));
            let toml = format!("[queue]\nbackend = \"embedded\"\npath = \"{}\"\n", dir.join("queue.redb").display());
            (None, Some(dir), toml)
        } else {
            let (redis, url) = start_redis().await?;
            (Some(redis), None, format!("[redis]\nurl = \"{url}\"\n"))
        };
        let config = sluice::config::from_toml(&store_toml)?;
        let store = Store::open(&config)?;
        let name = if embedded { "embedded" } else { "redis" };
        let (mut stored, start_ms) = (0, sluice_now_ms());
        for size in SIZES {
            fill(&store, stored, size).await?;
            stored = size;
            let now = sluice_now_ms();
            let newest = Search { limit: 50, ..Search::default() };
            let rare = Search { endpoint: Some("rare".into()), ..newest.clone() };
            let recent = Search { since: Some(now - (now - start_ms) / 10), ..newest.clone() };
            let open = Search { open_only: true, ..newest.clone() };
            let mut line = format!("search ({name}, {size} events pending):");
            let searches =
                [("newest 50", &newest), ("1-in-1000 endpoint", &rare), ("last tenth", &recent), ("open only", &open)];
            for (what, search) in searches {
                let (took, page) = median_page(&store, search).await?;
                let stopped = if page.1 { ", stopped at its budget" } else { "" };
                line.push_str(&format!(" {what} {:.1} ms ({} found{stopped});", ms(took), page.0));
            }
            println!("{}", line.trim_end_matches(';'));
        }
        drop(store);
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// Stores events `from..to`, each with one delivery due in a day, concurrently.
pub(super) async fn fill(store: &Store, from: usize, to: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let endpoints: [Arc<str>; 3] = [Arc::from("a"), Arc::from("b"), Arc::from("rare")];
    let endpoint_of = |i: usize| endpoints[if i.is_multiple_of(RARE) { 2 } else { i % 2 }].clone();
    store_events(store, from..to, Duration::from_secs(86_400), 512, endpoint_of).await?;
    println!("  (stored {} events in {:.1} s)", to - from, started.elapsed().as_secs_f64());
    Ok(())
}

/// Stores the events `numbers` (an `order.created` with a 40-byte body each, no idempotency key),
/// each with one delivery to `endpoint_of(number)` due after `delay`, `concurrency` at a time,
/// straight through the queue.
pub(super) async fn store_events(
    store: &Store,
    numbers: std::ops::Range<usize>,
    delay: Duration,
    concurrency: usize,
    endpoint_of: impl Fn(usize) -> Arc<str>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let enqueues = numbers.map(|i| {
        let store = store.clone();
        let endpoint = endpoint_of(i);
        async move {
            let event = sluice::id::new_event();
            let new = NewEvent {
                id: event,
                source: "bench",
                event_type: "order.created",
                headers: &[],
                payload: br#"{"type":"order.created","order_id":12345}"#,
                idempotency: None,
            };
            let delivery =
                NewDelivery { id: sluice::id::delivery_of(event, 1), endpoint, payload: None, headers: vec![], delay };
            store.enqueue(&new, &[delivery]).await
        }
    });
    let results: Vec<_> = futures_util::stream::iter(enqueues).buffer_unordered(concurrency).collect().await;
    for result in results {
        result?;
    }
    Ok(())
}

/// The median time of 5 runs of `search`, with what the page found and whether it stopped early.
async fn median_page(store: &Store, search: &Search) -> anyhow::Result<(Duration, (usize, bool))> {
    let mut times = Vec::new();
    let mut page = (0, false);
    for _ in 0..5 {
        let started = Instant::now();
        let found = store.search(search).await?;
        times.push(started.elapsed());
        page = (found.found.len(), found.stopped_at.is_some());
    }
    times.sort();
    Ok((times[2], page))
}

fn sluice_now_ms() -> u64 {
    Ulid::new().timestamp_ms()
}
