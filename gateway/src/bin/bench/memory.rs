//! Redis memory per delivery: `used_memory` of a Redis of our own before and after 10,000 events
//! whose deliveries stay pending (their first attempt an hour away), then 10,000 delivered ones
//! (kept for `queue.retention` with their attempt log).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;

use super::{base_toml, produce, start_receiver, start_redis};

const EVENTS: usize = 10_000;
/// What `produce` posts: about this many bytes of body per event.
const BODY_BYTES: usize = 75;
/// The headers kept with each event `produce` posts, names and values: `content-type:
/// application/json` and reqwest's `accept: */*`.
const KEPT_HEADER_BYTES: usize = 12 + 16 + 6 + 3;

async fn used_memory(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// Empties the bench's own Redis.
async fn flush(url: &str) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    Ok(())
}

/// Prints bytes of Redis memory per pending and per finished delivery.
pub async fn per_delivery() -> anyhow::Result<()> {
    let (_redis, url) = start_redis().await?;
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count.clone(), target.clone(), done.clone()).await?;
    let store = format!("[redis]\nurl = \"{url}\"");
    // `receiver` (from the base) delivers at once; `later` waits an hour for its first attempt.
    let toml = base_toml(&store, receiver)
        + &format!(
            "[[endpoints]]\nname = \"later\"\nurl = \"http://{receiver}/hook\"\nsecret = \
             \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nretry_schedule = [\"1h\"]\n"
        )
        + "[[routes]]\nsource = \"bench\"\nendpoints = [\"receiver\"]\n";
    let pending_toml = toml.replace("endpoints = [\"receiver\"]\n", "endpoints = [\"later\"]\n");

    // Finished: delivered and acked. Each phase starts on an empty Redis, so neither is charged
    // for the other's keys (a hash table that doubles within a phase is, as it would be in use).
    let gateway = sluice::Gateway::start(sluice::config::from_toml(&toml)?).await?;
    produce(gateway.addr(), 200, 16, None).await?;
    while count.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = used_memory(&url).await?;
    count.store(0, Ordering::Relaxed);
    target.store(EVENTS, Ordering::Relaxed);
    produce(gateway.addr(), EVENTS, 32, None).await?;
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await.context("deliveries did not all arrive")?;
    // The last acks follow the last answers by a settle batch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let finished = (used_memory(&url).await? as f64 - before as f64) / EVENTS as f64;
    gateway.shutdown().await;

    // Pending: stored, waiting for their first attempt.
    flush(&url).await?;
    let gateway = sluice::Gateway::start(sluice::config::from_toml(&pending_toml)?).await?;
    produce(gateway.addr(), 200, 16, None).await?;
    let before = used_memory(&url).await?;
    produce(gateway.addr(), EVENTS, 32, None).await?;
    let pending = (used_memory(&url).await? as f64 - before as f64) / EVENTS as f64;
    gateway.shutdown().await;
    println!("Redis memory per delivery ({EVENTS} events of ~{BODY_BYTES} bytes, one delivery each):");
    println!(
        "  pending          {pending:>6.0} bytes  (~{:.0} beyond the body, ~{:.0} beyond it and the {KEPT_HEADER_BYTES} bytes of kept headers)",
        pending - BODY_BYTES as f64,
        pending - (BODY_BYTES + KEPT_HEADER_BYTES) as f64
    );
    println!("  finished         {finished:>6.0} bytes  (kept for queue.retention with its attempt log)");
    Ok(())
}
