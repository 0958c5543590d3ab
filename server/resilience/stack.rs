//! The resilience stack of one upstream call, as tower layers assembled in [`Guard::stack`]:
//!
//! cache (when the call is cacheable: two levels and single-flight, [`crate::cache`]) ->
//! retry (backoff, `Retry-After`, the job's deadline) -> breaker fail-fast -> the pool of the
//! call's kind of work and the global cap -> the rate limit -> breaker admission and outcome
//! -> metrics -> the attempt's client span -> timeout -> the call.
//!
//! tower's own `Retry` and `Timeout` are used as they are. The breaker, the pools and the rate
//! limit are small layers of this module: the breaker's state must be readable by health and
//! metrics (and watched by `ContentService`'s health); the pool is chosen per call by its kind
//! of work and counts its waiters for `/health/detailed`; and the rate limit must take its
//! turn only when a call leaves the pool queue, so a burst after a long wait cannot exceed the
//! per-minute limit — no published layer does all of this.
use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU32, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, layer::layer_fn};
use tracing::Instrument;

use serde::{Serialize, de::DeserializeOwned};

use super::{CallScope, Guard, MAX_RETRY_AFTER};
use crate::{
    cache::{Key, Layer},
    fault::{UpstreamError, breaker::Admission},
    metrics,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The request every layer passes down: one attempt of the call.
#[derive(Debug, Clone, Copy)]
pub struct Attempt;

/// A call through the cache and the stack: its outcome, the attempts it made, and the cache
/// layer that answered it (`None`: the upstream did).
#[derive(Debug)]
pub struct Called<T> {
    pub result: Result<T, UpstreamError>,
    pub attempts: u32,
    pub cached: Option<Layer>,
}

impl<T> Called<T> {
    pub fn cache_hit(&self) -> bool {
        self.cached.is_some()
    }

    /// This one call, for an agent's [`Calls`].
    pub fn calls(&self) -> Calls {
        Calls::one(self.cache_hit())
    }
}

/// Upstream calls asked for (each counted once, however many attempts it took) and how many
/// of them the cache answered: an agent's `calls` and `cached_calls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub total: u32,
    pub cached: u32,
}

impl Calls {
    pub fn one(cached: bool) -> Self {
        Self {
            total: 1,
            cached: u32::from(cached),
        }
    }

    pub fn add(&mut self, other: Calls) {
        self.total = self.total.saturating_add(other.total);
        self.cached = self.cached.saturating_add(other.cached);
    }

    /// Every call answered by the cache; false when none was made (nothing was saved).
    pub fn all_cached(self) -> bool {
        self.total > 0 && self.cached == self.total
    }
}

impl std::iter::Sum for Calls {
    fn sum<I: Iterator<Item = Calls>>(iter: I) -> Self {
        iter.fold(Calls::default(), |mut sum, calls| {
            sum.add(calls);
            sum
        })
    }
}

impl Guard {
    /// The whole stack around `call`, each attempt in a client span from `span`. Returns the
    /// outcome and the attempts made.
    pub async fn call<T, F, Fut>(
        &self,
        scope: &CallScope,
        span: &Spans<'_>,
        call: F,
    ) -> (Result<T, UpstreamError>, u32)
    where
        F: Fn(u32) -> Fut + Sync,
        Fut: Future<Output = Result<T, UpstreamError>> + Send,
        T: Send,
    {
        self.call_with(scope, span, &|| true, call).await
    }

    /// [`Guard::call`], retrying a failed attempt only while `may_retry` says so (a stream
    /// that has reached the client cannot be asked again without repeating it).
    pub async fn call_with<T, F, Fut>(
        &self,
        scope: &CallScope,
        span: &Spans<'_>,
        may_retry: &(dyn Fn() -> bool + Sync),
        call: F,
    ) -> (Result<T, UpstreamError>, u32)
    where
        F: Fn(u32) -> Fut + Sync,
        Fut: Future<Output = Result<T, UpstreamError>> + Send,
        T: Send,
    {
        let attempts = AtomicU32::new(0);
        let attempt = |Attempt| {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            call(n)
        };
        let stack = self.stack(scope, span, may_retry, tower::service_fn(attempt));
        let result = stack.oneshot(Attempt).await;
        let attempts = attempts.load(Ordering::Relaxed).max(1);
        scope.count_call(false, attempts);
        (result, attempts)
    }

