//! [`QueueError`]: what every queue backend fails with, and how callers tell an unreachable
//! store (the outcome of a write unknown) from one that refused or holds bad data.

use std::sync::Arc;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The embedded store failed (I/O, or a damaged file).
    #[error("embedded store: {0}")]
    Embedded(#[from] redb::Error),
    /// The embedded store's file could not be opened.
    #[error("cannot open the embedded store {path}: {reason}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A stored record could not be (de)serialised.
    #[error("queue record: {0}")]
    Json(#[from] serde_json::Error),
    /// Data in Redis does not have the expected shape.
    #[error("queue data is corrupt: {0}")]
    Corrupt(String),
    /// The embedded store's last write failed (a full or failing disk); the next write retries.
    #[error("the embedded store {0} could not write (disk full or failing?); the next write tries again")]
    Unwritable(std::path::PathBuf),
    /// An error that failed a whole batch, shared by each request in it.
    #[error("{0}")]
    Shared(Arc<QueueError>),
    /// The queue's background batching task has stopped (the gateway is shutting down).
    #[error("the queue is shutting down")]
    Stopped,
    /// The event's idempotency key no longer held its pending mark (it expired, or the request's
    /// outcome was settled as not stored): nothing was stored.
    #[error("the idempotency key expired or was released before the event was stored; nothing was stored")]
    IdempotencyLost,
    /// Fewer replicas than `redis.replicas_ack` acknowledged a write in time: it is on the
    /// primary, but may not survive its loss (treated as unavailable: the outcome is unknown).
    #[error("only {acked} of the {wanted} replicas `redis.replicas_ack` asks for acknowledged the write in time")]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged.
        acked: u32,
    },
    /// The data in Redis was written with another shard count.
    #[error(
        "redis holds data written with queue.shards = {stored}, but the config says {configured}; \
             changing the shard count of existing data is not supported"
    )]
    Layout {
        /// Shard count recorded in Redis.
        stored: u32,
        /// Shard count in the config.
        configured: u32,
    },
    /// The Redis server lacks a command the queue's scripts run (it is older than 6.2).
    #[error("redis does not run {command} ({reason}): the queue needs Redis 6.2 or newer")]
    ServerTooOld {
        /// The command it refused.
        command: &'static str,
        /// What it answered.
        reason: String,
    },
}

impl QueueError {
    /// Whether this is [`QueueError::IdempotencyLost`] (possibly shared by a batch).
    pub fn is_idempotency_lost(&self) -> bool {
        match self {
            QueueError::IdempotencyLost => true,
            QueueError::Shared(e) => e.is_idempotency_lost(),
            _ => false,
        }
    }

    /// Whether the store was unreachable (as opposed to refusing or holding bad data). For a write
    /// this also means its outcome is unknown: the store may have applied it and lost the reply.
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Redis(e) => {
                e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
            }
            // An I/O error, or redb refusing until the database is reopened after one.
            QueueError::Embedded(e) => {
                matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
            }
            // At run time: the store could not be reopened after a failed write.
            QueueError::Open { .. } | QueueError::Unwritable(_) => true,
            QueueError::Shared(e) => e.is_unavailable(),
            QueueError::Stopped | QueueError::NotReplicated { .. } => true,
            _ => false,
        }
    }
}
