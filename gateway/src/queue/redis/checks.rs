//! Start-up checks of a Redis queue: the shard layout the data was written with, and the server
//! settings that put queued deliveries at risk.

use redis::AsyncCommands;

use super::RedisQueue;
use crate::queue::QueueError;

impl RedisQueue {
    /// Checks that the data in Redis was written with this shard count (recording it when new), and
    /// that the server runs the commands the scripts need (`ZMSCORE`, from Redis 6.2).
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let probe =
            redis::cmd("ZMSCORE").arg(format!("{}{}", self.core.shard_prefix(0), super::QUEUE)).arg("-").clone();
        if let Err(e) = probe.query_async::<Vec<Option<f64>>>(&mut conn).await {
            // Redis before 6.2: `ERR unknown command 'ZMSCORE'`.
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                && e.to_string().to_lowercase().contains("unknown command")
            {
                return Err(QueueError::ServerTooOld { command: "ZMSCORE", reason: e.to_string() });
            }
            return Err(e.into());
        }
        let key = format!("{}:meta", self.core.prefix);
        let _: bool = conn.hset_nx(&key, "shards", self.core.shards).await?;
        let stored: u32 = conn.hget(&key, "shards").await?;
        if stored != self.core.shards {
            return Err(QueueError::Layout { stored, configured: self.core.shards });
        }
        Ok(())
    }

    /// Settings of the Redis server that put queued deliveries at risk, each with the reason.
    /// Empty when all is well or when the server does not let us read its config.
    pub async fn risky_settings(&self) -> Vec<String> {
        let mut conn = self.core.conn.clone();
        let mut risks = Vec::new();
        let read = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
        if let Ok((_, value)) = read("appendonly").query_async::<(String, String)>(&mut conn).await {
            if value != "yes" {
                risks.push("appendonly is off: a Redis restart loses every queued delivery since the last snapshot; set `appendonly yes`".to_string());
            } else if let Ok((_, fsync)) = read("appendfsync").query_async::<(String, String)>(&mut conn).await {
                if fsync != "always" {
                    risks.push(format!("appendfsync is {fsync}: a host crash (power loss, kernel panic) can lose the deliveries acknowledged in the last second or so; `appendfsync always` loses none"));
                }
            }
        }
        if let Ok((_, value)) = read("maxmemory-policy").query_async::<(String, String)>(&mut conn).await {
            if value != "noeviction" {
                risks.push(format!("maxmemory-policy is {value}: Redis may evict queued deliveries under memory pressure; set `maxmemory-policy noeviction`"));
            }
        }
        risks
    }
}