    /// [`Guard::call`] behind the cache: with a `key` (from [`Guard::cache_key`]) a cached
    /// answer is returned without a call, and identical calls in flight share one.
    pub async fn cached<T, F, Fut>(
        &self,
        scope: &CallScope,
        key: Option<Key>,
        span: &Spans<'_>,
        call: F,
    ) -> Called<T>
    where
        F: Fn(u32) -> Fut + Sync,
        Fut: Future<Output = Result<T, UpstreamError>> + Send,
        T: Serialize + DeserializeOwned + Send,
    {
        let (Some(key), Some((cache, _))) = (key, self.cache.as_ref()) else {
            let (result, attempts) = self.call(scope, span, call).await;
            return Called {
                result,
                attempts,
                cached: None,
            };
        };
        let attempts = AtomicU32::new(0);
        let attempt = |Attempt| {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            call(n)
        };
        // The cache wraps the stack as a function, not as a `tower::Layer`: a boxed layer
        // future over this stack trips rustc's higher-ranked `Send` inference in the agents'
        // futures (rust-lang/rust#102211), so the lookup awaits the stack's own future.
        let stack = self.stack(scope, span, &|| true, tower::service_fn(attempt));
        let (result, cached) = cache.get_or_load(&key, stack.oneshot(Attempt)).await;
        let attempts = attempts.load(Ordering::Relaxed);
        scope.count_call(cached.is_some(), attempts);
        Called {
            result,
            attempts,
            cached,
        }
    }

    /// The layers every upstream call goes through, outermost first.
    fn stack<'a, S, T>(
        &'a self,
        scope: &'a CallScope,
        span: &'a Spans<'a>,
        may_retry: &'a (dyn Fn() -> bool + Sync),
        call: S,
    ) -> impl Service<Attempt, Response = T, Error = UpstreamError, Future: Send> + Clone + Send + 'a
    where
        S: Service<Attempt, Response = T, Error = UpstreamError> + Clone + Send + 'a,
        S::Future: Send + 'a,
        T: Send + 'a,
    {
        let upstream = self.upstream;
        let timeout = self.timeout;
        ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(Backoff {
                guard: self,
                scope,
                may_retry,
                attempt: 0,
            }))
            .layer(layer_fn(Step::FailFast.layer(self, scope)))
            .layer(layer_fn(Step::Pools.layer(self, scope)))
            .layer(layer_fn(Step::RateLimit.layer(self, scope)))
            .layer(layer_fn(Step::Breaker.layer(self, scope)))
            .layer(layer_fn(Step::Metrics.layer(self, scope)))
            .layer(layer_fn(move |inner| Traced { span, inner }))
            .map_err(
                move |error: tower::BoxError| match error.downcast::<UpstreamError>() {
                    Ok(error) => *error,
                    Err(_) => UpstreamError::Timeout {
                        upstream,
                        after: timeout,
                    },
                },
            )
            .layer(tower::timeout::TimeoutLayer::new(timeout))
            .service(call)
    }
}

/// tower's retry policy for upstream calls: retryable failures only, exponential backoff
/// with jitter never shorter than a `Retry-After` (nor longer than [`MAX_RETRY_AFTER`]),
/// at most the guard's attempts, and never past the job's deadline.
#[derive(Clone)]
struct Backoff<'a> {
    guard: &'a Guard,
    scope: &'a CallScope,
    may_retry: &'a (dyn Fn() -> bool + Sync),
    attempt: u32,
}

impl<T> tower::retry::Policy<Attempt, T, UpstreamError> for Backoff<'_> {
    type Future = Pin<Box<tokio::time::Sleep>>;

    fn retry(
        &mut self,
        _: &mut Attempt,
        result: &mut Result<T, UpstreamError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        self.attempt += 1;
        if !(self.may_retry)() {
            return None;
        }
        let delay = self.guard.backoff(self.attempt, error, self.scope)?;
        tracing::warn!(upstream = self.guard.upstream, attempt = self.attempt, ?delay, %error, "retrying");
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, request: &Attempt) -> Option<Attempt> {
        Some(*request)
    }
}

impl Guard {
    /// The wait before the next attempt, or `None` when the deadline leaves no room for it or
    /// the upstream asks for a wait longer than [`MAX_RETRY_AFTER`].
    pub fn backoff(
        &self,
        attempt: u32,
        error: &UpstreamError,
        scope: &CallScope,
    ) -> Option<Duration> {
        if !error.retryable() || attempt >= self.retry.max_attempts {
            return None;
        }
        if error
            .retry_after()
            .is_some_and(|asked| asked > MAX_RETRY_AFTER)
        {
            return None;
        }
        let delay = self.retry.delay(attempt, error);
        if let Some(deadline) = scope.deadline
            && Instant::now()
                .checked_add(delay)
                .is_none_or(|at| at >= deadline)
        {
            return None;
        }
        self.metrics
            .upstream_retries
            .get_or_create(&metrics::Upstream {
                upstream: self.upstream,
            })
            .inc();
        Some(delay)
    }
}

