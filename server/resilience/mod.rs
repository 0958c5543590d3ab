//! The resilience of every upstream call: a [`Guard`] per upstream (its circuit breaker, rate
//! limit, retry policy and timeout) over concurrency [`Limits`] shared by all, and the tower
//! stack that applies them to one call, assembled in `stack::Guard::stack`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

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
mod stack;

pub use stack::{Attempt, Called, Calls};

/// An attempt's timeout when the configuration names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `Retry-After` honoured by waiting; an upstream asking for more fails the call.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Kinds of work, each with its own concurrency pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Search,
    Content,
    Analysis,
}

impl Pool {
    pub const ALL: [Pool; 3] = [Pool::Search, Pool::Content, Pool::Analysis];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Content => "content",
            Self::Analysis => "analysis",
        }
    }

    /// Research searches; synthesis and writing; everything that reads the article.
    pub fn for_agent(agent: AgentName) -> Self {
        match agent {
            AgentName::KbResearcher | AgentName::WebResearcher => Self::Search,
            AgentName::ResearchSynthesizer | AgentName::ContentWriter => Self::Content,
            _ => Self::Analysis,
        }
    }
}

/// Concurrency limits shared by every upstream: a pool per kind of work and a global cap.
#[derive(Debug)]
pub struct Limits {
    global: Arc<Semaphore>,
    pools: [Arc<Semaphore>; 3],
    sizes: [usize; 4],
    /// Calls waiting for a permit: per pool, and for the global cap.
    waiting: [AtomicUsize; 4],
}

impl Limits {
    pub fn new(global: usize, search: usize, content: usize, analysis: usize) -> Self {
        let (global, search, content, analysis) = (
            global.max(1),
            search.max(1),
            content.max(1),
            analysis.max(1),
        );
        Self {
            global: Arc::new(Semaphore::new(global)),
            pools: [search, content, analysis].map(|n| Arc::new(Semaphore::new(n))),
            sizes: [global, search, content, analysis],
            waiting: Default::default(),
        }
    }

    fn pool(&self, pool: Pool) -> &Arc<Semaphore> {
        &self.pools[pool as usize]
    }

    /// Calls in flight in a pool, and its size.
    pub fn pool_in_use(&self, pool: Pool) -> (usize, usize) {
        let size = self.sizes[pool as usize + 1];
        (size - self.pool(pool).available_permits(), size)
    }

    /// Upstream calls in flight over all pools, and the cap.
    pub fn global_in_use(&self) -> (usize, usize) {
        (
            self.sizes[0] - self.global.available_permits(),
            self.sizes[0],
        )
    }

    /// (name, in use, size, waiting) for each pool and, last, `global`.
    pub fn usage(&self) -> Vec<(&'static str, usize, usize, usize)> {
        let mut usage: Vec<_> = Pool::ALL
            .iter()
            .map(|&pool| {
                let (in_use, size) = self.pool_in_use(pool);
                (pool.as_str(), in_use, size, self.waiting(Some(pool)))
            })
            .collect();
        let (in_use, size) = self.global_in_use();
        usage.push(("global", in_use, size, self.waiting(None)));
        usage
    }

    /// Calls waiting for a permit of `pool`, or for the global cap (`None`).
    pub fn waiting(&self, pool: Option<Pool>) -> usize {
        self.waiting[pool.map_or(0, |p| p as usize + 1)].load(Ordering::Relaxed)
    }

    async fn acquire(
        &self,
        semaphore: &Arc<Semaphore>,
        slot: usize,
    ) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Counted while waiting, however the wait ends (a cancelled job drops it).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting[slot].fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting[slot]);
        semaphore.clone().acquire_owned().await
    }
}

