//! `bench`: drives a real gateway end to end and prints figures.
//!
//! It starts its own `redis-server` on a free loopback port (or, with `--backend embedded`, keeps the
//! queue in a scratch redb file instead), a receiver on loopback that answers 200,
//! and a gateway (in this process) with one route through the example filter plugin (when built) to
//! the receiver. Then:
//!
//! 0. raw HTTP baseline: the same producers POST the same events to a bare hyper server on loopback
//!    that answers 202 at once, right before each end-to-end phase; each phase's throughput is also
//!    printed as a ratio to the run just before it;
//! 1. peak: `--producers` concurrent producers POST `--events` events as fast as they can; prints
//!    events/s delivered end to end (first POST → last delivery received) and ingest latency;
//! 2. half rate: the same at half the measured peak, paced; prints ingest latency p50/p99;
//! 3. the peak again with chains of 0 and 3 plugins;
//! 4. noisy neighbour: ingest latency of a route without plugins, idle and while 8 producers drive
//!    a route whose plugin loops to its 100 ms deadline;
//! 5. Redis memory per pending and per finished delivery ([`memory`]);
//! 6. plugin calls: µs per call of each example plugin (warm and fresh instances), p50/p99.
//!
//! With `--scale`, only the scaling curve instead ([`scale`]): events/s delivered by 1, 2 and 3
//! `sluice` processes on one Redis and on a Redis Cluster of 3 primaries and 3 replicas. With
//! `--history`, only the cost of `[history]` ([`history`]): events/s with and without it, the
//! history writer's rows/s, Redis memory after the drain, and the writer's own pace draining a
//! backlog. With `--search`, only what a page of
//! the delivery search costs as the store grows ([`search`]). With `--latency`, only receipt → first
//! attempt latency at half the peak over 100 endpoints, and the gateway's peak memory ([`latency`]).
//! With `--backlog`, only the delivery rate past 1,000 and past 1,000,000 pending deliveries
//! ([`backlog`]). With `--steps`, only Redis' CPU per delivery for each of enqueue, claim and
//! settle, and with `[history]` for the history stream's export too, driven through the queue
//! without HTTP ([`steps`]). Redis' CPU and commands per event are printed after each end-to-end
//! phase on Redis ([`redis_stats`]), and with every phase this process' own CPU per request (raw) or
//! per event (end to end), their difference (about the gateway's), and its context switches per
//! event ([`process`]).
//!
//! Usage: `cargo run --release -p sluice --bin bench -- [--events N] [--producers N] [--no-plugin]
//! [--shards N] [--backend redis|embedded] [--scale] [--memory] [--history [--rounds N]] [--search]
//! [--latency] [--backlog [--rounds N]] [--steps [--rounds N]] [--log] [--peak [--rounds N]]`
//! (`--memory`: only the memory phase; `--log`: the gateway logs as the binary does, to stderr;
//! `--peak`: only the raw baseline and the peak with one plugin, e.g. under `perf record`; with
//! `--rounds N`, N such pairs and their medians)

mod backlog;
mod history;
mod latency;
mod load;
mod memory;
mod options;
mod plugin_calls;
mod process;
mod redis_stats;
mod scale;
mod search;
mod steps;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use load::{percentile, produce, produce_to, start_raw_server, start_receiver};
use options::{options, Options};
use tokio::sync::Notify;

/// mimalloc: markedly cheaper than glibc malloc for the many small, short-lived allocations of
/// HTTP and Redis work (measured with the benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A Redis of the bench's own on a free port, and its URL.
async fn start_redis() -> anyhow::Result<(Redis, String)> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-redis-{port}"));
    let redis = spawn_redis(port, &[], &dir).await?;
    Ok((redis, format!("redis://127.0.0.1:{port}/")))
}

