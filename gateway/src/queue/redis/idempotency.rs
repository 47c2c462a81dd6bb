//! Idempotency keys on Redis: a key is claimed with a pending mark naming the event its request
//! will store, takes the answer in the same script that stores the event (see `enqueue.lua`), and
//! is released only while it still holds that mark (`release.lua`).

use std::time::Duration;

use redis::AsyncCommands;
use ulid::Ulid;

use super::RedisQueue;
use crate::id;
use crate::queue::{idempotency_pending, QueueError, IDEMPOTENCY_PENDING, IDEMPOTENCY_PENDING_TTL};

impl RedisQueue {
    /// The key's name: in the shard its events go to ([`id::shard_of_key`]).
    pub(super) fn idempotency_key(&self, source: &str, key: &str) -> String {
        let shard = id::shard_of_key(source, key, self.core.shards);
        format!("{}idem:{source}:{key}", self.core.shard_prefix(shard))
    }

    /// Claims the key for `event`; see [`crate::queue::Queue::claim_idempotency`].
    pub(super) async fn claim_key(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        let mut conn = self.core.conn.clone();
        let name = self.idempotency_key(source, key);
        for _ in 0..2 {
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&name)
                .arg(idempotency_pending(event))
                .arg("NX")
                .arg("PX")
                .arg(IDEMPOTENCY_PENDING_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if claimed.is_some() {
                return Ok(None);
            }
            // Taken: read the answer (it may expire in between; then try to claim again).
            if let Some(answer) = conn.get::<_, Option<String>>(&name).await? {
                return Ok(Some(answer));
            }
        }
        Ok(Some(IDEMPOTENCY_PENDING.to_string()))
    }

    /// Records the answer for an event that needed no enqueue.
    pub(super) async fn complete_key(
        &self,
        source: &str,
        key: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), QueueError> {
        let mut conn = self.core.conn.clone();
        let _: () = conn.pset_ex(self.idempotency_key(source, key), answer, window.as_millis() as u64).await?;
        Ok(())
    }

    /// Releases the key if it still holds `event`'s mark; the answer when the event was stored.
    pub(super) async fn release_key(&self, source: &str, key: &str, event: Ulid) -> Result<Option<String>, QueueError> {
        let mut conn = self.core.conn.clone();
        let answer: Option<String> = self
            .core
            .release
            .key(self.idempotency_key(source, key))
            .arg(idempotency_pending(event))
            .invoke_async(&mut conn)
            .await?;
        Ok(answer)
    }
}
