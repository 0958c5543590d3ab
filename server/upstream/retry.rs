//! Retries with exponential backoff and full jitter, honouring `Retry-After`.
use std::{future::Future, time::Duration};

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

    /// Runs `call` until it succeeds, fails for good, or attempts run out. Returns the
    /// outcome and the number of attempts made.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> (Result<T, UpstreamError>, u32)
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut attempt = 1;
        loop {
            match call(attempt).await {
                Ok(value) => return (Ok(value), attempt),
                Err(error) if error.retryable() && attempt < self.max_attempts => {
                    let delay = self.delay(attempt, &error);
                    tracing::warn!(upstream = error.upstream(), attempt, ?delay, %error, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return (Err(error), attempt),
            }
        }
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
