//! `--history`: the cost of `[history]`. On a PostgreSQL of its own (initdb in a scratch directory,
//! as the `postgres` user when run as root) and a Redis of its own, the same load twice, without
//! and with `[history]` (`keep_in_redis = "2s"`, so the drain is observable here): events/s
//! delivered end to end, the history writer's rows/s (from the first POST until its backlog is
//! empty), and Redis `used_memory` after the drain (with history: once `keep_in_redis` passed).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Notify;

use super::{base_toml, free_port, produce, start_receiver, start_redis};

/// A PostgreSQL server of the bench's own, killed (and its directory removed) on drop.
struct Postgres {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(program: PathBuf) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

async fn start_postgres() -> anyhow::Result<Postgres> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (apt-get install postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    versions.sort();
    let bin = versions.pop().context("no PostgreSQL binaries")?;
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-pg-{port}"));
    std::fs::create_dir_all(&dir)?;
    if rustix::process::geteuid().is_root() {
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status()?;
    }
    let data = dir.join("data");
    let initdb = as_postgres(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync"])
        .stdout(Stdio::null())
        .output()?;
    if !initdb.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    }
    let child = as_postgres(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let postgres = Postgres { child, dir, url };
    for _ in 0..500 {
        if tokio_postgres::connect(&postgres.url, tokio_postgres::NoTls).await.is_ok() {
            return Ok(postgres);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("postgres did not come up")
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|n| n.trim().parse().ok()).context("used_memory")
}

async fn metric(gateway: std::net::SocketAddr, name: &str) -> anyhow::Result<Option<u64>> {
    let text = reqwest::Client::builder().no_proxy().build()?.get(format!("http://{gateway}/metrics")).send().await?;
    let text = text.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
}

/// One run of `events` events: (events/s delivered, Redis bytes after the drain, writer rows/s).
async fn run(events: usize, producers: usize, history: Option<&str>) -> anyhow::Result<(f64, u64, Option<f64>)> {
    let (_redis, url) = start_redis().await?;
    let mut conn = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count.clone(), target.clone(), done.clone()).await?;
    let history_toml =
        history.map(|pg| format!("[history]\npostgres_url = \"{pg}\"\nkeep_in_redis = \"2s\"\n")).unwrap_or_default();
    let toml = base_toml(&format!("[redis]\nurl = \"{url}\"\n{history_toml}"), receiver)
        + "[[routes]]\nsource = \"bench\"\nendpoints = [\"receiver\"]\n";
    let gateway = sluice::Gateway::start(sluice::config::from_toml(&toml)?).await?;
    let before = used_memory(&mut conn).await?;
    target.store(events, Ordering::Relaxed);
    let started = Instant::now();
    produce(gateway.addr(), events, producers, None).await?;
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await.context("deliveries did not all arrive")?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let mut rows = None;
    if history.is_some() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(gateway.addr(), "sluice_history_written_total").await? < Some(events as u64) {
            if Instant::now() > deadline {
                bail!("history never caught up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rows = Some(events as f64 / started.elapsed().as_secs_f64());
        // keep_in_redis (2 s), and Redis' expiry cycle to reclaim the keys.
        tokio::time::sleep(Duration::from_secs(4)).await;
    } else {
        // The last acks follow the last deliveries by a settle batch.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = used_memory(&mut conn).await?;
    gateway.shutdown().await;
    Ok((rate, after.saturating_sub(before), rows))
}

/// Prints the figures of both runs.
pub async fn cost(events: usize, producers: usize) -> anyhow::Result<()> {
    let postgres = start_postgres().await?;
    let (off, off_bytes, _) = run(events, producers, None).await?;
    let (on, on_bytes, rows) = run(events, producers, Some(&postgres.url)).await?;
    println!("history in PostgreSQL ({events} events, {producers} producers, no plugin, one Redis):");
    println!(
        "  without [history]  {off:>8.0} events/s delivered; Redis after the drain {:>6.1} MB",
        off_bytes as f64 / 1e6
    );
    println!(
        "  with [history]     {on:>8.0} events/s delivered ({:.2} of without); Redis after keep_in_redis {:>6.1} MB",
        on / off,
        on_bytes as f64 / 1e6
    );
    if let Some(rows) = rows {
        println!("  history writer     {rows:>8.0} rows/s (first POST until every delivery is in PostgreSQL)");
    }
    Ok(())
}