/// A requests-per-minute limit: calls are spaced evenly, waiting when they come too fast.
/// A call takes its turn only when it goes out, so a call cancelled while waiting uses none.
///
/// With Redis, the limit is the provider account's, counted across replicas: each minute's
/// calls are counted in Redis, and a call over the limit waits for the next minute. When Redis
/// does not answer, each replica spaces its own calls as without it.
#[derive(Debug)]
pub struct RateLimiter {
    rpm: u32,
    interval: Duration,
    /// When the next call may go out.
    next: std::sync::Mutex<Instant>,
    /// The upstream whose count is shared, and Redis.
    shared: Option<(&'static str, Arc<Redis>)>,
}

impl RateLimiter {
    /// `None` for 0 (no limit).
    pub fn per_minute(rpm: u32) -> Option<Self> {
        (rpm > 0).then(|| Self {
            rpm,
            interval: Duration::from_secs(60) / rpm,
            next: std::sync::Mutex::new(Instant::now()),
            shared: None,
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
            loop {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let minute = now.as_secs() / 60;
                let key = Redis::key("rate", &format!("{upstream}:{minute}"));
                let counted: Option<u64> = redis
                    .run("rate", |mut c| async move {
                        let (count,): (u64,) = ::redis::pipe()
                            .incr(&key, 1)
                            .pexpire(&key, 61_000)
                            .ignore()
                            .query_async(&mut c)
                            .await?;
                        Ok(count)
                    })
                    .await;
                match counted {
                    None => break, // Redis away: this replica's own spacing
                    Some(n) if n <= u64::from(self.rpm) => return,
                    Some(_) => {
                        let next_minute = Duration::from_secs((minute + 1) * 60);
                        let wait = next_minute.saturating_sub(now);
                        // Replicas waking at once are spread over the first 100 ms.
                        let jitter = Duration::from_millis(fastrand::u64(0..100));
                        tokio::time::sleep(wait + jitter).await;
                    }
                }
            }
        }
        loop {
            let turn = {
                let mut next = lock(&self.next);
                let now = Instant::now();
                if *next <= now {
                    *next = now + self.interval;
                    return;
                }
                *next
            };
            tokio::time::sleep_until(turn).await;
        }
    }
}

/// Per call: the pool it counts against and the job's deadline.
#[derive(Debug, Clone, Copy)]
pub struct CallScope {
    pub pool: Pool,
    pub deadline: Option<Instant>,
}

impl CallScope {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            deadline: None,
        }
    }
}

