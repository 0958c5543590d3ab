//! The retry policy: attempts, and exponential backoff with full jitter that honours
//! `Retry-After`. [`crate::server::resilience::Guard::call`] applies it.
use std::time::Duration;

use super::UpstreamError;

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
    /// ceiling, but never less than the upstream's `Retry-After`.
    pub fn delay(&self, attempt: u32, error: &UpstreamError) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay);
        let jittered = ceiling.mul_f64(fastrand::f64());
        error
            .retry_after()
            .map_or(jittered, |asked| asked.max(jittered))
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
