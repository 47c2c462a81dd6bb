//! The history writer: a background task of every gateway with `[history]`. Round after round it
//! takes a batch of finished deliveries from each shard of the queue, upserts them in PostgreSQL,
//! and marks them exported only after the commit (at-least-once: a crash in between writes the
//! batch again, and the upsert absorbs it). While PostgreSQL fails, it backs off (up to 5 s),
//! counts, logs a WARN every 30 s, and finished records wait in the queue's store. Once an hour it
//! drops the day partitions older than `history.retention`.
//!
//! Several gateways' writers may take the same batch at once: both upserts land, the rows are the
//! same, and the second mark finds nothing left to mark. Wasted work, never wrong.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::History;
use crate::config::HistoryConfig;
use crate::queue::{Queue, Store};

/// Pause when no shard had anything to write.
const IDLE: Duration = Duration::from_millis(500);
/// Pause after a round whose batches were not full: finished deliveries gather meanwhile, so the
/// next round writes more rows per transaction and script call (cheaper per row, and less CPU
/// taken from delivery under load) at the cost of history lagging by about this much.
const GATHER: Duration = Duration::from_millis(250);
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two WARN lines about failing writes.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Time between two retention passes.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs until `shutdown` turns true.
pub async fn run(queue: Store, history: History, config: HistoryConfig, mut shutdown: watch::Receiver<bool>) {
    let shards = queue.shards().max(1);
    let mut backoff = Duration::ZERO;
    let mut warned: Option<Instant> = None;
    let mut prune_at = Instant::now();
    let mut first = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (mut moved, mut full) = (0, false);
        let mut failure = None;
        for i in 0..shards {
            match export_shard(&queue, &history, (first + i) % shards, &config).await {
                Ok(n) => {
                    moved += n;
                    full |= n >= config.batch;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // The next round starts one shard further on, so a busy shard does not starve the rest.
        first = (first + 1) % shards;
        if failure.is_none() && moved == 0 && history.degraded().is_some() {
            // Nothing to write, but the last write failed: see whether PostgreSQL is back.
            failure = history.probe().await.err().map(|e| e.to_string());
        }
        if failure.is_none() && Instant::now() >= prune_at {
            match history.drop_expired().await {
                Ok(dropped) => {
                    prune_at = Instant::now() + PRUNE_EVERY;
                    if dropped > 0 {
                        tracing::info!(dropped, "History: dropped day partitions older than history.retention.");
                    }
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let pause = match failure {
            Some(error) => {
                history.inner.errors.fetch_add(1, Ordering::Relaxed);
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(%error, "History: could not write finished deliveries to PostgreSQL; they wait in the queue's store and are written once it answers.");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
                backoff
            }
            None => {
                if warned.take().is_some() {
                    tracing::info!("History: PostgreSQL answers again; writing the finished deliveries that waited.");
                }
                backoff = Duration::ZERO;
                if moved == 0 {
                    IDLE
                } else if full {
                    Duration::ZERO
                } else {
                    GATHER
                }
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // Shutting down: what is not written yet waits in the store for the next writer.
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Moves one batch of `shard` into history; returns how many deliveries it moved.
async fn export_shard(queue: &Store, history: &History, shard: u32, config: &HistoryConfig) -> Result<usize, String> {
    let batch = queue.finished(shard, config.batch).await.map_err(|e| format!("reading the queue: {e}"))?;
    if batch.is_empty() {
        return Ok(0);
    }
    history.write(&batch).await.map_err(|e| e.to_string())?;
    queue.mark_exported(shard, &batch, config.keep_in_redis).await.map_err(|e| format!("marking exported: {e}"))?;
    history.inner.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(batch.len())
}