/// The stack's own steps, in the order they wrap the call.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// An open breaker fails the call at once, before it waits for anything.
    FailFast,
    /// A permit of the pool of the call's kind of work, then of the global cap, held for the
    /// whole call (a stream included).
    Pools,
    /// The upstream's requests-per-minute limit: a call takes its turn when it leaves the
    /// pool queue, so calls that waited there do not go out in a burst. Then the provider's
    /// own budget, as its last answer's headers gave it.
    RateLimit,
    /// The breaker's admission right before the call (it may have opened while the call
    /// waited; after a cool-down exactly one trial goes through) and the outcome recorded
    /// with it. A call dropped midway (its job cancelled) tells the breaker nothing.
    Breaker,
    /// The attempt counted by outcome and timed from here: waiting for limits is not the
    /// upstream's time.
    Metrics,
}

impl Step {
    fn layer<'a, S>(self, guard: &'a Guard, scope: &'a CallScope) -> impl Fn(S) -> Layered<'a, S> {
        move |inner| Layered {
            step: self,
            guard,
            scope,
            inner,
        }
    }
}

/// A [`Step`] around the inner service.
#[derive(Clone)]
struct Layered<'a, S> {
    step: Step,
    guard: &'a Guard,
    scope: &'a CallScope,
    inner: S,
}

impl<'a, S, T> Service<Attempt> for Layered<'a, S>
where
    S: Service<Attempt, Response = T, Error = UpstreamError> + Clone + Send + 'a,
    S::Future: Send + 'a,
{
    type Response = T;
    type Error = UpstreamError;
    type Future = BoxFuture<'a, Result<T, UpstreamError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let (step, guard, pool, inner) =
            (self.step, self.guard, self.scope.pool, self.inner.clone());
        Box::pin(async move {
            match step {
                Step::FailFast => {
                    if let Some(retry_after) = guard.breaker.rejects() {
                        return guard.refused(retry_after);
                    }
                    inner.oneshot(attempt).await
                }
                Step::Pools => {
                    let closed = |_| UpstreamError::Refused {
                        upstream: guard.upstream,
                        message: "limits closed".into(),
                    };
                    // The upstream's own slots first: a call waiting for the model holds
                    // no permit other upstreams' calls need.
                    let _slot = match guard.slot_permits() {
                        Some(slots) => Some(slots.clone().acquire_owned().await.map_err(|_| {
                            UpstreamError::Refused {
                                upstream: guard.upstream,
                                message: "slots closed".into(),
                            }
                        })?),
                        None => None,
                    };
                    let limits = &guard.limits;
                    let _pool = limits
                        .acquire(limits.pool(pool), pool as usize + 1)
                        .await
                        .map_err(closed)?;
                    let _global = limits.acquire(&limits.global, 0).await.map_err(closed)?;
                    inner.oneshot(attempt).await
                }
                Step::RateLimit => {
                    if let Some(rate) = &guard.rate {
                        rate.acquire().await;
                    }
                    let _paced = guard.provider.pace().await;
                    inner.oneshot(attempt).await
                }
                Step::Breaker => {
                    if let Admission::Rejected(retry_after) = guard.breaker.admit() {
                        return guard.refused(retry_after);
                    }
                    let trial = Trial(Some(guard), Instant::now());
                    let result = inner.oneshot(attempt).await;
                    trial.finish(&result);
                    result
                }
                Step::Metrics => {
                    let started = Instant::now();
                    let result = inner.oneshot(attempt).await;
                    guard.observe(&result, started.elapsed());
                    result
                }
            }
        })
    }
}

/// Makes the client span of one attempt (`http.request.method`, `url.template`, and the
/// GenAI attributes for chat calls); the attempt records its response status into it.
pub type Spans<'a> = dyn Fn() -> tracing::Span + Sync + 'a;

/// The innermost layer: each attempt runs in its own client span, the timeout included, so
/// a span ends when its attempt does.
#[derive(Clone)]
struct Traced<'a, S> {
    span: &'a Spans<'a>,
    inner: S,
}

impl<'a, S> Service<Attempt> for Traced<'a, S>
where
    S: Service<Attempt> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<tower::util::Oneshot<S, Attempt>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        self.inner
            .clone()
            .oneshot(attempt)
            .instrument((self.span)())
    }
}

impl Guard {
    /// A call the open breaker refused, counted as such.
    fn refused<T>(&self, retry_after: Duration) -> Result<T, UpstreamError> {
        let refused = Err(self.breaker_open(retry_after));
        self.observe(&refused, Duration::ZERO);
        refused
    }
}

/// An admitted call's breaker bookkeeping: its outcome, or nothing learned if dropped; and
/// when it began, to tell a slow upstream (heard from since) from a silent one.
struct Trial<'a>(Option<&'a Guard>, Instant);

impl Trial<'_> {
    fn finish<T>(mut self, result: &Result<T, UpstreamError>) {
        if let Some(guard) = self.0.take() {
            let verdict = super::health(result, guard.liveness.heard_since(self.1));
            if verdict == Some(true) {
                guard.liveness.heard();
            }
            guard.breaker.record(verdict);
        }
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            guard.breaker.record(None);
        }
    }
}
