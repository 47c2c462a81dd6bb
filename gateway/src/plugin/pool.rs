//! The plugin threads: plugin work runs here, never on the async runtime's worker threads, so a
//! plugin that runs to its deadline holds one plugin thread and nothing else — routes without
//! plugins, deliveries, the admin API and `/healthz` go on being served.
//!
//! A bounded FIFO feeds a fixed set of threads. Work that finds the queue full is refused at once
//! ([`PoolError::Busy`]; ingest answers 503 with `retry-after`) instead of queueing without limit.
//! The threads are plain OS threads outside any tokio runtime, which is also what WASI's synchronous
//! bindings need (they block on a runtime of their own).
//!
//! On Linux they run under `SCHED_BATCH` (same CPU share as any thread, but a wake-up does not
//! preempt the running thread): a plugin call's hand-off no longer switches the async thread that
//! queued it off its core mid-request; the plugin thread runs on an idle core, or at the next
//! scheduling point, and takes every job queued meanwhile in one go. Measured with `bench --peak`
//! (1 plugin): context switches 1.34 → 0.36 per event, the gateway's CPU per event about a fifth
//! lower. A sleeping thread is only woken when one sleeps ([`Queue::sleeping`]).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;

/// Why work was not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The queue is full: `queued` jobs wait for `threads` busy threads.
    #[error("plugin work is queued beyond its bound ({queued} waiting for {threads} plugin threads); retry later")]
    Busy {
        /// Jobs waiting.
        queued: usize,
        /// Plugin threads.
        threads: usize,
    },
    /// The job panicked on its plugin thread (a bug in the host, not in a plugin: plugin failures
    /// are values).
    #[error("plugin work failed on its thread: {0}")]
    Panicked(String),
    /// The pool has shut down.
    #[error("the plugin threads have stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting, and how many threads sleep waiting for one.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads in [`Condvar::wait`]: work is handed on without a wake-up (a system call, and often a
    /// context switch) when none sleeps, since a running thread looks at the queue before it sleeps.
    sleeping: usize,
}

impl Queue {
    /// Queues `job`; returns whether a sleeping thread must be woken for it.
    fn push(&mut self, job: Job) -> bool {
        self.jobs.push_back(job);
        self.sleeping > 0
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_queued: usize,
    threads: usize,
    busy: AtomicUsize,
    rejected: AtomicU64,
    stop: AtomicBool,
}

/// A fixed set of plugin threads with a bounded queue.
pub struct PluginPool {
    shared: Arc<Shared>,
}

/// A snapshot of the pool, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Plugin threads.
    pub threads: usize,
    /// Threads running a job now.
    pub busy: usize,
    /// Jobs waiting for a thread.
    pub queued: usize,
    /// Jobs refused because the queue was full, since start.
    pub rejected: u64,
}

impl PluginPool {
    /// Starts `threads` plugin threads (at least one) whose queue holds at most `max_queued` jobs.
    pub fn start(threads: usize, max_queued: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            max_queued,
            threads,
            busy: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        for n in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("sluice-plugin-{n}")).spawn(move || {
                yield_on_wake_up();
                work(&shared)
            })?;
        }
        Ok(Self { shared })
    }

    /// Runs `job` on a plugin thread and waits for its result without blocking the caller's thread.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Result<R, PoolError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller gave up while this waited (its client hung up): no plugin time for it.
            if tx.is_closed() {
                return;
            }
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                PoolError::Panicked(text)
            });
            // The caller may have gone (its client hung up); the result is then dropped.
            let _ = tx.send(outcome);
        });
        let wake = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(PoolError::Stopped);
            }
            if queue.jobs.len() >= self.shared.max_queued {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Busy { queued: queue.jobs.len(), threads: self.shared.threads });
            }
            queue.push(job)
        };
        if wake {
            self.shared.ready.notify_one();
        }
        rx.await.map_err(|_| PoolError::Stopped)?
    }

    /// Queues `job` to run on a plugin thread when the queue is less than half full, and returns
    /// whether it did: work that must never take a place live work needs (a shadow run). Nobody
    /// waits for it; a panic in it is caught and logged.
    pub fn try_spawn_spare(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let job: Job = Box::new(move || {
            if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                tracing::error!("Spare plugin work panicked on its thread (a host bug); it was dropped.");
            }
        });
        let wake = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if self.shared.stop.load(Ordering::Relaxed) || queue.jobs.len() >= self.shared.max_queued / 2 {
                return false;
            }
            queue.push(job)
        };
        if wake {
            self.shared.ready.notify_one();
        }
        true
    }

    /// Threads, busy threads, queued and refused jobs.
    pub fn stats(&self) -> PoolStats {
        let queued = self.shared.queue.lock().map(|q| q.jobs.len()).unwrap_or_default();
        PoolStats {
            threads: self.shared.threads,
            busy: self.shared.busy.load(Ordering::Relaxed),
            queued,
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        // Threads finish the job in hand and what is queued, then exit.
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
    }
}

/// Puts the calling thread under `SCHED_BATCH` (see the module's notes). Only at nice 0: the
/// library sets the nice value with the policy, and a gateway started under `nice` keeps its plugin
/// threads where it put them. Where the policy cannot be set, the thread runs as before.
#[cfg(target_os = "linux")]
fn yield_on_wake_up() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
        ThreadPriorityOsValue, ThreadSchedulePolicy,
    };
    if rustix::process::getpriority_process(None).ok() != Some(0) {
        return;
    }
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let nice_zero = ThreadPriority::Os(ThreadPriorityOsValue::default());
    if let Err(error) = set_thread_priority_and_policy(thread_native_id(), nice_zero, batch) {
        tracing::debug!(?error, "Plugin thread: SCHED_BATCH not set; it runs under the default policy.");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_on_wake_up() {}

/// One plugin thread: takes jobs in order until the pool stops and the queue is empty.
fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    // Counted while the lock is held, so a snapshot never sees a job in neither place.
                    shared.busy.fetch_add(1, Ordering::Relaxed);
                    break job;
                }
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                queue.sleeping += 1;
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                queue.sleeping -= 1;
            }
        };
        job();
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn plugin_threads_run_under_sched_batch() {
        use thread_priority::{thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        if rustix::process::getpriority_process(None).ok() != Some(0) {
            // Started under `nice`: the threads keep the default policy (see `yield_on_wake_up`).
            return;
        }
        let pool = PluginPool::start(2, 4).unwrap();
        let on_pool = pool.run(|| thread_schedule_policy().ok()).await.unwrap();
        assert_eq!(on_pool, Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)));
        // The caller's own thread is left alone.
        assert_eq!(
            thread_schedule_policy().ok(),
            Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other))
        );
    }

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_refuses_past_the_bound() {
        let pool = PluginPool::start(1, 1).unwrap();
        assert!(pool.run(tokio::runtime::Handle::try_current).await.unwrap().is_err(), "not on a runtime thread");

        // Hold the one thread, fill the one queue slot, then a third job is refused.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let pool = Arc::new(pool);
        let first = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    let _ = started.send(());
                    held.recv().is_ok()
                })
                .await
            }
        });
        while running.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 2).await }
        });
        while pool.stats().queued == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| 3).await, Err(PoolError::Busy { queued: 1, threads: 1 })));
        assert_eq!(pool.stats().rejected, 1);
        release.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert_eq!(second.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_lives_on() {
        let pool = PluginPool::start(1, 4).unwrap();
        assert!(matches!(pool.run(|| panic!("boom")).await, Err(PoolError::Panicked(m)) if m == "boom"));
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
