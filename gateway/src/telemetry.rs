//! Logging: `tracing` to stderr, human-readable or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! Lines are written by a thread of their own, not by the threads that serve requests and deliver:
//! a slow reader of stderr (a full pipe, a stalled log shipper) must not hold up either. Its queue
//! holds [`LOG_QUEUE_LINES`] lines; when it is full, further lines are dropped, not waited for, and
//! counted (`sluice_log_lines_dropped_total`).

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the log writer's queue holds before it drops.
pub const LOG_QUEUE_LINES: usize = 100_000;

/// The count of lines dropped by the log writer, once installed.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the log writer running; dropping it writes what is queued and stops it. Hold it until
/// the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber, writing through a queue to its own thread. Safe to call more
/// than once (later calls install nothing and return an empty guard).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(true).buffered_lines_limit(LOG_QUEUE_LINES).finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(colour);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = DROPPED.set(dropped);
            LogGuard { _writer: Some(guard) }
        }
        Err(_) => LogGuard { _writer: None },
    }
}

/// Log lines dropped so far because the log writer's queue was full (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Lets a repeated log line through at most once a second, counting the ones it held back, so a
/// failure that hits every request (e.g. Redis away) does not flood the log.
#[derive(Debug, Default)]
pub struct Throttle {
    second: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// A throttle that lets the first line through.
    pub const fn new() -> Self {
        Self { second: std::sync::atomic::AtomicU64::new(0), held_back: std::sync::atomic::AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last one let through)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let last = self.second.load(Relaxed);
        if now != last && self.second.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            Some(self.held_back.swap(0, Relaxed))
        } else {
            self.held_back.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.allow(), Some(0));
        // Unless the second turns over right here, the next ones are held back.
        let held: Vec<_> = (0..100).map(|_| throttle.allow()).collect();
        assert!(held.iter().filter(|a| a.is_some()).count() <= 1, "{held:?}");
    }
}