/// Starts `redis-server` on `port` with `extra` arguments, working in `dir` (its own, so nothing
/// Redis writes lands in the source tree), and waits until it answers.
async fn spawn_redis(port: u16, extra: &[&str], dir: &Path) -> anyhow::Result<Redis> {
    std::fs::create_dir_all(dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .context("failed to start redis-server (apt-get install redis-server)")?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    for _ in 0..500 {
        if client.get_multiplexed_async_connection().await.is_ok() {
            return Ok(Redis(child));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("redis-server on {port} did not come up")
}

/// What the raw baseline measured: requests/s, and this process' CPU per request (the producers and
/// the bare server).
#[derive(Clone, Copy)]
struct Raw {
    rate: f64,
    cpu_us: f64,
}

/// Requests/s of the producers against the bare server `server` ([`start_raw_server`]): the
/// baseline the figures are ratios of. Measured again right before each end-to-end phase, so each
/// ratio compares two runs seconds apart (this VM's speed drifts by a quarter and more between
/// minutes).
async fn raw_baseline(server: SocketAddr, options: &Options) -> anyhow::Result<Raw> {
    produce(server, 500, options.producers, None).await?;
    let cpu = process::cpu_of("self");
    let started = Instant::now();
    produce(server, options.events, options.producers, None).await?;
    let rate = options.events as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (process::cpu_of("self") - cpu) * 1e6 / options.events as f64;
    println!("raw HTTP baseline (the same {} producers, a bare hyper server answering 202):", options.producers);
    println!("  answered         {rate:>9.0} requests/s");
    println!("  this process     {cpu_us:>9.1} µs of CPU per request (the producers and the bare server)");
    Ok(Raw { rate, cpu_us })
}

fn plugin_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist").join(format!("{name}.wasm"))
}

/// What every benchmark gateway shares: a free port, the store, loopback allowed, the receiver.
fn base_toml(store: &str, receiver: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{store}
[security]
allow_private_destinations = true
allow_unauthenticated_sources = true
[[endpoints]]
name = "receiver"
url = "http://{receiver}/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
timeout = "10s"
"#
    )
}

fn gateway_toml(store: &str, receiver: SocketAddr, chain: usize) -> String {
    let mut plugin_tables = String::new();
    for i in 1..=chain {
        plugin_tables += &format!(
            "[[plugins]]\nname = \"filter{i}\"\npath = \"{}\"\nconfig = {{ drop_types = [\"test.*\"] }}\n",
            plugin_path("rust-filter").display()
        );
    }
    let plugin = plugin_tables;
    let plugins = format!("[{}]", (1..=chain).map(|i| format!("\"filter{i}\"")).collect::<Vec<_>>().join(", "));
    let base = base_toml(store, receiver);
    format!(
        r#"{base}
{plugin}
[[routes]]
source = "bench"
plugins = {plugins}
endpoints = ["receiver"]
"#
    )
}

/// Runs the end-to-end benchmark with a chain of `chain` rust-filter plugins; with `half_rate`, also
/// measures ingest latency at half the peak rate.
/// `raw` is [`raw_baseline`]'s figure, measured just before.
async fn end_to_end(options: &Options, chain: usize, half_rate: bool, raw: Raw) -> anyhow::Result<Peak> {
    // The queue: a redis-server of our own, or a scratch embedded store.
    let mut _redis = None;
    let mut redis_conn = None;
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}-{chain}.redb", std::process::id()));
    let store = if options.embedded {
        let _ = std::fs::remove_file(&scratch);
        format!("[queue]\nbackend = \"embedded\"\npath = \"{}\"", scratch.display())
    } else {
        let (redis, url) = start_redis().await?;
        _redis = Some(redis);
        redis_conn = Some(redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?);
        format!("[redis]\nurl = \"{url}\"\n[queue]\nshards = {}", options.shards)
    };
    let count = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(options.events));
    let done = Arc::new(Notify::new());
    let receiver = start_receiver(count.clone(), target.clone(), done.clone()).await?;
    let config = sluice::config::from_toml(&gateway_toml(&store, receiver, chain))?;
    let gateway = sluice::Gateway::start(config).await?;
    let backend = if options.embedded { "embedded store" } else { "Redis" };
    let chain = match chain {
        0 => format!("no plugin, {backend}"),
        n => format!("a chain of {n} rust-filter plugin(s), {backend}"),
    };

    // Warm up connections and code paths.
    target.store(usize::MAX, Ordering::Relaxed);
    produce(gateway.addr(), 500, options.producers, None).await?;
    while count.load(Ordering::Relaxed) < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    count.store(0, Ordering::Relaxed);
    target.store(options.events, Ordering::Relaxed);

    let redis_start = match redis_conn.as_mut() {
        Some(conn) => Some(redis_stats::start(conn).await?),
        None => None,
    };
    let (cpu, switches) = (process::cpu_of("self"), process::own_context_switches());
    let started = Instant::now();
    let latencies = produce(gateway.addr(), options.events, options.producers, None).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await.context("deliveries did not all arrive")?;
    let total = started.elapsed().as_secs_f64();
    let cpu_us = (process::cpu_of("self") - cpu) * 1e6 / options.events as f64;
    let switches = (process::own_context_switches().saturating_sub(switches)) as f64 / options.events as f64;
    let peak = options.events as f64 / total;
    println!("end to end ({chain}, {} producers, {} events):", options.producers, options.events);
    let ingested = options.events as f64 / ingest_secs;
    println!(
        "  delivered        {peak:>9.0} events/s  {:.3} of raw  ({total:.2} s from first POST to last delivery)",
        peak / raw.rate
    );
    println!("  ingested         {ingested:>9.0} events/s  {:.3} of raw", ingested / raw.rate);
    println!(
        "  ingest latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    let redis_us = match (redis_conn.as_mut(), redis_start) {
        (Some(conn), Some(start)) => Some(redis_stats::report(conn, start, options.events).await?),
        _ => None,
    };
    // The producers' share is the raw run's too (and the receiver's about the bare server's), so
    // the difference is about the gateway's.
    let gateway_us = cpu_us - raw.cpu_us;
    println!(
        "  this process     {cpu_us:>9.1} µs of CPU per event, {switches:.2} context switches per event; \
         {gateway_us:.1} µs more than raw's per request (about the gateway's own)"
    );
    let measured = Peak { ratio: peak / raw.rate, redis_us, gateway_us, switches };

    if !half_rate {
        gateway.shutdown().await;
        let _ = std::fs::remove_file(&scratch);
        return Ok(measured);
    }
    // Half the peak rate, paced across the producers.
    let half_rate = peak / 2.0;
    let events = (half_rate * 5.0) as usize;
    count.store(0, Ordering::Relaxed);
    target.store(events, Ordering::Relaxed);
    let pace = Duration::from_secs_f64(options.producers as f64 / half_rate);
    let latencies = produce(gateway.addr(), events, options.producers, Some(pace)).await?;
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await.context("deliveries did not all arrive")?;
    println!("at half the peak ({half_rate:.0} events/s offered, {events} events):");
    println!(
        "  ingest latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    gateway.shutdown().await;
    let _ = std::fs::remove_file(&scratch);
    Ok(measured)
}

