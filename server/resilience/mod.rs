//! The resilience of every upstream call: a [`Guard`] per upstream (its circuit breaker, rate
//! limit, retry policy and timeout) over concurrency [`Limits`] shared by all, and the tower
//! stack that applies them to one call, assembled in `stack::Guard::stack`.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use crate::{
    cache::{Cache, Key},
    config::UpstreamConfig,
    domain::AgentName,
    fault::{UpstreamError, breaker::CircuitBreaker, retry::RetryPolicy},
    lock,
    metrics::{self, Metrics, UpstreamOutcome},
    redis::Redis,
};

pub use crate::fault::breaker;
mod guards;
mod limits;
mod provider;
mod rate;
mod stack;

pub use guards::Guards;
pub use limits::{Limits, Pool};
pub use provider::ProviderLimits;
pub use rate::RateLimiter;
pub use stack::{Called, Calls};

/// An attempt's timeout when the configuration names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `Retry-After` honoured by waiting; an upstream asking for more fails the call.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Per call: the pool it counts against, the job's deadline, and the tally of the agent it
/// is made for.
#[derive(Debug, Clone)]
pub struct CallScope {
    pub pool: Pool,
    pub deadline: Option<Instant>,
    /// Where the stack counts this scope's calls, attempts and tokens: the agent's run
    /// metrics come from here, from what the stack saw, not from each call site.
    pub tally: Option<Arc<Tally>>,
}

impl CallScope {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            deadline: None,
            tally: None,
        }
    }

    /// Counts one finished call through the stack.
    pub fn count_call(&self, cached: bool, attempts: u32) {
        if let Some(tally) = &self.tally {
            tally.call(cached, attempts);
        }
    }

    /// Counts tokens an LLM call used.
    pub fn count_tokens(&self, input: u64, output: u64) {
        if let Some(tally) = &self.tally {
            tally.tokens(input, output);
        }
    }
}

/// Calls, attempts and tokens counted by the stack for one agent run.
#[derive(Debug, Default)]
pub struct Tally {
    calls: std::sync::atomic::AtomicU32,
    cached: std::sync::atomic::AtomicU32,
    attempts: std::sync::atomic::AtomicU32,
    input_tokens: std::sync::atomic::AtomicU64,
    output_tokens: std::sync::atomic::AtomicU64,
}

/// What a [`Tally`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub calls: Calls,
    pub attempts: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Tally {
    fn call(&self, cached: bool, attempts: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        self.cached.fetch_add(u32::from(cached), Relaxed);
        self.attempts.fetch_add(attempts, Relaxed);
    }

    fn tokens(&self, input: u64, output: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.input_tokens.fetch_add(input, Relaxed);
        self.output_tokens.fetch_add(output, Relaxed);
    }

    pub fn counted(&self) -> Counted {
        use std::sync::atomic::Ordering::Relaxed;
        Counted {
            calls: Calls {
                total: self.calls.load(Relaxed),
                cached: self.cached.load(Relaxed),
            },
            attempts: self.attempts.load(Relaxed),
            input_tokens: self.input_tokens.load(Relaxed),
            output_tokens: self.output_tokens.load(Relaxed),
        }
    }
}

/// What an outcome says about the upstream's health: failures are connection trouble, 5xx
/// and silence; any other answer (a 4xx, a malformed or oversized body, a prompt too long for
/// the model) shows it is up; a 429, a refusal before sending, or our own budget cutting a
/// call the upstream was still answering say nothing either way. A timeout or a stall is
/// silence only when nothing at all was heard from the upstream since the call began: a slow
/// upstream whose other calls answer meanwhile is slow, not down.
fn health<T>(result: &Result<T, UpstreamError>, heard_meanwhile: bool) -> Option<bool> {
    match result {
        Ok(_)
        | Err(
            UpstreamError::Malformed { .. }
            | UpstreamError::TooLarge { .. }
            | UpstreamError::ContextExceeded { .. },
        ) => Some(true),
        Err(UpstreamError::Timeout { .. } | UpstreamError::Stalled { .. }) if heard_meanwhile => {
            None
        }
        Err(
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Stalled { .. },
        ) => Some(false),
        Err(UpstreamError::Status { status, .. }) if *status >= 500 => Some(false),
        Err(UpstreamError::Status { status, .. }) if *status != 429 => Some(true),
        Err(_) => None,
    }
}

