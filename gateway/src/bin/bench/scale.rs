//! The scaling curve: events/s delivered end to end by 1, 2 and 3 `sluice` processes (the real
//! binary, next to this one) sharing one Redis, then sharing a Redis Cluster of 3 primaries and 3
//! replicas (12 shards). Producers spread over the processes; one route, no plugin, one receiver.
//! On one machine every process, Redis node and producer shares the cores: the shape of the curve
//! is the figure, not its height.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Notify;

use super::process::start_gateway;
use super::{base_toml, free_port, produce_to, spawn_redis, start_receiver, Redis};

/// Where the queue lives for one curve, with the servers behind it (killed on drop).
struct Store {
    label: &'static str,
    /// The `[redis]` and `[queue]` sections of the gateways' config.
    toml: String,
    /// Every node's URL (to empty them between runs).
    urls: Vec<String>,
    _servers: Vec<Redis>,
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = 20_000 + (ulid::Ulid::new().random() % 20_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    bail!("no free port pair for a cluster node")
}

async fn start_cluster(dir: &Path) -> anyhow::Result<Store> {
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..6 {
        let port = cluster_port()?;
        let extra =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
        nodes.push(spawn_redis(port, &extra, &dir.join(port.to_string())).await?);
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .context("redis-cli (apt-get install redis-tools)")?;
    if !created.status.success() {
        bail!("cluster create failed: {}", String::from_utf8_lossy(&created.stdout));
    }
    let seeds: Vec<String> = addrs.iter().map(|a| format!("redis://{a}/")).collect();
    let quoted: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let toml = format!("[redis]\ncluster_nodes = [{}]\n[queue]\nshards = 12", quoted.join(", "));
    for _ in 0..200 {
        let mut ok = 0;
        for seed in &seeds {
            let mut conn = redis::Client::open(seed.as_str())?.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await?;
            ok += usize::from(info.contains("cluster_state:ok"));
        }
        if ok == seeds.len() {
            return Ok(Store { label: "cluster (3+3)", toml, urls: seeds, _servers: nodes });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the cluster never became ok")
}

/// Events/s delivered by `gateways` processes on `store`.
async fn run(store: &Store, gateways: usize, events: usize, producers: usize, dir: &Path) -> anyhow::Result<f64> {
    for url in &store.urls {
        let mut conn = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
        // Replicas refuse writes; emptying the primaries empties them too.
        let _: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
    }
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count.clone(), target.clone(), done.clone()).await?;
    let config = dir.join(format!("scale-{gateways}.toml"));
    let toml = base_toml(&store.toml, receiver) + "\n[[routes]]\nsource = \"bench\"\nendpoints = [\"receiver\"]\n";
    std::fs::write(&config, toml)?;
    let mut processes = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..gateways {
        let (process, addr) = start_gateway(&config).await?;
        processes.push(process);
        addrs.push(addr);
    }
    // Warm up every process, then measure.
    produce_to(&addrs, 300 * gateways, producers, None).await?;
    while count.load(Ordering::Relaxed) < 300 * gateways {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    count.store(0, Ordering::Relaxed);
    target.store(events, Ordering::Relaxed);
    let started = Instant::now();
    produce_to(&addrs, events, producers, None).await?;
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await.context("deliveries did not all arrive")?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Prints events/s delivered by 1, 2 and 3 processes on one Redis and on a cluster.
pub async fn curve(events: usize, producers: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("sluice-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let url = format!("redis://127.0.0.1:{port}/");
    let one = Store {
        label: "one Redis",
        toml: format!("[redis]\nurl = \"{url}\"\n[queue]\nshards = 1"),
        urls: vec![url],
        _servers: vec![spawn_redis(port, &[], &dir.join("one")).await?],
    };
    let cluster = start_cluster(&dir.join("cluster")).await?;
    println!("scaling ({events} events, {producers} producers spread over the processes, no plugin):");
    println!("  {:<14} {:>12} {:>12} {:>12}", "store", "1 process", "2 processes", "3 processes");
    for store in [&one, &cluster] {
        let mut figures = Vec::new();
        for gateways in 1..=3 {
            figures.push(run(store, gateways, events, producers, &dir).await?);
        }
        println!(
            "  {:<14} {:>8.0} ev/s {:>8.0} ev/s {:>8.0} ev/s   (x{:.2}, x{:.2} of one process)",
            store.label,
            figures[0],
            figures[1],
            figures[2],
            figures[1] / figures[0],
            figures[2] / figures[0]
        );
    }
    drop((one, cluster));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
