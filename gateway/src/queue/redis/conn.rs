//! The connection to Redis: one Redis (a multiplexed connection that reconnects by itself) or a
//! Redis Cluster (the redis crate's async cluster connection: slots, MOVED/ASK redirects, topology
//! refreshed after a failover). Both are made lazily, so a gateway starts while Redis is away.
//!
//! Everything Sluice sends touches one slot per call: a script or pipeline names keys of one
//! shard (one hash tag), and work over several shards is one call per shard.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;
use crate::queue::QueueError;

/// A connection to one Redis or to a Redis Cluster. Cheap to clone: clones share the sockets.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Opens the connection `redis` describes, without waiting for Redis.
    pub(super) fn open(redis: &RedisConfig) -> Result<Self, QueueError> {
        if redis.cluster_nodes.is_empty() {
            let client = redis::Client::open(redis.url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(redis.timeout))
                .set_response_timeout(Some(redis.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            return Ok(Conn::Single(ConnectionManager::new_lazy_with_config(client, config)?));
        }
        let client = ClusterClientBuilder::new(redis.cluster_nodes.iter().map(String::as_str))
            .connection_timeout(redis.timeout)
            .response_timeout(redis.timeout)
            // A failover takes a few seconds: retry redirected and refused calls for about as long
            // as one Redis call may take, then let the caller see the failure.
            .retries(3)
            .min_retry_wait(100)
            .max_retry_wait(1000)
            .build()?;
        let config = ClusterConfig::new().set_connection_timeout(redis.timeout).set_response_timeout(redis.timeout);
        Ok(Conn::Cluster(client.get_pending_async_connection_with_config(config)))
    }

    /// Whether this is a cluster connection.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Waits until `replicas` replicas acknowledge every write sent before on this connection to
    /// the primary that holds `key`, for at most `timeout`; fails with
    /// [`QueueError::NotReplicated`] when fewer did.
    pub(super) async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        let acked: i64 = self.on_node_of(key, wait, "WAIT").await?;
        if acked < i64::from(replicas) {
            return Err(QueueError::NotReplicated { wanted: replicas, acked: acked.max(0) as u32 });
        }
        Ok(())
    }
}

impl Conn {
    /// One `SCAN` step over the keys of the node that holds `slot_key`'s slot (of a single Redis:
    /// over all of them): the next cursor (0 when done) and the keys matching `pattern`.
    pub(super) async fn scan_step(
        &mut self,
        slot_key: &str,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>), QueueError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        self.on_node_of(slot_key, scan, "SCAN").await
    }

    /// Runs `cmd` (named `name` in errors), which names no key, on the primary that holds `key`'s
    /// slot (of a single Redis: on it).
    async fn on_node_of<T: redis::FromRedisValue>(&mut self, key: &str, cmd: Cmd, name: &str) -> Result<T, QueueError> {
        match self {
            Conn::Single(conn) => Ok(cmd.query_async(conn).await?),
            Conn::Cluster(conn) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key,
                    SlotAddr::Master,
                )));
                let value = conn.route_command(cmd, route).await?;
                redis::from_redis_value(value).map_err(|e| QueueError::Corrupt(format!("{name} answered: {e}")))
            }
        }
    }

    /// Redis' `used_memory`, summed over a cluster's primaries.
    pub(super) async fn used_memory(&mut self) -> Result<u64, QueueError> {
        let info = match self {
            Conn::Single(conn) => redis::cmd("INFO").arg("memory").query_async::<Value>(conn).await?,
            Conn::Cluster(conn) => {
                let route = RoutingInfo::MultiNode((redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters, None));
                conn.route_command(redis::cmd("INFO").arg("memory").clone(), route).await?
            }
        };
        Ok(texts(&info).iter().filter_map(|text| used_memory(text)).sum())
    }
}

/// The text answers in `value`: one, or one per node.
fn texts(value: &Value) -> Vec<String> {
    match value {
        Value::BulkString(bytes) => vec![String::from_utf8_lossy(bytes).into_owned()],
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => vec![text.clone()],
        Value::Map(entries) => entries.iter().flat_map(|(_, v)| texts(v)).collect(),
        Value::Array(items) => items.iter().flat_map(texts).collect(),
        _ => Vec::new(),
    }
}

/// `used_memory:<n>` out of an `INFO memory` answer.
fn used_memory(info: &str) -> Option<u64> {
    info.lines().find_map(|line| line.strip_prefix("used_memory:")).and_then(|n| n.trim().parse().ok())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
