//! Requests-per-minute limits per upstream with a burst (GCRA, the generic cell rate
//! algorithm): calls go out at once up to the burst, and on average no faster than the limit;
//! with Redis, the same algorithm in one atomic step over one key per upstream, counted for
//! every replica.
use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::*;

/// One GCRA step in Redis, on Redis's own clock so every replica agrees. The key holds the
/// theoretical arrival time (TAT) in microseconds. KEYS: the upstream's key. ARGV: the
/// interval between calls and the burst tolerance, in microseconds. Returns 0 (go now) or
/// the microseconds to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.floor((next - now) / 1000) + 1000)
return 0
";

/// A requests-per-minute limit with a burst: up to `burst` calls go out at once, then one
/// every minute / rpm. A call takes its turn only when it goes out, so a call cancelled while
/// waiting uses none.
///
/// With Redis, the limit is the provider account's, counted across replicas. When Redis does
/// not answer, each replica keeps its own bucket as without it.
#[derive(Debug)]
pub struct RateLimiter {
    /// Between two calls on average (the emission interval).
    interval: Duration,
    /// How far ahead of the average a call may go: (burst - 1) intervals.
    tolerance: Duration,
    /// The theoretical arrival time of the next call.
    tat: std::sync::Mutex<Instant>,
    /// The upstream whose bucket is shared, and Redis.
    shared: Option<(&'static str, Arc<Redis>)>,
}

impl RateLimiter {
    /// `rpm` calls a minute, `burst` at once (at least 1); `None` for 0 (no limit).
    pub fn per_minute(rpm: u32, burst: u32) -> Option<Self> {
        (rpm > 0).then(|| {
            let interval = Duration::from_secs(60) / rpm;
            Self {
                interval,
                tolerance: interval * (burst.max(1) - 1),
                tat: std::sync::Mutex::new(Instant::now()),
                shared: None,
            }
        })
    }

    /// The limit counted in `redis` for all replicas calling `upstream`.
    pub fn shared(self, upstream: &'static str, redis: Arc<Redis>) -> Self {
        Self {
            shared: Some((upstream, redis)),
            ..self
        }
    }

    pub async fn acquire(&self) {
        if let Some((upstream, redis)) = &self.shared {
            let key = Redis::key("rate", upstream);
            let (interval, tolerance) = (micros(self.interval), micros(self.tolerance));
            loop {
                let key = key.clone();
                let waited: Option<u64> = redis
                    .run("rate", |mut c| async move {
                        ::redis::cmd("EVAL")
                            .arg(GCRA)
                            .arg(1)
                            .arg(key)
                            .arg(interval)
                            .arg(tolerance)
                            .query_async(&mut c)
                            .await
                    })
                    .await;
                match waited {
                    None => break, // Redis away: this replica's own bucket
                    Some(0) => return,
                    Some(wait) => tokio::time::sleep(Duration::from_micros(wait)).await,
                }
            }
        }
        loop {
            match self.take(Instant::now()) {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// One GCRA step in this process: a call now goes, or may go at the instant returned.
    fn take(&self, now: Instant) -> Result<(), Instant> {
        let mut tat = lock(&self.tat);
        let start = (*tat).max(now);
        if start > now + self.tolerance {
            return Err(start - self.tolerance);
        }
        *tat = start + self.interval;
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_out_at_once_and_the_rate_holds_after_it() {
        // 300 a minute (one per 200 ms), 5 at once.
        let limiter = RateLimiter::per_minute(300, 5).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.take(start), Ok(()), "the burst goes at once");
        }
        let next = limiter.take(start).unwrap_err();
        assert_eq!(next - start, Duration::from_millis(200));
        // A minute later the bucket holds its burst again, not more.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.take(later), Ok(()));
        }
        assert!(limiter.take(later).is_err());
        // Over any minute, no more than rpm + burst calls.
        let limiter = RateLimiter::per_minute(300, 5).unwrap();
        let mut sent = 0;
        let mut now = start;
        while now < start + Duration::from_secs(60) {
            match limiter.take(now) {
                Ok(()) => sent += 1,
                Err(at) => now = at,
            }
        }
        assert!((300..=305).contains(&sent), "{sent} calls in a minute");
    }

    #[test]
    fn without_a_burst_calls_are_spaced() {
        let limiter = RateLimiter::per_minute(60, 1).unwrap();
        let start = Instant::now();
        assert_eq!(limiter.take(start), Ok(()));
        assert_eq!(
            limiter.take(start).unwrap_err() - start,
            Duration::from_secs(1)
        );
        assert!(RateLimiter::per_minute(0, 5).is_none());
    }
}