/// What one end-to-end phase measured.
struct Peak {
    /// Events/s delivered, as a ratio to the raw baseline's requests/s just before.
    ratio: f64,
    /// Redis' CPU per event (µs), on Redis.
    redis_us: Option<f64>,
    /// This process' CPU per event beyond the raw run's per request (µs): about the gateway's.
    gateway_us: f64,
    /// This process' context switches per event.
    switches: f64,
}

/// The peak's ratios to raw over the rounds, Redis' CPU per event and the gateway's, each with its
/// median.
fn print_medians(peaks: &[Peak]) {
    let (listed, median) = sorted_with_median(peaks.iter().map(|p| p.ratio).collect(), 3);
    println!("peak over {} rounds: {listed} of raw, median {median}", peaks.len());
    let redis: Vec<f64> = peaks.iter().filter_map(|p| p.redis_us).collect();
    if !redis.is_empty() {
        let (listed, median) = sorted_with_median(redis, 1);
        println!("Redis CPU per event: {listed} µs, median {median}");
    }
    let (listed, median) = sorted_with_median(peaks.iter().map(|p| p.gateway_us).collect(), 1);
    println!("gateway CPU per event (this process' beyond raw's): {listed} µs, median {median}");
    let (listed, median) = sorted_with_median(peaks.iter().map(|p| p.switches).collect(), 2);
    println!("context switches per event (this process): {listed}, median {median}");
}

/// `values` sorted and listed, and their median, with `decimals` decimals.
fn sorted_with_median(mut values: Vec<f64>, decimals: usize) -> (String, String) {
    values.sort_by(f64::total_cmp);
    let listed: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    (listed.join(", "), format!("{:.decimals$}", percentile(&values, 0.5)))
}

