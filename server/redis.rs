//! The shared Redis of a fleet of replicas (`REDIS_URL`): the second cache level, the jobs any
//! replica can serve, the rate limits counted across replicas.
//!
//! Redis is never a single point of failure: every operation is bounded by `--redis-timeout`,
//! goes through a circuit breaker like every other upstream, and answers `None` when Redis is
//! down, slow or refusing, so each caller falls back to what the process has alone. The
//! connection manager reconnects by itself; the breaker's half-open trial finds out when Redis
//! answers again. The transitions are logged once each, counted in `dakota_redis_up` and
//! shown in `/health/detailed`.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{
    fault::breaker::{Admission, CircuitBreaker},
    lock,
    metrics::{Metrics, RedisOp},
};

/// Consecutive failures that open the breaker, and how long it stays open before a trial.
const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(2);

/// Every key this service writes starts with this: namespaced and versioned, so a change of
/// format never reads an old entry.
pub const PREFIX: &str = "dakota:v1";

pub struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    timeout: Duration,
    breaker: CircuitBreaker,
    /// Whether the latest operation succeeded; transitions are logged once.
    up: AtomicBool,
    last_error: std::sync::Mutex<Option<(String, SystemTime)>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Redis state for `/health/detailed`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisHealth {
    pub status: &'static str,
    pub breaker: &'static str,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl Redis {
    /// A client of the Redis at `url`. Only the URL is checked here: the connection is made on
    /// first use and remade whenever it breaks, so a server starts while Redis is down.
    pub fn connect(url: &str, timeout: Duration, metrics: Arc<Metrics>) -> Result<Self, String> {
        // The error text never carries the URL: it may hold a password.
        let client = redis::Client::open(url).map_err(|e| {
            format!(
                "--redis-url / REDIS_URL is not a Redis URL ({}); expected redis://[:password@]host:port[/db] or rediss://...",
                e.kind_name_or_category()
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("Redis client: {}", e.kind_name_or_category()))?;
        metrics.redis_up.set(1);
        Ok(Self {
            client,
            manager,
            timeout,
            breaker: CircuitBreaker::new(BREAKER_THRESHOLD, BREAKER_COOL_DOWN),
            up: AtomicBool::new(true),
            last_error: Default::default(),
            metrics,
        })
    }

    /// The key `dakota:v1:<kind>:<name>`.
    pub fn key(kind: &str, name: &str) -> String {
        format!("{PREFIX}:{kind}:{name}")
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How long one operation may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection of its own, for a blocking read (`XREAD BLOCK`) that would hold up every
    /// other command on the shared multiplexed one: its replies may take `block` longer than
    /// the timeout. `None` when Redis does not answer (the breaker is not consulted: the
    /// caller retries at its own pace).
    pub async fn dedicated(&self, block: Duration) -> Option<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout + block));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        tokio::time::timeout(self.timeout, connect).await.ok()?.ok()
    }

    pub fn health(&self) -> RedisHealth {
        let last = lock(&self.last_error).clone();
        RedisHealth {
            status: if self.is_up() { "ok" } else { "degraded" },
            breaker: self.breaker.state().as_str(),
            last_error: last.as_ref().map(|(e, _)| e.clone()),
            last_error_at: last.map(|(_, at)| humantime::format_rfc3339_seconds(at).to_string()),
        }
    }

    /// Runs one operation (a command or a pipeline) on a connection, bounded by the timeout
    /// and the breaker. `None` when Redis did not answer: the caller goes on without it.
    pub async fn run<T, F, Fut>(&self, op: &'static str, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if let Admission::Rejected(_) = self.breaker.admit() {
            self.metrics
                .redis_errors
                .get_or_create(&RedisOp { op })
                .inc();
            return None;
        }
        let outcome = tokio::time::timeout(self.timeout, command(self.manager.clone())).await;
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.record(Some(true));
                self.mark_up();
                Some(value)
            }
            Ok(Err(error)) => {
                // A command Redis refused (a wrong type, OOM) is an answer: Redis is up.
                let refused = matches!(error.kind(), redis::ErrorKind::Server(_));
                self.failed(
                    op,
                    format!("{op}: {}", error.kind_name_or_category()),
                    !refused,
                );
                None
            }
            Err(_) => {
                self.failed(
                    op,
                    format!("{op}: no answer within {:?}", self.timeout),
                    true,
                );
                None
            }
        }
    }

    fn failed(&self, op: &'static str, message: String, unhealthy: bool) {
        self.breaker.record(Some(!unhealthy));
        self.metrics
            .redis_errors
            .get_or_create(&RedisOp { op })
            .inc();
        *lock(&self.last_error) = Some((message.clone(), SystemTime::now()));
        if unhealthy && self.up.swap(false, Ordering::Relaxed) {
            self.metrics.redis_up.set(0);
            tracing::warn!(error = %message, "Redis unavailable: going on with the in-process cache and job store until it answers");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.redis_up.set(1);
            tracing::info!("Redis answers again: shared cache and jobs resumed");
        }
    }
}

/// What an error's kind is called, without its detail (which may echo a URL or a value).
trait KindName {
    fn kind_name_or_category(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name_or_category(&self) -> String {
        format!("{:?}", self.kind())
    }
}
