//! The epoch ticker: a thread that advances the engine's epoch every [`TICK`], which is what makes a
//! plugin's deadline fire (wasmtime checks the epoch at function entries and loop heads). It ticks
//! only while plugin code may run: after [`IDLE_TICKS`] ticks in which no call started and none was
//! running it parks, and the next call to start wakes it. An idle gateway with plugins loaded used
//! to wake a thousand times a second for nothing.
//!
//! A call announces itself with [`EpochTicker::running`] before it sets its deadline and enters the
//! guest, and the guard it gets back says when it left. The count of calls started and the count of
//! calls running share one atomic word, so a call costs one atomic add when it starts and one when
//! it ends, and a wake-up only when the ticker is parked.
//!
//! Parking cannot miss a call: the ticker says it is parking, then reads the word again; a call
//! adds itself to the word, then reads whether the ticker is parking. Both are sequentially
//! consistent, so at least one of them sees the other: either the ticker sees the call and ticks
//! on, or the call sees the ticker parking and unparks it (an unpark that comes before the park
//! makes the park return at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances while plugin code may run; deadlines are rounded up to whole ticks.
pub(super) const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call, started or running, after which the ticker parks: a tenth of a second.
const IDLE_TICKS: u32 = 100;

/// One call started: the high 32 bits count calls started (wrapping), the low 32 those running.
const STARTED: u64 = 1 << 32;
const RUNNING: u64 = 1;

/// What calls hold of the ticker: what it shares with them. Cheap to clone.
#[derive(Clone)]
pub(super) struct EpochTicker {
    shared: Arc<Shared>,
}

/// The ticker thread itself, owned by the plugin runtime: dropping it stops the thread.
pub(super) struct TickerThread {
    ticker: EpochTicker,
}

impl TickerThread {
    /// The handle calls announce themselves to.
    pub(super) fn ticker(&self) -> &EpochTicker {
        &self.ticker
    }
}

impl Drop for TickerThread {
    fn drop(&mut self) {
        let shared = &self.ticker.shared;
        shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = shared.thread.get() {
            thread.unpark();
        }
    }
}

struct Shared {
    /// Calls started (high half) and running (low half), see [`STARTED`].
    calls: AtomicU64,
    /// The ticker is parking, or parked.
    parked: AtomicBool,
    /// Set once to stop the thread.
    stop: AtomicBool,
    /// Epochs advanced so far (the tests read it).
    ticks: AtomicU64,
    /// The ticker thread, to unpark.
    thread: OnceLock<Thread>,
}

/// A call in progress, from before it sets its deadline until it has left the guest.
pub(super) struct Running<'a> {
    shared: &'a Shared,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared.calls.fetch_sub(RUNNING, Ordering::SeqCst);
    }
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`; it runs until the returned owner drops. Without a
    /// thread (the system refused one) it logs an error: deadlines then do not fire.
    pub(super) fn start(engine: Engine) -> TickerThread {
        let shared = Arc::new(Shared {
            calls: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let for_thread = shared.clone();
        match std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || tick(&engine, &for_thread)) {
            Ok(handle) => {
                let _ = shared.thread.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not start the plugin epoch ticker; plugin deadlines will not fire.")
            }
        }
        TickerThread { ticker: Self { shared } }
    }

    /// Announces a call about to enter plugin code; the epoch advances until the guard drops.
    pub(super) fn running(&self) -> Running<'_> {
        let shared = &*self.shared;
        shared.calls.fetch_add(STARTED | RUNNING, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) {
            if let Some(thread) = shared.thread.get() {
                thread.unpark();
            }
        }
        Running { shared }
    }

    /// Whether the ticker is parked (or about to park) for want of calls.
    #[cfg(test)]
    pub(super) fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// Epochs advanced so far.
    #[cfg(test)]
    pub(super) fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::SeqCst)
    }

    /// Handles to what the ticker shares, its thread's included while it runs.
    #[cfg(test)]
    fn holders(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

/// The ticker thread's loop: a tick every [`TICK`] while calls come, parked while none does.
fn tick(engine: &Engine, shared: &Shared) {
    let mut seen = shared.calls.load(Ordering::SeqCst);
    let mut idle = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        engine.increment_epoch();
        shared.ticks.fetch_add(1, Ordering::Relaxed);
        let now = shared.calls.load(Ordering::SeqCst);
        let running = now & (STARTED - 1);
        if now != seen || running > 0 {
            (seen, idle) = (now, 0);
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS {
            continue;
        }
        shared.parked.store(true, Ordering::SeqCst);
        // Read again after saying so: a call that came meanwhile either shows here, or saw
        // `parked` and unparks us (see the module's doc). A wake-up with no call behind it (an
        // unpark left over from a call that came just before we parked) parks again.
        while shared.calls.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        shared.parked.store(false, Ordering::SeqCst);
        idle = 0;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (at most 10 s) until `done` holds; false if it never did.
    pub(in crate::plugin) fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done()
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    #[test]
    fn the_ticker_parks_when_no_call_comes_and_a_call_wakes_it() {
        let thread = EpochTicker::start(engine());
        let ticker = thread.ticker();
        assert!(wait_for(|| ticker.is_parked()), "the ticker never parked while idle");
        let parked_at = ticker.ticks();
        // Parked, it advances no epoch.
        std::thread::sleep(TICK * 20);
        assert_eq!(ticker.ticks(), parked_at, "a parked ticker ticked");

        let call = ticker.running();
        assert!(wait_for(|| ticker.ticks() >= parked_at + 5), "a call did not wake the ticker");
        assert!(!ticker.is_parked());
        // A long call keeps it ticking past the idle threshold: the call is still running.
        let long = ticker.ticks() + u64::from(IDLE_TICKS) * 2;
        assert!(wait_for(|| ticker.ticks() >= long), "the ticker stopped under a running call");
        assert!(!ticker.is_parked(), "the ticker parked under a running call");
        drop(call);
        assert!(wait_for(|| ticker.is_parked()), "the ticker did not park again once the call ended");

        // Dropping the owner ends the thread, parked as it is.
        let handle = ticker.clone();
        assert_eq!(handle.holders(), 3, "the owner, the thread and this handle");
        drop(thread);
        assert!(wait_for(|| handle.holders() == 1), "the ticker thread did not end with its owner");
    }

    #[test]
    fn calls_that_start_and_end_between_ticks_keep_the_ticker_going() {
        let thread = EpochTicker::start(engine());
        let ticker = thread.ticker();
        assert!(wait_for(|| ticker.is_parked()));
        let from = ticker.ticks();
        // Short calls, none running at any tick: the count of calls started keeps it awake.
        let busy_until = from + u64::from(IDLE_TICKS) * 3;
        while ticker.ticks() < busy_until {
            drop(ticker.running());
            assert!(ticker.ticks() <= from + 1 || !ticker.is_parked(), "the ticker parked while calls kept coming");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}
