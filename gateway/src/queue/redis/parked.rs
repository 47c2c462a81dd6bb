//! Parked deliveries on Redis: an endpoint's deliveries wait in its `paused:<endpoint>` ZSET (one
//! per shard) while it is disabled, or while no gateway's config has it (a reload removed it: the
//! shard's `gone` HASH notes the endpoint and since when). They go back in the queue when it is
//! enabled, or configured again, or are discarded (buried, with the operator's reason) on request.

use redis::AsyncCommands;

use super::{RedisQueue, QUEUE, RESUME_CHUNK};
use crate::queue::QueueError;

/// The shard's HASH of endpoints whose deliveries were parked for want of the endpoint.
const GONE: &str = "gone";

impl RedisQueue {
    /// Puts the parked deliveries of `name` back in the queue, due now, in every shard: all of
    /// them (`enabling`: the endpoint is enabled, and its disabled mark goes), or, when it is
    /// configured again, those parked for want of it unless it is disabled. Returns how many.
    pub(super) async fn resume_parked(&self, name: &str, enabling: bool) -> Result<u64, QueueError> {
        let mut conn = self.core.conn.clone();
        let mut resumed = 0;
        for shard in 0..self.core.shards {
            let prefix = self.core.shard_prefix(shard);
            loop {
                let moved: u64 = self
                    .core
                    .resume
                    .key(format!("{prefix}{QUEUE}"))
                    .key(format!("{prefix}off"))
                    .key(format!("{prefix}{GONE}"))
                    .arg(&prefix)
                    .arg(name)
                    .arg(RESUME_CHUNK)
                    .arg(if enabling { "enable" } else { "returned" })
                    .invoke_async(&mut conn)
                    .await?;
                resumed += moved;
                if moved < RESUME_CHUNK as u64 {
                    break;
                }
            }
        }
        if enabling {
            let _: () = conn.hdel(self.endpoint_key(name), &["disabled", "disabled_at", "failing_since"]).await?;
        }
        Ok(resumed)
    }

    /// How many deliveries of `name` are parked, over every shard.
    pub(super) async fn count_parked(&self, name: &str) -> Result<u64, QueueError> {
        let counts = (0..self.core.shards).map(|shard| {
            let mut conn = self.core.conn.clone();
            let key = format!("{}paused:{name}", self.core.shard_prefix(shard));
            async move { conn.zcard::<_, u64>(key).await }
        });
        Ok(futures_util::future::try_join_all(counts).await?.into_iter().sum())
    }

    /// Endpoints whose deliveries were parked for want of the endpoint, each with the earliest time
    /// (ms) a shard noted it, by name.
    pub(super) async fn gone_endpoints(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let reads = (0..self.core.shards).map(|shard| {
            let mut conn = self.core.conn.clone();
            let key = format!("{}{GONE}", self.core.shard_prefix(shard));
            async move { conn.hgetall::<_, Vec<(String, u64)>>(key).await }
        });
        let mut gone: Vec<(String, u64)> = Vec::new();
        for (name, since) in futures_util::future::try_join_all(reads).await?.into_iter().flatten() {
            match gone.iter_mut().find(|(n, _)| *n == name) {
                Some((_, earliest)) => *earliest = (*earliest).min(since),
                None => gone.push((name, since)),
            }
        }
        gone.sort();
        Ok(gone)
    }

    /// Buries every parked delivery of `name` with `reason` as its last error; returns how many.
    pub(super) async fn discard_parked(&self, name: &str, reason: &str) -> Result<u64, QueueError> {
        let mut conn = self.core.conn.clone();
        let mut discarded = 0;
        for shard in 0..self.core.shards {
            let key = format!("{}paused:{name}", self.core.shard_prefix(shard));
            loop {
                let ids: Vec<String> = conn.zrange(&key, 0, super::BATCH as isize - 1).await?;
                if ids.is_empty() {
                    break;
                }
                let buried = self.core.discard_shard(shard, &ids, reason).await?;
                discarded += buried.iter().filter(|b| **b).count() as u64;
                // An entry whose delivery is no longer parked (expired, or resumed meanwhile): drop it.
                let stale: Vec<&String> = ids.iter().zip(&buried).filter(|(_, b)| !**b).map(|(id, _)| id).collect();
                if !stale.is_empty() {
                    let _: () = conn.zrem(&key, stale).await?;
                }
            }
            // Nothing waits for it any more (one parked meanwhile notes it again).
            let _: () = conn.hdel(format!("{}{GONE}", self.core.shard_prefix(shard)), name).await?;
        }
        Ok(discarded)
    }
}
