//! Per-endpoint protection inside one gateway process: a cap on attempts in flight and a rate limit
//! (attempts evenly spaced at `1/rate`). A delivery that cannot start within the time its lease
//! leaves is put back in the queue (not counted as an attempt) instead of waiting past its lease.
//!
//! Both limits are per process: with N gateways an endpoint sees at most N times each. They are
//! enforced where the request is made, so they hold whatever the claim batch size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Whether a delivery may go now.
#[derive(Debug)]
pub enum Admission {
    /// Go; hold the permit (if any) until the attempt is over.
    Go(Option<OwnedSemaphorePermit>),
    /// The endpoint is busy: put the delivery back, due after this delay.
    Busy(Duration),
}

/// The limits of one endpoint.
pub struct Gate {
    slots: Option<Arc<Semaphore>>,
    pacer: Option<Mutex<Pacer>>,
    waiting: AtomicUsize,
    max_waiting: usize,
    rate: Option<f64>,
}

/// Spaces attempts `interval` apart: each caller reserves the next free start time.
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    /// Reserves a start time no later than `now + max_wait`; returns the wait, or `None` (nothing
    /// reserved) when the next free time is later than that.
    fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        let at = self.next.max(now);
        let wait = at - now;
        if wait > max_wait {
            return None;
        }
        self.next = at + self.interval;
        Some(wait)
    }
}

/// Decrements the waiting count when a waiter leaves, whichever way.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// A gate with at most `max_in_flight` attempts at once and `rate` attempts per second
    /// (either may be absent). `max_wait` is the longest a delivery may wait for its turn.
    pub fn new(max_in_flight: Option<u32>, rate: Option<f64>, max_wait: Duration) -> Self {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        // More waiters than can be served within `max_wait` would only time out: send them back.
        let by_slots = max_in_flight.map(|n| n as usize * 4);
        let by_rate = rate.map(|r| (r * max_wait.as_secs_f64()).ceil() as usize + 1);
        let max_waiting = by_slots.into_iter().chain(by_rate).min().unwrap_or(usize::MAX).max(1);
        Self {
            slots: max_in_flight.map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            pacer: rate.map(|r| Mutex::new(Pacer { interval: Duration::from_secs_f64(1.0 / r), next: Instant::now() })),
            waiting: AtomicUsize::new(0),
            max_waiting,
            rate,
        }
    }

    /// Whether the gate limits anything.
    pub fn is_open(&self) -> bool {
        self.slots.is_none() && self.pacer.is_none()
    }

    /// Waits (up to `max_wait`) until a delivery may start: a slot is free and its paced turn has come.
    pub async fn admit(&self, max_wait: Duration) -> Admission {
        if self.is_open() {
            return Admission::Go(None);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.max_waiting {
            return Admission::Busy(self.backoff(ahead));
        }
        let deadline = Instant::now() + max_wait;
        let permit = match &self.slots {
            None => None,
            Some(slots) => match tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                // Timed out (or the semaphore closed, which never happens): try again later.
                _ => return Admission::Busy(self.backoff(ahead)),
            },
        };
        if let Some(pacer) = &self.pacer {
            let now = Instant::now();
            // The lock is never held across an await.
            let budget = deadline.saturating_duration_since(now);
            let reserved = pacer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).reserve(now, budget);
            match reserved {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Admission::Busy(self.backoff(ahead)),
            }
        }
        Admission::Go(permit)
    }

    /// How long a delivery sent back should stay away: about the time the waiters ahead need.
    fn backoff(&self, ahead: usize) -> Duration {
        let secs = match self.rate {
            Some(rate) => ahead as f64 / rate,
            None => 1.0,
        };
        Duration::from_secs_f64(secs.clamp(1.0, 60.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_reservations_and_refuses_beyond_the_wait() {
        let start = Instant::now();
        let mut pacer = Pacer { interval: Duration::from_millis(100), next: start };
        assert_eq!(pacer.reserve(start, Duration::from_secs(1)), Some(Duration::ZERO));
        assert_eq!(pacer.reserve(start, Duration::from_secs(1)), Some(Duration::from_millis(100)));
        assert_eq!(pacer.reserve(start, Duration::from_secs(1)), Some(Duration::from_millis(200)));
        // The next turn is 300 ms away: too far for a 250 ms budget, and nothing is reserved.
        assert_eq!(pacer.reserve(start, Duration::from_millis(250)), None);
        assert_eq!(pacer.reserve(start, Duration::from_millis(300)), Some(Duration::from_millis(300)));
        // Idle time is not banked: after a pause, the next attempt goes at once, the one after waits.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.reserve(later, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(pacer.reserve(later, Duration::ZERO), None);
    }

    #[tokio::test]
    async fn slots_cap_concurrent_admissions() {
        let gate = Gate::new(Some(2), None, Duration::from_millis(50));
        let (Admission::Go(a), Admission::Go(b)) =
            (gate.admit(Duration::from_millis(50)).await, gate.admit(Duration::from_millis(50)).await)
        else {
            panic!("two slots should admit two");
        };
        assert!(matches!(gate.admit(Duration::from_millis(50)).await, Admission::Busy(_)));
        drop(a);
        assert!(matches!(gate.admit(Duration::from_millis(50)).await, Admission::Go(Some(_))));
        drop(b);
    }
}
