//! Redis' clock, as this gateway last saw it. Queue scores are times by Redis' clock (several
//! gateways' clocks drift apart; the store's is the one they share), and the scripts read it with
//! `TIME`. The plain enqueue ([`super::enqueue`]) runs no script, so it scores deliveries with this
//! estimate instead: Redis' time from the latest reply that carried it (every claim's and enqueue's),
//! carried forward by this process' monotonic clock.
//!
//! The estimate errs early, never late: a reply is read after Redis wrote its time into it, so the
//! estimate trails Redis by that reply's latency. It is kept in µs, so the ms of Redis' reply (cut
//! down from its µs) only moves it earlier: counted in whole ms on both sides, it could land up to a
//! millisecond past Redis' clock, and a delivery due now wait that long for its first claim (a
//! conformance test caught it). A delivery scored by it is due a little before
//! Redis' now, never after. Only a step back of Redis' own clock makes it late, and by no more than
//! the step until the next reply corrects it: the estimate is used only while its last sample is
//! younger than [`FRESH`], else the enqueue goes through the script (which reads `TIME` and
//! refreshes it).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Longest time a sample of Redis' clock is trusted for.
const FRESH: Duration = Duration::from_secs(1);

/// The latest sample of Redis' clock, against this process' monotonic clock.
pub(super) struct RedisClock {
    /// The monotonic clock's origin.
    base: Instant,
    /// Redis' time minus the monotonic clock's, in µs, at the latest sample.
    offset_us: AtomicI64,
    /// The monotonic clock at the latest sample, in ms since `base` (-1: none yet).
    sampled_ms: AtomicI64,
}

impl RedisClock {
    pub(super) fn new() -> Self {
        Self { base: Instant::now(), offset_us: AtomicI64::new(0), sampled_ms: AtomicI64::new(-1) }
    }

    fn local_us(&self) -> i64 {
        self.base.elapsed().as_micros() as i64
    }

    /// Notes Redis' time in ms, as a reply read just now carried it.
    pub(super) fn observe(&self, redis_ms: u64) {
        let local = self.local_us();
        // `redis_ms` is Redis' µs cut down to ms: the offset errs early by what was cut.
        self.offset_us.store(redis_ms as i64 * 1000 - local, Ordering::Relaxed);
        self.sampled_ms.store(local / 1000, Ordering::Relaxed);
    }

    /// Redis' time now in ms, estimated (never past Redis' own `TIME` in ms, but for a step back of
    /// Redis' clock); `None` without a sample younger than [`FRESH`].
    pub(super) fn now_ms(&self) -> Option<u64> {
        let local = self.local_us();
        let sampled = self.sampled_ms.load(Ordering::Relaxed);
        if sampled < 0 || local / 1000 - sampled > FRESH.as_millis() as i64 {
            return None;
        }
        u64::try_from((local + self.offset_us.load(Ordering::Relaxed)) / 1000).ok()
    }
}

/// Redis' `TIME` reply (seconds, microseconds) in ms.
pub(super) fn time_ms(seconds: u64, micros: u64) -> u64 {
    seconds * 1000 + micros / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_before_a_sample_and_the_sample_carried_forward_after() {
        let clock = RedisClock::new();
        assert_eq!(clock.now_ms(), None);
        clock.observe(1_000_000);
        let now = clock.now_ms().expect("a fresh sample");
        // Carried forward by the monotonic clock: never before the sample, and not far past it.
        assert!((1_000_000..1_000_000 + FRESH.as_millis() as u64).contains(&now), "{now}");
        assert_eq!(time_ms(1_700_000_000, 123_999), 1_700_000_000_123);
    }

    #[test]
    fn the_estimate_never_runs_past_the_sample_by_more_than_the_time_since() {
        // However far into its current ms the monotonic clock is at the sample, the estimate is the
        // sample plus the whole ms elapsed since, never a ms more (counted in whole ms on both sides,
        // it was one ms past when the sample came late in a ms and the estimate early in the next).
        // For 20 ms, so samples fall late in a ms and estimates early in the next many times over.
        let clock = RedisClock::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            let before = Instant::now();
            clock.observe(1_000_000);
            let now = clock.now_ms().expect("a fresh sample");
            let elapsed = before.elapsed().as_millis() as u64;
            assert!(now <= 1_000_000 + elapsed, "estimate {now} past the sample by more than {elapsed} ms");
        }
    }

    #[test]
    fn a_stale_sample_gives_no_estimate() {
        // A clock whose origin is 10 s back, sampled at its origin.
        let clock = RedisClock { base: Instant::now() - Duration::from_secs(10), ..RedisClock::new() };
        clock.offset_us.store(5_000, Ordering::Relaxed);
        clock.sampled_ms.store(0, Ordering::Relaxed);
        assert_eq!(clock.now_ms(), None);
    }
}
