//! Failed admin authentications, throttled per client address: after [`MAX_FAILURES`] failures
//! within [`WINDOW`], every admin request from that address answers 429 until the window ends, so a
//! token cannot be guessed at line rate. Other addresses are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications one address may make per window.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered before old windows are dropped.
const MAX_TRACKED: usize = 4096;

/// Per-address failure counts, and totals for metrics.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    failures: AtomicU64,
    throttled: AtomicU64,
}

impl AuthThrottle {
    /// `Some(wait)` when `ip` has used up its failures and must wait that long.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, failures) = windows.get(&ip)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*failures >= MAX_FAILURES).then(|| {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            left.max(Duration::from_secs(1))
        })
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// Failed authentications and throttled requests since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.failures.load(Ordering::Relaxed), self.throttled.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let throttle = AuthThrottle::default();
        let (bad, other): (IpAddr, IpAddr) = ("127.0.0.9".parse().unwrap(), "127.0.0.10".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            throttle.failed(bad);
        }
        assert_eq!(throttle.blocked(bad), None, "one failure left");
        throttle.failed(bad);
        assert!(throttle.blocked(bad).is_some_and(|wait| wait <= WINDOW));
        assert_eq!(throttle.blocked(other), None);
        assert_eq!(throttle.totals(), (u64::from(MAX_FAILURES), 1));
    }
}