/// When the upstream was last heard from (any byte of any call), as an offset from a fixed
/// instant: one atomic store per chunk, read by the breaker when a call times out.
#[derive(Debug)]
pub struct Liveness {
    epoch: Instant,
    /// Milliseconds after `epoch`, plus one (zero: never heard).
    heard_ms: std::sync::atomic::AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            heard_ms: Default::default(),
        }
    }
}

impl Liveness {
    /// Something arrived from the upstream just now.
    pub fn heard(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.heard_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether anything arrived from the upstream at or after `since`.
    pub fn heard_since(&self, since: Instant) -> bool {
        let heard = self.heard_ms.load(std::sync::atomic::Ordering::Relaxed);
        let since_ms = since.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        heard >= since_ms
    }
}

/// The resilience stack of one upstream.
#[derive(Debug)]
pub struct Guard {
    pub upstream: &'static str,
    pub breaker: Arc<CircuitBreaker>,
    rate: Option<RateLimiter>,
    retry: RetryPolicy,
    /// Whole-call timeout of one attempt (a stream's included).
    timeout: Duration,
    /// The largest answer body read, and cached value taken.
    max_body: usize,
    pub limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    /// The cache in front of the stack, and how long this upstream's answers are kept
    /// (none: not cached).
    cache: Option<(Arc<Cache>, Duration)>,
    /// The latest failure, for detailed health.
    last_error: std::sync::Mutex<Option<(String, SystemTime)>>,
    /// When the upstream last sent anything: a slow answer is not an outage.
    pub liveness: Liveness,
    /// What the provider's `x-ratelimit-*` headers say is left: calls slow down before 429.
    pub provider: ProviderLimits,
    /// Calls that may be in flight to this upstream at once (a local model server has a few
    /// slots; more calls only slow each one down): set once, from configuration or from
    /// what the server says of itself. Calls wait here, before the pools, and the wait is not
    /// part of any call's time budget.
    slots: std::sync::OnceLock<(Arc<tokio::sync::Semaphore>, usize)>,
}

impl Guard {
    pub fn new(
        upstream: &'static str,
        breaker: CircuitBreaker,
        (rpm, burst): (u32, u32),
        retry: RetryPolicy,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            breaker: Arc::new(breaker),
            rate: RateLimiter::per_minute(rpm, burst),
            retry,
            timeout: DEFAULT_TIMEOUT,
            max_body: 1 << 20,
            limits,
            metrics,
            cache: None,
            last_error: Default::default(),
            liveness: Liveness::default(),
            provider: ProviderLimits::default(),
            slots: std::sync::OnceLock::new(),
        }
    }

    /// Limits calls in flight to this upstream to `slots` (0: no limit). Only the first
    /// setting holds; returns whether this one did.
    pub fn set_slots(&self, slots: usize) -> bool {
        slots > 0
            && self
                .slots
                .set((Arc::new(tokio::sync::Semaphore::new(slots)), slots))
                .is_ok()
    }

    /// The semaphore of this upstream's slots, when limited.
    fn slot_permits(&self) -> Option<&Arc<tokio::sync::Semaphore>> {
        self.slots.get().map(|(slots, _)| slots)
    }

    /// Calls that may be in flight at once, and those in flight, when limited.
    pub fn slots(&self) -> Option<(usize, usize)> {
        let (slots, size) = self.slots.get()?;
        Some((*size, size.saturating_sub(slots.available_permits())))
    }

    /// The guard with its rate limit counted in Redis across replicas, when configured.
    pub fn with_shared_rate(self, redis: Option<&Arc<Redis>>) -> Self {
        let upstream = self.upstream;
        Self {
            rate: match (self.rate, redis) {
                (Some(rate), Some(redis)) => Some(rate.shared(upstream, redis.clone())),
                (rate, _) => rate,
            },
            ..self
        }
    }

