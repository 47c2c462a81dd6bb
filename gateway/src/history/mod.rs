//! Delivery history in PostgreSQL (`[history]`): finished deliveries, with their attempt logs and
//! their events, leave the queue's memory for tables on disk, partitioned by day.
//!
//! The flow: a settlement that finishes a delivery (ack or burial) also hands it, whole, to its
//! shard's history stream in Redis; the [`writer`] reads a batch of those
//! ([`crate::queue::Queue::finished`]), upserts them here in one transaction, and only then marks
//! them exported ([`crate::queue::Queue::mark_exported`]: the entries go). A succeeded delivery's
//! own keys in Redis are only the copy the admin API reads fast, and expire
//! `history.keep_in_redis` after it finished. A gateway killed between the two steps writes the
//! batch again: the upserts are keyed by id, so a row is written twice at worst, never lost, never
//! doubled. While PostgreSQL is away, deliveries go on and finished ones wait in the stream (for
//! the longer of `queue.retention` and `queue.dead_retention` at most); the writer retries and
//! `/readyz` says `degraded`.
//!
//! - [`schema`]: versioned migrations (embedded SQL) and the day partitions.
//! - [`store`]: writes and reads of rows.
//! - [`dead`]: dead letters in history, listed and read for a restore into the queue.
//! - [`query`]: the search by endpoint, state and time range (`GET /v1/deliveries`).
//! - [`writer`]: the background task that moves finished deliveries here.

pub mod dead;
pub mod query;
pub mod schema;
pub mod store;
pub mod writer;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::HistoryConfig;

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// PostgreSQL refused or failed a statement.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool (PostgreSQL away, or every connection busy).
    #[error("postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built from the configuration.
    #[error("postgres pool: {0}")]
    Build(String),
    /// A stored row does not have the expected shape.
    #[error("history row: {0}")]
    Corrupt(String),
}

/// The PostgreSQL history store. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    retention: Duration,
    /// Days (since the epoch) whose partitions are known to exist.
    partitions: Mutex<std::collections::HashSet<i64>>,
    /// Whether the migrations ran in this process.
    migrated: AtomicBool,
    /// The last write's failure, while it lasts (`/readyz` reports it).
    degraded: Mutex<Option<String>>,
    /// Deliveries written (counted once each batch committed and was marked).
    written: AtomicU64,
    /// Rounds of the writer that failed.
    errors: AtomicU64,
}

impl History {
    /// Builds the connection pool. Connects lazily: a gateway starts, and delivers, while
    /// PostgreSQL is away.
    pub fn open(config: &HistoryConfig) -> Result<Self, HistoryError> {
        let mut pg: tokio_postgres::Config =
            config.postgres_url.parse().map_err(|e: tokio_postgres::Error| HistoryError::Build(e.to_string()))?;
        pg.connect_timeout(Duration::from_secs(2));
        pg.application_name("sluice");
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| HistoryError::Build(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                retention: config.retention,
                partitions: Mutex::new(Default::default()),
                migrated: AtomicBool::new(false),
                degraded: Mutex::new(None),
                written: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        })
    }

    /// Why history writes are failing now, if they are.
    pub fn degraded(&self) -> Option<String> {
        self.inner.degraded.lock().ok().and_then(|d| d.clone())
    }

    fn set_degraded(&self, reason: Option<String>) {
        if let Ok(mut degraded) = self.inner.degraded.lock() {
            *degraded = reason;
        }
    }

    /// Appends the history metrics (Prometheus text).
    pub fn render_metrics(&self, out: &mut String) {
        let written = self.inner.written.load(Ordering::Relaxed);
        let errors = self.inner.errors.load(Ordering::Relaxed);
        let up = u8::from(self.degraded().is_none());
        let _ = writeln!(out, "# HELP sluice_history_written_total Finished deliveries written to PostgreSQL.");
        let _ = writeln!(out, "# TYPE sluice_history_written_total counter");
        let _ = writeln!(out, "sluice_history_written_total {written}");
        let _ = writeln!(out, "# HELP sluice_history_write_errors_total Rounds of the history writer that failed.");
        let _ = writeln!(out, "# TYPE sluice_history_write_errors_total counter");
        let _ = writeln!(out, "sluice_history_write_errors_total {errors}");
        let _ = writeln!(out, "# HELP sluice_history_up 1 while the last history write succeeded, else 0.");
        let _ = writeln!(out, "# TYPE sluice_history_up gauge");
        let _ = writeln!(out, "sluice_history_up {up}");
    }

    /// Asks PostgreSQL whether it answers (and runs the migrations if they have not run); clears
    /// the degraded state when it does.
    pub async fn probe(&self) -> Result<(), HistoryError> {
        let result = async {
            self.ensure_migrated().await?;
            self.inner.pool.get().await?.simple_query("SELECT 1").await?;
            Ok(())
        }
        .await;
        self.set_degraded(result.as_ref().err().map(ToString::to_string));
        result
    }

    /// Runs the migrations once per process (when PostgreSQL first answers).
    pub async fn ensure_migrated(&self) -> Result<(), HistoryError> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut client = self.inner.pool.get().await?;
        schema::migrate(&mut client).await?;
        self.inner.migrated.store(true, Ordering::Release);
        Ok(())
    }
}
