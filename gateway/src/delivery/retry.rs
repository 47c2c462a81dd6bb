//! What happens after an attempt: the *decision* (done, retry, dead) from the attempt's outcome, and
//! the *schedule* (how long until the next attempt) from the endpoint's retry schedule, jitter and
//! any `Retry-After` the receiver sent.

use std::time::Duration;

/// Longest `Retry-After` honoured; a receiver asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Success {
        /// The status code.
        status: u16,
    },
    /// The receiver answered with another status.
    Status {
        /// The status code.
        status: u16,
        /// The delay the receiver asked for with `Retry-After` (429 and 503 only).
        retry_after: Option<Duration>,
    },
    /// No answer within the endpoint's timeout.
    Timeout,
    /// The request failed before an answer: refused connection, DNS, TLS, reset.
    Failed(String),
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryAction {
    /// Delivered: finish it.
    Done,
    /// Try again after this delay.
    RetryIn(Duration),
    /// Out of attempts (or permanently refused): dead-letter it.
    GiveUp,
}

/// Decides the next step after attempt number `attempt` (1-based) ended with `outcome`.
///
/// `schedule[i]` is the delay before attempt `i + 1`, so a schedule of N entries allows N attempts.
/// `jitter_roll` is a number in `[-1, 1]` (random in production, fixed in tests) scaled by `jitter`.
pub fn decide(outcome: &Outcome, attempt: u32, schedule: &[Duration], jitter: f64, jitter_roll: f64) -> RetryAction {
    if matches!(outcome, Outcome::Success { .. }) {
        return RetryAction::Done;
    }
    let Some(base) = schedule.get(attempt as usize) else {
        return RetryAction::GiveUp;
    };
    let factor = 1.0 + jitter * jitter_roll.clamp(-1.0, 1.0);
    let mut delay = base.mul_f64(factor.max(0.0));
    if let Outcome::Status { retry_after: Some(asked), .. } = outcome {
        delay = delay.max((*asked).min(MAX_RETRY_AFTER));
    }
    RetryAction::RetryIn(delay)
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date (measured from `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = humantime::parse_rfc3339_weak(value).ok().or_else(|| parse_http_date(value))?;
    Some(when.duration_since(now).unwrap_or_default())
}

/// Parses the IMF-fixdate form of an HTTP date, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
fn parse_http_date(value: &str) -> Option<std::time::SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| Some(*m) == parts.clone().next())?
        + 1;
    parts.next();
    let year: u64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    let text = format!("{year:04}-{month:02}-{day:02}T{time}Z");
    humantime::parse_rfc3339(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn success_is_done_whatever_the_schedule() {
        assert_eq!(decide(&Outcome::Success { status: 204 }, 9, &[], 0.0, 0.0), RetryAction::Done);
    }

    #[test]
    fn n_entries_allow_n_attempts() {
        let schedule = [s(0), s(5), s(300)];
        let failed = Outcome::Failed("refused".into());
        assert_eq!(decide(&failed, 1, &schedule, 0.0, 0.0), RetryAction::RetryIn(s(5)));
        assert_eq!(decide(&failed, 2, &schedule, 0.0, 0.0), RetryAction::RetryIn(s(300)));
        assert_eq!(decide(&failed, 3, &schedule, 0.0, 0.0), RetryAction::GiveUp);
    }

    #[test]
    fn jitter_spreads_delays_within_bounds() {
        let schedule = [s(0), s(100)];
        let low = decide(&Outcome::Timeout, 1, &schedule, 0.1, -1.0);
        let high = decide(&Outcome::Timeout, 1, &schedule, 0.1, 1.0);
        assert_eq!(low, RetryAction::RetryIn(s(90)));
        assert_eq!(high, RetryAction::RetryIn(s(110)));
    }

    #[test]
    fn retry_after_is_a_floor_and_capped() {
        let schedule = [s(0), s(5)];
        let asked = |d| Outcome::Status { status: 429, retry_after: Some(d) };
        assert_eq!(decide(&asked(s(60)), 1, &schedule, 0.0, 0.0), RetryAction::RetryIn(s(60)));
        assert_eq!(decide(&asked(s(1)), 1, &schedule, 0.0, 0.0), RetryAction::RetryIn(s(5)));
        assert_eq!(decide(&asked(s(10_000_000)), 1, &schedule, 0.0, 0.0), RetryAction::RetryIn(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = humantime::parse_rfc3339("2015-10-21T07:27:00Z").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(s(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(s(60)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