    /// The guard with `cache` in front, keeping answers for `ttl` (zero: not cached).
    pub fn with_cache(self, cache: Arc<Cache>, ttl: Duration) -> Self {
        Self {
            cache: (!ttl.is_zero()).then_some((cache, ttl)),
            ..self
        }
    }

    /// The cache key of a call whose answer depends on `parts`; `None` when this upstream's
    /// answers are not cached.
    pub fn cache_key(&self, parts: &[&[u8]]) -> Option<Key> {
        let (_, ttl) = self.cache.as_ref()?;
        Some(Key::new(self.upstream, *ttl, parts).with_max_bytes(self.max_body))
    }

    /// The guard with this limit on an answer body.
    pub fn with_max_body(self, max_body: usize) -> Self {
        Self { max_body, ..self }
    }

    /// The largest answer body this upstream's clients read.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The guard with this whole-call timeout per attempt.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    fn breaker_open(&self, retry_after: Duration) -> UpstreamError {
        UpstreamError::BreakerOpen {
            upstream: self.upstream,
            retry_after,
        }
    }

    /// Counts one attempt's outcome and duration; remembers the latest failure.
    pub fn observe<T>(&self, result: &Result<T, UpstreamError>, elapsed: Duration) {
        let outcome = match result {
            Ok(_) => "ok",
            // The breaker's own refusals say nothing new about the upstream.
            Err(UpstreamError::BreakerOpen { .. }) => "breaker_open",
            Err(error) => {
                *lock(&self.last_error) = Some((error.to_string(), SystemTime::now()));
                error.outcome()
            }
        };
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamOutcome {
                upstream: self.upstream,
                outcome,
            })
            .inc();
        if !matches!(result, Err(UpstreamError::BreakerOpen { .. })) {
            self.metrics
                .upstream_duration
                .get_or_create(&metrics::Upstream {
                    upstream: self.upstream,
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The latest failure and when it happened.
    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        lock(&self.last_error).clone()
    }

    /// One attempt, no breaker that ever opens, no limits to speak of: for tools and tests.
    pub fn unlimited(upstream: &'static str) -> Self {
        Self::new(
            upstream,
            CircuitBreaker::new(u32::MAX, Duration::ZERO),
            (0, 1),
            RetryPolicy::new(1),
            Arc::new(Limits::new(1024, 1024, 1024, 1024)),
            Arc::new(Metrics::new()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn an_open_breaker_fails_fast_without_calling() {
        let guard = Guard::new(
            "web",
            CircuitBreaker::new(2, Duration::from_secs(30)),
            (0, 1),
            RetryPolicy::new(1),
            Arc::new(Limits::new(2, 1, 1, 1)),
            Arc::new(Metrics::new()),
        );
        let scope = CallScope::new(Pool::Search);
        let calls = AtomicUsize::new(0);
        for _ in 0..4 {
            let (result, _) = guard
                .call(&scope, &tracing::Span::none, |_| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async {
                        Err::<(), _>(UpstreamError::Status {
                            upstream: "web",
                            status: 500,
                            retry_after: None,
                            body: String::new(),
                        })
                    }
                })
                .await;
            assert!(result.is_err());
        }
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the breaker opened after two failures"
        );
        let (result, _) = guard
            .call(&scope, &tracing::Span::none, |_| async { Ok(()) })
            .await;
        assert!(matches!(result, Err(UpstreamError::BreakerOpen { .. })));
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline() {
        let guard = Guard::new(
            "llm",
            CircuitBreaker::new(100, Duration::from_secs(1)),
            (0, 1),
            RetryPolicy::new(10),
            Arc::new(Limits::new(2, 1, 1, 1)),
            Arc::new(Metrics::new()),
        );
        let scope = CallScope {
            deadline: Some(Instant::now() + Duration::from_millis(50)),
            ..CallScope::new(Pool::Content)
        };
        let (result, attempts) = guard
            .call(&scope, &tracing::Span::none, |_| async {
                Err::<(), _>(UpstreamError::Status {
                    upstream: "llm",
                    status: 429,
                    retry_after: Some(Duration::from_secs(5)),
                    body: String::new(),
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(
            attempts, 1,
            "a 5 s Retry-After does not fit in a 50 ms deadline"
        );
    }

    #[tokio::test]
    async fn a_call_cancelled_while_waiting_for_the_rate_limit_uses_no_turn() {
        let limiter = RateLimiter::per_minute(600, 1).unwrap(); // a turn every 100 ms
        limiter.acquire().await;
        for _ in 0..5 {
            // Gives up after 10 ms, long before its turn.
            let _ = tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await;
        }
        let started = Instant::now();
        limiter.acquire().await;
        // Its own turn is at most 100 ms away; behind five abandoned turns it would be 600 ms.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "waited {:?} behind abandoned turns",
            started.elapsed()
        );
    }

    #[test]
    fn a_retry_after_beyond_the_limit_is_not_waited_for() {
        let guard = Guard::unlimited("llm");
        let guard = Guard {
            retry: RetryPolicy::new(3),
            ..guard
        };
        let scope = CallScope::new(Pool::Content);
        let asked = |secs| UpstreamError::Status {
            upstream: "llm",
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
            body: String::new(),
        };
        assert!(
            guard
                .backoff(1, &asked(2), &scope)
                .is_some_and(|d| d >= Duration::from_secs(2))
        );
        assert_eq!(
            guard.backoff(1, &asked(3600), &scope),
            None,
            "an hour is not waited for"
        );
        assert_eq!(
            guard.backoff(1, &asked(u64::MAX / 4), &scope),
            None,
            "nor a value that would overflow"
        );
    }

    #[tokio::test]
    async fn an_attempt_past_the_guards_timeout_is_a_timeout() {
        let guard = Guard::unlimited("kb").with_timeout(Duration::from_millis(20));
        let scope = CallScope::new(Pool::Search);
        let (result, attempts) = guard
            .call(&scope, &tracing::Span::none, |_| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(
            matches!(result, Err(UpstreamError::Timeout { upstream: "kb", .. })),
            "{result:?}"
        );
        assert_eq!(attempts, 1);
    }

    /// Calls that waited in the pool queue take their rate-limit turns as they leave it, so
    /// they do not go out in a burst when the pool frees up.
    #[tokio::test]
    async fn calls_leaving_the_pool_queue_keep_the_rate_limits_spacing() {
        let guard = Arc::new(Guard::new(
            "web",
            CircuitBreaker::new(100, Duration::from_secs(1)),
            (600, 1), // a turn every 100 ms, no burst
            RetryPolicy::new(1),
            Arc::new(Limits::new(10, 1, 1, 1)),
            Arc::new(Metrics::new()),
        ));
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let call = |hold: Duration| {
            let (guard, started) = (guard.clone(), started.clone());
            tokio::spawn(async move {
                let scope = CallScope::new(Pool::Search);
                guard
                    .call(&scope, &tracing::Span::none, |_| async {
                        lock(&started).push(Instant::now());
                        tokio::time::sleep(hold).await;
                        Ok(())
                    })
                    .await
            })
        };
        // One call holds the only pool slot for 400 ms while three queue behind it; queued,
        // they must not have taken turns that all fall due when the slot frees.
        let first = call(Duration::from_millis(400));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued: Vec<_> = (0..3).map(|_| call(Duration::from_millis(5))).collect();
        let _ = first.await;
        for call in queued {
            let _ = call.await;
        }
        let mut times = lock(&started).clone();
        times.sort();
        for pair in times[1..].windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(90), "{times:?}");
        }
    }

    #[test]
    fn pools_are_sized_and_counted() {
        let limits = Limits::new(10, 4, 3, 2);
        assert_eq!(limits.pool_in_use(Pool::Content), (0, 3));
        assert_eq!(limits.global_in_use(), (0, 10));
        assert_eq!(Pool::for_agent(AgentName::WebResearcher), Pool::Search);
        assert_eq!(Pool::for_agent(AgentName::ContentWriter), Pool::Content);
        assert_eq!(Pool::for_agent(AgentName::FactChecker), Pool::Analysis);
    }
}
