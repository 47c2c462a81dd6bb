//! `--history`: the cost of `[history]`. On a PostgreSQL of its own (initdb in a scratch directory,
//! as the `postgres` user when run as root) and a Redis of its own, the same load without
//! `[history]`, with it as configured by default, and with `keep_in_redis = "2s"` (so the drain is
//! observable here), in rounds: events/s delivered end to end, CPU per event of this process, of
//! Redis and of PostgreSQL, the history writer's rows/s (from the first POST until its backlog is
//! empty), and Redis `used_memory` after the drain. Then the writer's own pace ([`drain`]): how fast
//! it writes a backlog that waited in Redis while PostgreSQL could not take it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Notify;

use super::load::median;
use super::process::cpu_of;
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

/// CPU seconds PostgreSQL has used: its postmaster and every process it started.
fn postgres_cpu(postmaster: u32) -> f64 {
    let parent = postmaster.to_string();
    let mut total = cpu_of(&parent);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else { continue };
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1));
        if ppid == Some(parent.as_str()) {
            total += cpu_of(&name);
        }
    }
    total
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|n| n.trim().parse().ok()).context("used_memory")
}

/// CPU seconds Redis has used (user + system).
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

async fn metric(gateway: std::net::SocketAddr, name: &str) -> anyhow::Result<Option<u64>> {
    let text = reqwest::Client::builder().no_proxy().build()?.get(format!("http://{gateway}/metrics")).send().await?;
    let text = text.text().await?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
}

/// What one run measured.
struct Run {
    /// Events/s delivered end to end.
    rate: f64,
    /// Redis bytes after the drain.
    redis_bytes: u64,
    /// History writer rows/s (first POST until every delivery is in PostgreSQL).
    rows: Option<f64>,
    /// CPU µs per event of this process (producers, gateway, receiver).
    gateway_cpu_us: f64,
    /// CPU µs per event of Redis.
    redis_cpu_us: f64,
    /// CPU µs per event of PostgreSQL.
    postgres_cpu_us: f64,
}

/// `[history]` in a run: the PostgreSQL (url, postmaster's pid for the CPU count) and
/// `keep_in_redis`.
#[derive(Clone, Copy)]
struct WithHistory<'a> {
    postgres: (&'a str, u32),
    keep_in_redis: &'a str,
}

/// A Redis, a receiver and a gateway of a run's own, with or without `[history]`.
struct Setup {
    _redis: super::Redis,
    conn: redis::aio::MultiplexedConnection,
    /// Deliveries the receiver waits for before `done` fires.
    target: Arc<AtomicUsize>,
    done: Arc<Notify>,
    gateway: sluice::Gateway,
}

async fn setup(history: Option<WithHistory<'_>>) -> anyhow::Result<Setup> {
    let (redis, url) = start_redis().await?;
    let conn = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count, target.clone(), done.clone()).await?;
    let history_toml = history
        .map(|h| format!("[history]\npostgres_url = \"{}\"\nkeep_in_redis = \"{}\"\n", h.postgres.0, h.keep_in_redis))
        .unwrap_or_default();
    let toml = base_toml(&format!("[redis]\nurl = \"{url}\"\n{history_toml}"), receiver)
        + "[[routes]]\nsource = \"bench\"\nendpoints = [\"receiver\"]\n";
    let gateway = sluice::Gateway::start(sluice::config::from_toml(&toml)?).await?;
    Ok(Setup { _redis: redis, conn, target, done, gateway })
}

impl Setup {
    /// Posts `events` events with `producers` producers and waits until every delivery arrived.
    async fn deliver(&self, events: usize, producers: usize) -> anyhow::Result<()> {
        self.target.store(events, Ordering::Relaxed);
        produce(self.gateway.addr(), events, producers, None).await?;
        tokio::time::timeout(Duration::from_secs(120), self.done.notified())
            .await
            .context("deliveries did not all arrive")?;
        Ok(())
    }