/// What an outcome says about the upstream's health: failures are connection trouble,
/// timeouts and 5xx; any other answer (a 4xx, a malformed body) shows it is up; a 429 or a
/// refusal before sending says nothing either way.
fn health<T>(result: &Result<T, UpstreamError>) -> Option<bool> {
    match result {
        Ok(_) | Err(UpstreamError::Malformed { .. } | UpstreamError::TooLarge { .. }) => Some(true),
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

/// The stacks of the four upstreams, sharing one set of limits.
#[derive(Debug, Clone)]
pub struct Guards {
    pub llm: Arc<Guard>,
    pub kb: Arc<Guard>,
    pub web: Arc<Guard>,
    pub fetch: Arc<Guard>,
    pub limits: Arc<Limits>,
}

impl Guards {
    pub fn all(&self) -> [&Arc<Guard>; 4] {
        [&self.llm, &self.kb, &self.web, &self.fetch]
    }
}

impl Guards {
    /// The guard of each upstream (`llm`, `kb`, `web`, `fetch`) from configuration, sharing
    /// one set of concurrency limits.
    pub fn from_config(
        config: &UpstreamConfig,
        metrics: &Arc<Metrics>,
        cache: &Arc<Cache>,
        redis: Option<&Arc<Redis>>,
    ) -> Result<Self, String> {
        let limits = Arc::new(Limits::new(
            config.max_concurrent_upstream,
            config.pool_search,
            config.pool_content,
            config.pool_analysis,
        ));
        let rpm = per_upstream(
            &config.rate_limits,
            "--rate-limits",
            "a number of requests per minute",
            DEFAULT_RPM,
            |v| v.parse::<u32>().ok(),
        )?;
        let ttls = per_upstream(
            &config.cache_ttls,
            "--cache-ttls",
            "a duration (5m, 1h, 0s)",
            DEFAULT_TTL,
            |v| humantime::parse_duration(v).ok(),
        )?;
        let mut body_limits = per_upstream(
            &config.body_limits,
            "--body-limits",
            "a number of bytes",
            DEFAULT_BODY_LIMIT,
            |v| v.parse::<usize>().ok().filter(|n| *n > 0),
        )?;
        if !config.body_limits.iter().any(|(u, _)| u == "fetch") {
            body_limits.insert("fetch".into(), config.fetch_max_bytes);
        }
        let guard = |upstream: &'static str, timeout| {
            let ttl = ttls.get(upstream).copied().unwrap_or_default();
            let max_body = body_limits.get(upstream).copied().unwrap_or(1 << 20);
            Arc::new(
                Guard::new(
                    upstream,
                    CircuitBreaker::new(config.breaker_threshold, config.breaker_cool_down),
                    rpm.get(upstream).copied().unwrap_or(0),
                    RetryPolicy::new(config.max_attempts),
                    limits.clone(),
                    metrics.clone(),
                )
                .with_timeout(timeout)
                .with_max_body(max_body)
                .with_cache(cache.clone(), ttl)
                .with_shared_rate(redis),
            )
        };
        Ok(Guards {
            llm: guard("llm", config.llm_timeout),
            kb: guard("kb", config.kb_timeout),
            web: guard("web", config.web_timeout),
            fetch: guard("fetch", config.fetch_timeout),
            limits: limits.clone(),
        })
    }
}

/// `defaults` overridden by `upstream=value` pairs of the flag `flag`.
fn per_upstream<T: Copy>(
    pairs: &[(String, String)],
    flag: &str,
    expected: &str,
    defaults: [(&str, T); 4],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<std::collections::HashMap<String, T>, String> {
    let mut values: std::collections::HashMap<String, T> =
        defaults.iter().map(|(u, v)| (u.to_string(), *v)).collect();
    for (upstream, value) in pairs {
        if !UPSTREAMS.contains(&upstream.as_str()) {
            return Err(format!(
                "{flag} names `{upstream}`; upstreams are {}",
                UPSTREAMS.join(", ")
            ));
        }
        let parsed =
            parse(value).ok_or_else(|| format!("{flag} {upstream}={value}: not {expected}"))?;
        values.insert(upstream.clone(), parsed);
    }
    Ok(values)
}

const UPSTREAMS: [&str; 4] = ["llm", "kb", "web", "fetch"];
/// How long answers are cached per upstream unless `--cache-ttls` says otherwise (SPEC §6).
/// The LLM's only when the request is deterministic; fetched pages only for the job.
const DEFAULT_TTL: [(&str, Duration); 4] = [
    ("llm", Duration::from_secs(300)),
    ("kb", Duration::from_secs(3600)),
    ("web", Duration::from_secs(3600)),
    ("fetch", Duration::from_secs(900)),
];
/// The largest answer body read per upstream unless `--body-limits` says otherwise (the
/// fetch's is `--fetch-max-bytes`); also the largest cached answer taken from Redis. A chat
/// completion of a few thousand tokens is tens of kB, a page of search results less.
const DEFAULT_BODY_LIMIT: [(&str, usize); 4] = [
    ("llm", 4 << 20),
    ("kb", 4 << 20),
    ("web", 1 << 20),
    ("fetch", 2_000_000),
];
/// Requests per minute per upstream unless `--rate-limits` says otherwise.
const DEFAULT_RPM: [(&str, u32); 4] = [("llm", 600), ("kb", 1200), ("web", 300), ("fetch", 600)];

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
}

impl Guard {
    pub fn new(
        upstream: &'static str,
        breaker: CircuitBreaker,
        rpm: u32,
        retry: RetryPolicy,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            breaker: Arc::new(breaker),
            rate: RateLimiter::per_minute(rpm),
            retry,
            timeout: DEFAULT_TIMEOUT,
            max_body: 1 << 20,
            limits,
            metrics,
            cache: None,
            last_error: Default::default(),
        }
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
            0,
            RetryPolicy::new(1),
            Arc::new(Limits::new(1024, 1024, 1024, 1024)),
            Arc::new(Metrics::new()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_limit_spaces_calls_evenly() {
        let limiter = RateLimiter::per_minute(1200).unwrap();
        let started = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // 20 per second: the fifth call waits for four intervals of 50 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert!(RateLimiter::per_minute(0).is_none());
    }

    #[tokio::test]
    async fn an_open_breaker_fails_fast_without_calling() {
        let guard = Guard::new(
            "web",
            CircuitBreaker::new(2, Duration::from_secs(30)),
            0,
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
            0,
            RetryPolicy::new(10),
            Arc::new(Limits::new(2, 1, 1, 1)),
            Arc::new(Metrics::new()),
        );
        let scope = CallScope {
            pool: Pool::Content,
            deadline: Some(Instant::now() + Duration::from_millis(50)),
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
        let limiter = RateLimiter::per_minute(600).unwrap(); // a turn every 100 ms
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
            600, // a turn every 100 ms
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
