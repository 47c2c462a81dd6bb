//! `--backlog`: what a large backlog costs the deliveries that flow past it. Two Redis servers,
//! one holding 1,000 pending deliveries and one holding 1,000,000 (due in a day, for an endpoint
//! that is down: a receiver's outage), each then serving the same load through the real `sluice`
//! binary, alternately, `--rounds` times: events/s delivered end to end, and their ratio.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice::queue::Store;
use tokio::sync::Notify;

use super::process::start_gateway;
use super::search::fill;
use super::{base_toml, produce, start_receiver, start_redis};

/// Pending deliveries held by the small and the large store.
const BACKLOGS: [usize; 2] = [1_000, 1_000_000];

/// Prints events/s delivered past each backlog, per round, and the median ratio.
pub async fn cost(events: usize, producers: usize, rounds: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sluice-bench-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count.clone(), target.clone(), done.clone()).await?;
    let mut stores = Vec::new();
    for backlog in BACKLOGS {
        let (redis, url) = start_redis().await?;
        let store = Store::open(&sluice::config::from_toml(&format!("[redis]\nurl = \"{url}\"\n"))?)?;
        fill(&store, 0, backlog).await?;
        drop(store);
        let config = dir.join(format!("backlog-{backlog}.toml"));
        let toml = base_toml(&format!("[redis]\nurl = \"{url}\""), receiver)
            + "\n[[routes]]\nsource = \"bench\"\nendpoints = [\"receiver\"]\n";
        std::fs::write(&config, toml)?;
        stores.push((backlog, redis, config));
    }
    let mut ratios = Vec::new();
    println!("delivery past a backlog ({events} events, {producers} producers, the sluice binary, no plugin):");
    for round in 1..=rounds {
        let mut rates = Vec::new();
        for (_, _, config) in &stores {
            let (gateway, addr) = start_gateway(config).await?;
            count.store(0, Ordering::Relaxed);
            target.store(500, Ordering::Relaxed);
            produce(addr, 500, producers, None).await?;
            tokio::time::timeout(Duration::from_secs(60), done.notified()).await.context("warm-up not delivered")?;
            count.store(0, Ordering::Relaxed);
            target.store(events, Ordering::Relaxed);
            let started = Instant::now();
            produce(addr, events, producers, None).await?;
            tokio::time::timeout(Duration::from_secs(300), done.notified())
                .await
                .context("deliveries did not all arrive")?;
            rates.push(events as f64 / started.elapsed().as_secs_f64());
            drop(gateway);
        }
        let ratio = rates[1] / rates[0];
        ratios.push(ratio);
        println!(
            "  round {round}: {:.0} events/s past {} pending, {:.0} past {} pending: {ratio:.2}",
            rates[0], BACKLOGS[0], rates[1], BACKLOGS[1]
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("  median ratio     {:.2} (large backlog / small)", ratios[ratios.len() / 2]);
    drop(stores);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