    /// Waits (at most 120 s) until the history writer has written `rows` deliveries.
    async fn written(&self, rows: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while metric(self.gateway.addr(), "sluice_history_written_total").await? < Some(rows) {
            if Instant::now() > deadline {
                bail!("history never caught up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// One run of `events` events, with or without `[history]`.
async fn run(events: usize, producers: usize, history: Option<WithHistory<'_>>) -> anyhow::Result<Run> {
    let mut set = setup(history).await?;
    let postgres_pid = history.map(|h| h.postgres.1);
    let before = used_memory(&mut set.conn).await?;
    let cpu_before = (cpu_of("self"), redis_cpu(&mut set.conn).await?, postgres_pid.map_or(0.0, postgres_cpu));
    let started = Instant::now();
    set.deliver(events, producers).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let mut rows = None;
    if let Some(history) = history {
        set.written(events as u64).await?;
        rows = Some(events as f64 / started.elapsed().as_secs_f64());
        let keep = humantime::parse_duration(history.keep_in_redis)?;
        if keep < Duration::from_secs(10) {
            // keep_in_redis, and Redis' expiry cycle to reclaim the keys.
            tokio::time::sleep(keep + Duration::from_secs(2)).await;
        }
    } else {
        // The last acks follow the last deliveries by a settle batch.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = used_memory(&mut set.conn).await?;
    let per_event = |seconds: f64| seconds * 1e6 / events as f64;
    let gateway_cpu_us = per_event(cpu_of("self") - cpu_before.0);
    let redis_cpu_us = per_event(redis_cpu(&mut set.conn).await? - cpu_before.1);
    let postgres_cpu_us = per_event(postgres_pid.map_or(0.0, postgres_cpu) - cpu_before.2);
    set.gateway.shutdown().await;
    Ok(Run { rate, redis_bytes: after.saturating_sub(before), rows, gateway_cpu_us, redis_cpu_us, postgres_cpu_us })
}

/// What [`drain`] measured.
struct Drain {
    /// Finished deliveries waiting in Redis when the tables were released.
    waiting: u64,
    /// Rows the writer wrote after the release.
    rows: f64,
    /// Seconds from the release until every one was written.
    seconds: f64,
    /// CPU µs per row written, over that span: this process (the gateway, its writer), Redis,
    /// PostgreSQL.
    cpu_us: (f64, f64, f64),
}

/// The writer's own pace, with nothing else running: the load runs while a transaction of the
/// bench's holds the history tables locked (`ACCESS EXCLUSIVE`, as good as a PostgreSQL that stopped
/// answering: the writer's first `COPY` waits, and finished deliveries pile up in Redis); once every
/// delivery arrived the lock goes, and the writer drains the backlog as fast as it can. The tables
/// must exist (a run with `[history]` made them).
async fn drain(events: usize, producers: usize, history: WithHistory<'_>) -> anyhow::Result<Drain> {
    let (client, connection) = tokio_postgres::connect(history.postgres.0, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client.batch_execute("BEGIN; LOCK TABLE sluice_deliveries, sluice_events IN ACCESS EXCLUSIVE MODE").await?;
    let mut set = setup(Some(history)).await?;
    set.deliver(events, producers).await?;
    let written = metric(set.gateway.addr(), "sluice_history_written_total").await?.unwrap_or(0);
    let waiting = metric(set.gateway.addr(), "sluice_history_backlog").await?.unwrap_or(0);
    let cpu_before = (cpu_of("self"), redis_cpu(&mut set.conn).await?, postgres_cpu(history.postgres.1));
    let released = Instant::now();
    client.batch_execute("ROLLBACK").await?;
    set.written(events as u64).await?;
    let seconds = released.elapsed().as_secs_f64();
    let rows = (events as u64).saturating_sub(written).max(1) as f64;
    let per_row = |spent: f64| spent * 1e6 / rows;
    let cpu_us = (
        per_row(cpu_of("self") - cpu_before.0),
        per_row(redis_cpu(&mut set.conn).await? - cpu_before.1),
        per_row(postgres_cpu(history.postgres.1) - cpu_before.2),
    );
    set.gateway.shutdown().await;
    drop(client);
    let _ = connection.await;
    Ok(Drain { waiting, rows, seconds, cpu_us })
}

/// Prints the figures of the runs, round by round, and the medians. A round runs, back to back
/// (this VM's neighbours move single runs by ±15 %, so ratios are taken within a round), in an order
/// rotated by one from round to round (rounds in multiples of 3 put each one first equally often):
/// - without `[history]`: records kept for `queue.retention` (7 days), none expires in the run;
/// - with `[history]` as configured by default (`keep_in_redis` = 15 min): none expires in the run
///   either. This pair is the cost of history: in steady state both configurations also expire
///   every finished delivery's keys, one `queue.retention` and the other `keep_in_redis` after it
///   finished, and neither run here pays that;
/// - with `keep_in_redis = "2s"`: the same load, whose keys expire during and right after the run,
///   so Redis' memory once `keep_in_redis` passed is observable (and the expiry's cost shows).
pub async fn cost(events: usize, producers: usize, rounds: usize) -> anyhow::Result<()> {
    let postgres = start_postgres().await?;
    let pg = (postgres.url.as_str(), postgres.child.id());
    let default = WithHistory { postgres: pg, keep_in_redis: "15m" };
    let short = WithHistory { postgres: pg, keep_in_redis: "2s" };
    println!("history in PostgreSQL ({events} events, {producers} producers, no plugin, one Redis), {rounds} rounds:");
    let (mut rates, mut short_rates) = (Vec::new(), Vec::new());
    let (mut extra_gateway, mut extra_redis, mut pg_cpus, mut writer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // The three runs of a round go in an order rotated from round to round, so that none is
        // always first (on a fresh process, or after a gateway that just stopped) or always last.
        let configs = [None, Some(default), Some(short)];
        let mut measured: [Option<Run>; 3] = [None, None, None];
        for i in 0..3 {
            let at = (i + round - 1) % 3;
            measured[at] = Some(run(events, producers, configs[at]).await?);
        }
        let [Some(off), Some(on), Some(drained)] = measured else { unreachable!("every configuration ran") };
        let first = ["without [history]", "[history]", "keep_in_redis = 2s"][(round - 1) % 3];
        rates.push(on.rate / off.rate);
        short_rates.push(drained.rate / off.rate);
        extra_gateway.push(on.gateway_cpu_us - off.gateway_cpu_us);
        extra_redis.push(on.redis_cpu_us - off.redis_cpu_us);
        pg_cpus.push(on.postgres_cpu_us);
        writer.push(on.rows.unwrap_or(0.0));
        println!(
            "  round {round} (ran first: {first}):\n           without [history]     {:>6.0} events/s; CPU/event: gateway process {:>3.0} µs, Redis {:>3.0} µs; Redis after the drain {:>5.1} MB",
            off.rate,
            off.gateway_cpu_us,
            off.redis_cpu_us,
            off.redis_bytes as f64 / 1e6
        );
        for (name, with) in [("[history]          ", &on), ("keep_in_redis = 2s ", &drained)] {
            println!(
                "           {name} {:>6.0} events/s ({:.2} of without); CPU/event: gateway process {:>3.0} µs, Redis {:>3.0} µs, PostgreSQL {:>3.0} µs; Redis after the drain {:>4.1} MB; writer {:>6.0} rows/s",
                with.rate,
                with.rate / off.rate,
                with.gateway_cpu_us,
                with.redis_cpu_us,
                with.postgres_cpu_us,
                with.redis_bytes as f64 / 1e6,
                with.rows.unwrap_or(0.0),
            );
        }
    }
    println!("  medians of the rounds:");
    println!(
        "    events/s end to end with [history] (everything on the same cores): {:.2} of without ({:.2} with keep_in_redis = 2s, whose expiry falls in the run)",
        median(rates),
        median(short_rates)
    );
    println!(
        "    CPU per event [history] adds: gateway process {:+.0} µs, Redis {:+.0} µs, PostgreSQL {:.0} µs; writer {:.0} rows/s",
        median(extra_gateway),
        median(extra_redis),
        median(pg_cpus),
        median(writer)
    );
    println!("  (the gateway process also runs the producers and the receiver; writer rows/s: from the first");
    println!("   POST until every delivery is in PostgreSQL)");
    let drained = drain(events, producers, default).await?;
    println!(
        "  the writer's own pace: the same load with the history tables locked, then released: {} deliveries waited in Redis,",
        drained.waiting
    );
    println!(
        "    written in {:.1} s: {:.0} rows/s; CPU per row: gateway process {:.1} µs, Redis {:.1} µs, PostgreSQL {:.1} µs",
        drained.seconds,
        drained.rows / drained.seconds,
        drained.cpu_us.0,
        drained.cpu_us.1,
        drained.cpu_us.2
    );
    Ok(())
}
