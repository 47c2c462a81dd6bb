//! `--latency`: receipt → first attempt latency at half the peak rate, the methodology Outpost
//! plans for its own benchmark: `--events` events (default 100,000) from 10 producers to 100
//! endpoints, on Redis, through the real `sluice` binary (so its peak resident memory is its own).
//!
//! Each event carries the time its producer posted it (`sent_us`, on a clock the producers and the
//! receiver share in this process); the receiver takes the difference on arrival. The peak is
//! measured first, with the usual 64 producers; then 10 producers offer half of it, paced, and the
//! figures are from that run. No plugin: the route is source `s<i>` → endpoint `e<i>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use super::load::{percentile, produce_with, stamp_us, start_answering, MakeRequest};
use super::process::start_gateway;
use super::{base_toml, ms, start_redis};

/// Endpoints (and sources) the events are spread over.
const ENDPOINTS: usize = 100;
/// Producers at half the peak.
const PRODUCERS: usize = 10;

/// The stamp in a body: `"sent_us":<digits>`.
fn sent_us(body: &[u8]) -> Option<u64> {
    let key = b"\"sent_us\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

/// Prints the peak, then receipt → first attempt latency p50/p99/max at half of it, and the
/// gateway's peak resident memory.
pub async fn receipt_to_attempt(events: usize, peak_producers: usize) -> anyhow::Result<()> {
    let (_redis, url) = start_redis().await?;
    let latencies = Arc::new(Mutex::new(Vec::<u64>::with_capacity(events)));
    let (count, target, done) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(usize::MAX)), Arc::new(Notify::new()));
    let on_body = {
        let latencies = latencies.clone();
        Arc::new(move |body: &[u8]| {
            if let Some(sent) = sent_us(body) {
                latencies.lock().expect("latencies").push(stamp_us().saturating_sub(sent));
            }
        })
    };
    let receiver =
        start_answering(hyper::StatusCode::OK, count.clone(), target.clone(), done.clone(), Some(on_body)).await?;
    let mut toml = base_toml(&format!("[redis]\nurl = \"{url}\""), receiver);
    for i in 0..ENDPOINTS {
        toml += &format!(
            "[[endpoints]]\nname = \"e{i}\"\nurl = \"http://{receiver}/hook/{i}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
        );
    }
    for i in 0..ENDPOINTS {
        toml += &format!("[[routes]]\nsource = \"s{i}\"\nendpoints = [\"e{i}\"]\n");
    }
    let dir = std::env::temp_dir().join(format!("sluice-bench-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml)?;
    let (gateway, addr) = start_gateway(&config).await?;
    let sources: Vec<String> = (0..ENDPOINTS).map(|i| format!("s{i}")).collect();
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let request: MakeRequest = Arc::new(|i| {
        (i % ENDPOINTS, format!(r#"{{"event":"order_created","order_id":{i},"sent_us":{}}}"#, stamp_us()))
    });

    // Warm up, then the peak.
    let run = |n: usize, producers: usize, pace: Option<Duration>| {
        let (count, target, done, latencies, request, sources) =
            (count.clone(), target.clone(), done.clone(), latencies.clone(), request.clone(), sources.clone());
        async move {
            count.store(0, Ordering::Relaxed);
            target.store(n, Ordering::Relaxed);
            latencies.lock().expect("latencies").clear();
            let started = Instant::now();
            let ingest = produce_with(&[addr], &sources, n, producers, pace, request).await?;
            tokio::time::timeout(Duration::from_secs(300), done.notified())
                .await
                .context("deliveries did not all arrive")?;
            anyhow::Ok((n as f64 / started.elapsed().as_secs_f64(), ingest))
        }
    };
    run(2_000, peak_producers, None).await?;
    let (peak, _) = run(events, peak_producers, None).await?;
    let half = peak / 2.0;
    let pace = Duration::from_secs_f64(PRODUCERS as f64 / half);
    let (rate, ingest) = run(events, PRODUCERS, Some(pace)).await?;
    let mut waited = std::mem::take(&mut *latencies.lock().expect("latencies"));
    waited.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    println!(
        "receipt → first attempt ({events} events, {ENDPOINTS} endpoints, the sluice binary on Redis, no plugin):"
    );
    println!("  peak             {peak:>9.0} events/s delivered ({peak_producers} producers)");
    println!("  at half the peak {half:>9.0} events/s offered by {PRODUCERS} producers, {rate:.0} delivered");
    println!(
        "  posted → first attempt  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} attempts timed)",
        us(percentile(&waited, 0.5)),
        us(percentile(&waited, 0.99)),
        us(waited.last().copied().unwrap_or_default()),
        waited.len()
    );
    println!(
        "  ingest (202)            p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&ingest, 0.5)),
        ms(percentile(&ingest, 0.99))
    );
    if let Some(rss) = gateway.peak_rss_mib() {
        println!("  gateway peak RSS {rss:>9.1} MiB (VmHWM of the sluice process)");
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
