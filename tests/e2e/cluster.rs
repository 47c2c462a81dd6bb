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

/// Three primaries and three replicas, each a redis-server of the test's own (killed on drop),
/// with a 1 s node timeout so a failover takes a couple of seconds.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: Scratch,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
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
            nodes.push(RedisServer::start_with(port, &args).await);
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
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every live node says the cluster is ok and knows all 16384 slots.
    pub async fn wait_ok(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        'wait: loop {
            assert!(tokio::time::Instant::now() < deadline, "the cluster never became ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for node in &self.nodes {
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