/// Ingest latency of a route without plugins, idle and while 8 producers drive a route whose
/// plugin loops to its 100 ms deadline.
async fn noisy_neighbour() -> anyhow::Result<()> {
    let (_redis, url) = start_redis().await?;
    let receiver = start_receiver(Arc::default(), Arc::new(AtomicUsize::new(usize::MAX)), Arc::default()).await?;
    let base = base_toml(&format!("[redis]\nurl = \"{url}\""), receiver);
    let toml = format!(
        r#"{base}
[[plugins]]
name = "looper"
path = "{}"
config = {{ mode = "loop" }}
deadline = "100ms"
[[routes]]
source = "bench"
endpoints = ["receiver"]
[[routes]]
source = "slow"
plugins = ["looper"]
endpoints = ["receiver"]
"#,
        plugin_path("rust-chaos").display()
    );
    let gateway = sluice::Gateway::start(sluice::config::from_toml(&toml)?).await?;
    let addr = gateway.addr();
    // 1,000 events/s offered by 8 producers for 3 s: well under the peak, so latency is the gateway's.
    let (events, producers, pace) = (3000, 8, Duration::from_millis(8));
    let idle = produce(addr, events, producers, Some(pace)).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noisy: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().no_proxy().build()?;
                let mut calls = 0_u32;
                while !stop.load(Ordering::Relaxed) {
                    let response = client
                        .post(format!("http://{addr}/v1/events/slow"))
                        .header("content-type", "application/json")
                        .body(r#"{"event":"order_created"}"#)
                        .send()
                        .await?;
                    let _ = response.bytes().await?;
                    calls += 1;
                }
                anyhow::Ok(calls)
            })
        })
        .collect();
    // Let the looping calls fill the plugin threads first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = produce(addr, events, producers, Some(pace)).await?;
    stop.store(true, Ordering::Relaxed);
    let mut slow_calls = 0;
    for task in noisy {
        slow_calls += task.await??;
    }
    println!("noisy neighbour (route without plugins, {producers} producers at ~1,000 events/s):");
    for (label, latencies) in [("idle", &idle), ("beside 8 looping", &loaded)] {
        println!(
            "  {label:<16} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default())
        );
    }
    println!(
        "  p50 ratio        {:.2}x  ({slow_calls} plugin calls ran to their deadline meanwhile)",
        ms(percentile(&loaded, 0.5)) / ms(percentile(&idle, 0.5)).max(1e-9)
    );
    gateway.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    // The gateway's own logging, as the binary installs it (to stderr: redirect it).
    let _log = options.log.then(|| sluice::telemetry::init(sluice::telemetry::LogFormat::Text));
    let runtime = tokio::runtime::Runtime::new()?;
    if options.scale {
        return runtime.block_on(scale::curve(options.events, options.producers));
    }
    if options.memory {
        return runtime.block_on(memory::per_delivery());
    }
    if options.history {
        return runtime.block_on(history::cost(options.events, options.producers, options.rounds.unwrap_or(3)));
    }
    if options.search {
        return runtime.block_on(search::cost());
    }
    if options.latency {
        let events = if options.events_given { options.events } else { 100_000 };
        return runtime.block_on(latency::receipt_to_attempt(events, options.producers));
    }
    if options.backlog {
        return runtime.block_on(backlog::cost(options.events, options.producers, options.rounds.unwrap_or(3)));
    }
    if options.steps {
        let events = if options.events_given { options.events } else { 20_000 };
        return runtime.block_on(steps::cost(events, options.rounds.unwrap_or(5)));
    }
    let built = plugin_path("rust-filter").exists();
    if options.plugin && !built {
        println!(
            "note: plugins/dist/rust-filter.wasm is not built (run plugins/build.sh); benchmarking without plugins"
        );
    }
    let chains: &[usize] = match (options.plugin && built, options.peak) {
        (true, true) => &[1],
        (true, false) => &[1, 0, 3],
        (false, _) => &[0],
    };
    let raw_server = runtime.block_on(start_raw_server())?;
    // `--peak --rounds N`: N pairs (raw, then the peak), for medians on a machine whose speed moves
    // between minutes.
    let rounds = options.rounds.filter(|_| options.peak).unwrap_or(1);
    let mut raws = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..rounds {
        for (i, chain) in chains.iter().enumerate() {
            let raw = runtime.block_on(raw_baseline(raw_server, &options))?;
            raws.push(raw.rate);
            peaks.push(runtime.block_on(end_to_end(&options, *chain, i == 0 && !options.peak, raw))?);
        }
    }
    raws.sort_by(f64::total_cmp);
    println!(
        "raw HTTP baseline over the run: {} (median {:.0} requests/s); each ratio above is to the run just before it",
        raws.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        raws[raws.len() / 2]
    );
    if options.peak {
        if rounds > 1 {
            print_medians(&peaks);
        }
        return Ok(());
    }
    if plugin_path("rust-chaos").exists() {
        runtime.block_on(noisy_neighbour())?;
    }
    runtime.block_on(memory::per_delivery())?;
    plugin_calls::plugin_calls()
}
