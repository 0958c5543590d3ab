//! The retry policy: attempts, and exponential backoff with full jitter that honours
//! `Retry-After`. [`crate::resilience::Guard::call`] applies it.
use std::time::Duration;

use super::UpstreamError;

/// The first wait after a rate limit that names none.
pub const RATE_LIMIT_BASE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }

    /// The wait before attempt `attempt + 1`: a random share of an exponentially growing
    /// ceiling, but never less than the upstream's `Retry-After`. A rate limit that names no
    /// wait (429 without `Retry-After`, as many gateways and local servers answer) is given
    /// seconds, not milliseconds: from [`RATE_LIMIT_BASE`], doubling, with jitter in its
    /// upper half.
    pub fn delay(&self, attempt: u32, error: &UpstreamError) -> Duration {
        let growth = 2u32.saturating_pow(attempt.saturating_sub(1));
        if let Some(asked) = error.retry_after() {
            let ceiling = self.base_delay.saturating_mul(growth).min(self.max_delay);
            return asked.max(ceiling.mul_f64(fastrand::f64()));
        }
        if error.is_rate_limit() {
            let floor = RATE_LIMIT_BASE.saturating_mul(growth).min(self.max_delay);
            return (floor + floor.mul_f64(fastrand::f64())).min(self.max_delay.max(floor));
        }
        let ceiling = self.base_delay.saturating_mul(growth).min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy::new(5);
        let plain = UpstreamError::Timeout {
            upstream: "llm",
            after: Duration::from_secs(1),
        };
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(200)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(10));
            assert!(policy.delay(attempt, &plain) <= ceiling);
        }
        let limited = UpstreamError::Status {
            upstream: "llm",
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
            body: String::new(),
        };
        assert!(policy.delay(1, &limited) >= Duration::from_secs(2));
        let unnamed = UpstreamError::Status {
            upstream: "llm",
            status: 429,
            retry_after: None,
            body: String::new(),
        };
        for attempt in 1..4 {
            let floor = RATE_LIMIT_BASE * (1 << (attempt - 1));
            let delay = policy.delay(attempt, &unnamed);
            assert!(delay >= floor && delay <= floor * 2, "{delay:?}");
        }
        assert!(limited.retryable());
        let refused = UpstreamError::Status {
            upstream: "web",
            status: 401,
            retry_after: None,
            body: String::new(),
        };
        assert!(!refused.retryable());
    }
}
