//! Per-source ingest rate limits (`[[sources]] rate_limit`, events per second per process), with
//! governor's GCRA: a source may burst up to one second's worth, then is held to its rate. Checked
//! once a request is authenticated and before its body is read, so an over-limit event costs
//! nothing and is not stored.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// The rate limiter of every source that has one, with its rate.
pub struct SourceRates {
    limiters: HashMap<String, (f64, Arc<DefaultDirectRateLimiter>)>,
    clock: DefaultClock,
}

impl SourceRates {
    /// Limiters for the sources of `config` with a `rate_limit`. A source of `previous` (the
    /// configuration a reload replaces) whose rate is unchanged keeps its limiter, so a reload
    /// grants no fresh burst.
    pub fn new(config: &Config, previous: Option<&SourceRates>) -> Self {
        let limiters = config
            .sources
            .iter()
            .filter_map(|s| {
                let rate = s.rate_limit?;
                let kept = previous.and_then(|p| p.limiters.get(&s.name)).filter(|(r, _)| *r == rate);
                let limiter = match kept {
                    Some((_, limiter)) => limiter.clone(),
                    None => Arc::new(limiter(rate)?),
                };
                Some((s.name.clone(), (rate, limiter)))
            })
            .collect();
        Self { limiters, clock: DefaultClock::default() }
    }

    /// `Err(wait)` when `source` is over its rate: it may send again after `wait`.
    pub fn check(&self, source: &str) -> Result<(), Duration> {
        let Some((_, limiter)) = self.limiters.get(source) else { return Ok(()) };
        limiter.check().map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// A limiter of `rate` events per second, bursting up to a second's worth (at least one).
fn limiter(rate: f64) -> Option<DefaultDirectRateLimiter> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let burst = NonZeroU32::new(rate.ceil().min(f64::from(u32::MAX)) as u32)?;
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(burst);
    Some(RateLimiter::direct(quota))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_bursts_a_seconds_worth_then_waits() {
        let config = crate::config::from_toml(
            "[[sources]]\nname = \"shop\"\ntoken = \"a-long-enough-token\"\nrate_limit = 5.0\n",
        )
        .unwrap();
        let rates = SourceRates::new(&config, None);
        for _ in 0..5 {
            assert_eq!(rates.check("shop"), Ok(()));
        }
        let wait = rates.check("shop").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        assert_eq!(rates.check("other"), Ok(()), "a source without a limit is never held");
    }
}
