//! Per-caller quota on `Generate`: a token bucket for each API key (or each peer address when
//! authentication is off), so one client cannot take every job slot. Beyond it `Generate`
//! answers RESOURCE_EXHAUSTED with `RetryInfo` saying when the next job may start.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::lock;

/// Callers tracked at most before idle (full) buckets are dropped.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
pub struct GenerateQuota {
    /// Time to earn one job back.
    interval: Duration,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl GenerateQuota {
    /// `per_minute` jobs a minute per caller, `burst` at once; `None` for 0 (no quota).
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            interval: Duration::from_secs(60) / per_minute,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one job for `caller`, or says how long until one is free.
    pub fn take(&self, caller: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED {
            let (interval, burst) = (self.interval, self.burst);
            buckets.retain(|_, b| refill(b, now, interval, burst) < burst);
        }
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refill(bucket, now, self.interval, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.interval.mul_f64(1.0 - bucket.tokens))
        }
    }
}

fn refill(bucket: &Bucket, now: Instant, interval: Duration, burst: f64) -> f64 {
    let earned = now.duration_since(bucket.at).as_secs_f64() / interval.as_secs_f64();
    (bucket.tokens + earned).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_waits_and_others_are_not_affected() {
        let quota = GenerateQuota::new(60, 3).unwrap_or_else(|| unreachable!());
        for _ in 0..3 {
            assert!(quota.take("a").is_ok());
        }
        let wait = quota.take("a").err().unwrap_or_default();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(quota.take("b").is_ok());
        assert!(GenerateQuota::new(0, 3).is_none());
    }
}
