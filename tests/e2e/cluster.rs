//! Redis Cluster for real: a cluster of 3 primaries and 3 replicas on loopback (redis-server
//! processes joined by `redis-cli --cluster create`), the queue and gateways on it, and a primary
//! killed under load.

use std::net::TcpListener as StdListener;
use std::time::Duration;

use crate::harness::*;

/// A free port whose cluster bus port (+10000) is free too: drawn from 20000..40000, below the
/// ephemeral range, so both fit.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + (ulid::Ulid::new().random() % 20_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() && StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts (or restarts, with its `nodes.conf` and data) the cluster node on `port`.
async fn start_node(dir: &std::path::Path, port: u16) -> RedisServer {
    let node_dir = dir.join(port.to_string());
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-allow-replica-migration",
        "no",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dir",
        node_dir.to_str().unwrap(),
    ];
    RedisServer::start_with(port, &args).await
}

/// Three primaries and three replicas, each a redis-server of the test's own (killed on drop),
/// with a 1 s node timeout so a failover takes a couple of seconds.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: Scratch,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            std::fs::create_dir_all(dir.path().join(port.to_string())).unwrap();
            nodes.push(start_node(dir.path(), port).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(created.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&created.stdout));
        let cluster = Self { nodes, dir };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every live node says the cluster is ok and knows all 16384 slots.
    pub async fn wait_ok(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        'wait: loop {
            assert!(tokio::time::Instant::now() < deadline, "the cluster never became ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let Ok(client) = redis::Client::open(node.url()) else { continue 'wait };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else { continue };
                let Ok(info) = redis::cmd("CLUSTER").arg("INFO").query_async::<String>(&mut conn).await else {
                    continue 'wait;
                };
                if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                    continue 'wait;
                }
            }
            return;
        }
    }

    /// The seed node URLs.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The `[redis]` section of a gateway on this cluster.
    pub fn redis_toml(&self, extra: &str) -> String {
        let seeds: Vec<String> = self.seeds().iter().map(|s| format!("\"{s}\"")).collect();
        format!("[redis]\ncluster_nodes = [{}]\ntimeout = \"2s\"\n{extra}\n", seeds.join(", "))
    }
}

impl RedisCluster {
    /// The node serving `slot` as primary right now (by `CLUSTER NODES` of a live node).
    pub async fn primary_of(&self, slot: u16) -> usize {
        self.healthy_primary_of(slot).await.unwrap_or_else(|| panic!("no healthy primary serves slot {slot}"))
    }

    /// The node serving `slot` as a primary not flagged failing, if any (none mid-failover).
    pub async fn healthy_primary_of(&self, slot: u16) -> Option<usize> {
        let live = self.nodes.iter().find(|n| n.is_running()).expect("a live node");
        let mut conn = live.connection().await;
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await.unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(f), Ok(t)) if (f..=t).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Restarts node `i` (killed before) with its data: it rejoins as a replica.
    pub async fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        self.nodes[i] = start_node(self.dir.path(), port).await;
    }
}

/// The slot of a key (CRC16/XMODEM of its hash tag, mod 16384), as Redis Cluster computes it.
fn slot_of(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// Three `sluice` processes on the cluster (12 shards over 3 primaries, `replicas_ack = 1`), 5,000
/// events from 24 producers; a primary is SIGKILLed mid-run (its replica takes over; the killed
/// node comes back as a replica), later a planned `CLUSTER FAILOVER`. Every accepted event is
/// delivered; duplicates and the impairment are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_a_cluster_lose_nothing_when_a_primary_dies_or_fails_over() {
    use crate::chaos::{chaos_toml, drain, spawn_producers, wait_until, Counters, EVENTS};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    let started = Instant::now();
    let mut cluster = RedisCluster::start().await;
    let receiver = Receiver::start().await;
    let dir = Scratch::new("cluster-gateways");
    let addrs: Vec<std::net::SocketAddr> =
        (0..3).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
    let base = base_toml_embedded()
        .replace("[admin]", &format!("{}\n[admin]", cluster.redis_toml("replicas_ack = 1\nreplicas_timeout = \"2s\"")));
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, chaos_toml(base, addrs[0], "shards = 12", &receiver)).unwrap();
    let mut gateways = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let log = dir.path().join(format!("sluice-{i}.log"));
        let env = [("SLUICE_SERVER__LISTEN", addr.to_string())];
        gateways.push(SluiceProcess::spawn(&["run", "--config", config.to_str().unwrap()], &env, Some(&log)));
        wait_listening(*addr).await;
    }
    let counters = Arc::new(Counters::default());
    let producers: Vec<_> = addrs.iter().flat_map(|addr| spawn_producers(*addr, counters.clone(), EVENTS)).collect();
    let accepted = || counters.accepted.load(Ordering::SeqCst);
    let unavailable = || counters.unavailable.load(Ordering::SeqCst);

    // A primary dies: the one serving shard 2's slot.
    wait_until("1,500 events are accepted", started, || accepted() >= 1_500).await;
    let victim = cluster.primary_of(slot_of("s2")).await;
    let (before, refused_before) = (accepted(), unavailable());
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    while cluster.healthy_primary_of(slot_of("s2")).await.is_none_or(|p| p == victim) {
        assert!(killed.elapsed() < PATIENCE, "no replica took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed_over = killed.elapsed();
    // Back as a replica of its successor, so `replicas_ack = 1` can be met on that shard again.
    cluster.restart(victim).await;
    cluster.wait_ok().await;
    wait_until("ingest takes events again", started, || accepted() >= before + 200).await;
    let ingest_back = killed.elapsed();
    let refused_in_failover = unavailable() - refused_before;

    // A planned failover: a replica takes over from its primary while events flow.
    wait_until("3,500 events are accepted", started, || accepted() >= 3_500).await;
    let primary = cluster.primary_of(slot_of("s3")).await;
    let replica = {
        let mut conn = cluster.nodes[primary].connection().await;
        let me: String = redis::cmd("CLUSTER").arg("MYID").query_async(&mut conn).await.unwrap();
        let replicas: Vec<String> =
            redis::cmd("CLUSTER").arg("REPLICAS").arg(&me).query_async(&mut conn).await.unwrap();
        let port: u16 =
            replicas[0].split_whitespace().nth(1).unwrap().split(['@', ':']).nth(1).unwrap().parse().unwrap();
        cluster.nodes.iter().position(|n| n.port == port).unwrap()
    };
    let refused_before = unavailable();
    let planned = Instant::now();
    let mut conn = cluster.nodes[replica].connection().await;
    let _: () = redis::cmd("CLUSTER").arg("FAILOVER").query_async(&mut conn).await.unwrap();
    while cluster.healthy_primary_of(slot_of("s3")).await != Some(replica) {
        assert!(planned.elapsed() < PATIENCE, "the planned failover never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.wait_ok().await;
    let planned_took = planned.elapsed();

    for producer in producers {
        producer.await.unwrap();
    }
    let refused_in_planned = unavailable() - refused_before;
    let metrics = client().get(format!("http://{}/metrics", addrs[0])).send().await.unwrap().text().await.unwrap();
    let store_bytes = metric_value(&metrics, "sluice_store_memory_bytes")
        .unwrap_or_else(|| panic!("no sluice_store_memory_bytes:\n{metrics}"));
    assert!(store_bytes > 3_000_000, "used_memory summed over 3 primaries (~1 MB each at rest): {store_bytes}");
    let all_accepted = Instant::now();
    let drained = drain(&receiver, EVENTS, started).await;
    println!(
        "cluster: {EVENTS} events into 3 gateways on 3 primaries + 3 replicas (12 shards, replicas_ack = 1); \
         primary SIGKILLed: its replica took over after {failed_over:.1?}, the killed node rejoined as a \
         replica and ingest took events again {ingest_back:.1?} after the kill, {refused_in_failover} ingest 503s \
         meanwhile; planned CLUSTER FAILOVER: ok after \
         {planned_took:.1?}, {refused_in_planned} ingest 503s after it; {drained}; drained {:.1?} after the last \
         202; whole run {:.1?}; store memory over the primaries {store_bytes} bytes",
        all_accepted.elapsed(),
        started.elapsed()
    );
    drop(gateways);
}
