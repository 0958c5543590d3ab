//! Prometheus metrics (OpenMetrics text at `/metrics` on the admin port) and the recent-latency
//! samples behind `/performance/*`. Labels are low-cardinality only: SPEC names, codes, outcomes.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, atomic::AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: &'static str,
    pub code: &'static str,
}

/// A cache lookup: `layer` is `memory` or `redis`, `result` is `hit` or `miss`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub layer: &'static str,
    pub upstream: &'static str,
    pub result: &'static str,
}

/// A Redis operation (`get`, `set`, `lock`, `xadd`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisOp {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Phase {
    pub phase: &'static str,
}

/// `running` or `finished`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentProvider {
    pub agent: &'static str,
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Upstream {
    pub upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOutcome {
    pub upstream: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    pub upstream: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub agent: &'static str,
    pub model: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub upstream: &'static str,
    /// `requests` or `tokens`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThroughputLabels {
    pub model: String,
    /// `prompt` (reading) or `generation`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentModel {
    pub agent: &'static str,
    pub model: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 5 ms to about 80 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Seconds, from 100 ms to about 27 min (whole jobs).
fn job_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// Latency samples kept per series for `/performance/*` quantiles.
const SAMPLES: usize = 1024;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram family in seconds, with the buckets of [`seconds`].
fn seconds_family<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Histograms::new_with_constructor(seconds as fn() -> Histogram)
}

/// Registers `metric` under `name` and gives it back.
fn counted<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Registers `metric`, in seconds, under `name` and gives it back.
fn timed<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// Declares each registered metric once: its field, its type, and its registration:
/// `counted` (no unit) or `timed` (seconds), its name under the `dakota_` prefix, its help, and
/// its initial value when not the default.
macro_rules! registered_metrics {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $register:ident($name:literal, $help:literal $(, $init:expr)?),)*) => {
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $ty,)*
            /// Recent agent run durations, by agent, in seconds.
            agent_samples: Mutex<HashMap<&'static str, VecDeque<f64>>>,
            /// Recent knowledge-base search durations, in seconds.
            kb_samples: Mutex<VecDeque<f64>>,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut r = Registry::with_prefix("dakota");
                $(let $field: $ty = $register(&mut r, $name, $help, registered_metrics!(@init $($init)?));)*
                let metrics = Self {
                    registry: r,
                    $($field,)*
                    agent_samples: Mutex::default(),
                    kb_samples: Mutex::default(),
                };
                // Up until an operation fails, and always when Redis is not configured.
                metrics.redis_up.set(1);
                metrics.zero_alerted_series();
                metrics
            }
        }
    };
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
}

registered_metrics! {
    grpc_requests: Family<MethodCode, Counter> = counted("grpc_requests", "gRPC requests by method and status code"),
    grpc_duration: Histograms<Method> = timed("grpc_request_duration", "Time from a gRPC request to the end of its response (for streams, the last message)", seconds_family()),
    jobs_started: Counter = counted("jobs_started", "Jobs started"),
    jobs_completed: Counter = counted("jobs_completed", "Jobs that delivered their article"),
    jobs_failed: Family<Code, Counter> = counted("jobs_failed", "Jobs that failed, by gRPC code"),
    job_duration: Histogram = timed("job_duration", "Job duration, start to end", job_seconds()),
    jobs_running: Gauge = counted("jobs_running", "Jobs holding a job slot"),
    /// Bytes the job logs in memory hold, and the jobs they belong to, by state.
    jobs_retained_bytes: Family<JobStateLabel, Gauge> = counted("jobs_retained_bytes", "Bytes held by the event logs of the jobs kept in memory (approximate), by state"),
    jobs_retained: Family<JobStateLabel, Gauge> = counted("jobs_retained", "Jobs kept in memory, by state"),
    jobs_queued: Gauge = counted("jobs_queued", "Jobs waiting for a job slot"),
    phase_duration: Histograms<Phase> = timed("phase_duration", "Phase duration", seconds_family()),
    agent_duration: Histograms<AgentProvider> = timed("agent_duration", "Agent run duration", seconds_family()),
    upstream_requests: Family<UpstreamOutcome, Counter> = counted("upstream_requests", "Upstream call attempts by outcome"),
    upstream_duration: Histograms<Upstream> = timed("upstream_request_duration", "Upstream call attempt duration", seconds_family()),
    upstream_retries: Family<Upstream, Counter> = counted("upstream_retries", "Upstream call retries"),
    breaker_state: Family<BreakerLabels, Gauge> = counted("circuit_breaker_state", "1 for the current state of each upstream's circuit breaker"),
    pool_in_use: Family<PoolLabels, Gauge> = counted("pool_in_use", "Upstream calls in flight by pool (global: all pools)"),
    pool_waiting: Family<PoolLabels, Gauge> = counted("pool_waiting", "Upstream calls waiting for a pool permit"),
    pool_size: Family<PoolLabels, Gauge> = counted("pool_size", "Pool sizes (global: the cap on upstream calls)"),
    llm_tokens: Family<TokenLabels, Counter> = counted("llm_tokens", "LLM tokens by agent, model and kind (input, output)"),
    /// What the provider's `x-ratelimit-remaining-*` headers last said, less calls sent since.
    provider_remaining: Family<ProviderLabels, Gauge> = counted("upstream_ratelimit_remaining", "What the provider's x-ratelimit-remaining-requests and -tokens headers last said is left of its budget (less calls sent since), by upstream and kind; calls slow down as it runs low"),
    /// The running estimate each LLM call's time budget is made from.
    llm_throughput: Family<ThroughputLabels, Gauge<f64, AtomicU64>> = counted("llm_tokens_per_second", "The pace each LLM model has shown, in tokens a second, reading prompts (prompt) and writing answers (generation): a running estimate over its recent calls"),
    llm_cost: Family<AgentModel, Counter<f64, AtomicU64>> = counted("llm_estimated_cost_usd", "Estimated LLM cost in USD from the price table"),
    cache_requests: Family<CacheLabels, Counter> = counted("cache_requests", "Cache lookups by layer (memory, redis), upstream and result (hit, miss)"),
    /// Calls that waited for an identical call in flight instead of making their own.
    cache_coalesced: Family<Upstream, Counter> = counted("cache_coalesced", "Upstream calls saved by waiting for an identical call in flight (single-flight)"),
    /// Tasks alive in the async runtime, read at scrape time: a leak shows as steady growth.
    tokio_tasks: Gauge = counted("tokio_tasks_alive", "Tasks alive in the server's async runtime"),
    /// 1 while Redis answers (or is not configured), 0 while the server runs without it.
    redis_up: Gauge = counted("redis_up", "1 while Redis answers or is not configured; 0 while the server runs on its in-process cache and memory alone"),
    redis_errors: Family<RedisOp, Counter> = counted("redis_errors", "Redis operations that failed, timed out or were skipped by its open breaker, by operation"),
}

/// The ContentService methods, and the codes the alerts and dashboards divide by: a series
/// only exists once it moved, so each is made at zero up front (else a ratio has no data, and
/// `rate()` misses the first failure of each code).
const ALERTED_METHODS: [&str; 5] = [
    "Generate",
    "WatchJob",
    "GetArticle",
    "CancelJob",
    "SearchKnowledgeBase",
];
const ALERTED_RPC_CODES: [tonic::Code; 5] = [
    tonic::Code::Ok,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DeadlineExceeded,
    tonic::Code::ResourceExhausted,
];
/// The codes a job can fail with.
const JOB_FAILURE_CODES: [tonic::Code; 6] = [
    tonic::Code::Cancelled,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Unavailable,
    tonic::Code::Internal,
    tonic::Code::FailedPrecondition,
    tonic::Code::ResourceExhausted,
];

impl Metrics {
    fn zero_alerted_series(&self) {
        for method in ALERTED_METHODS {
            for code in ALERTED_RPC_CODES {
                let _ = self.grpc_requests.get_or_create(&MethodCode {
                    method,
                    code: dakota::output::code_name(code),
                });
            }
        }
        for code in JOB_FAILURE_CODES {
            let _ = self.jobs_failed.get_or_create(&Code {
                code: dakota::output::code_name(code),
            });
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The registry in the Prometheus text format (0.0.4), for scrapers that do not ask for
    /// OpenMetrics: counter families are named with their `_total` suffix, no `# UNIT`/`# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    pub fn observe_grpc(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.grpc_requests
            .get_or_create(&MethodCode {
                method,
                code: dakota::output::code_name(code),
            })
            .inc();
        self.grpc_duration
            .get_or_create(&Method { method })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_agent(&self, agent: &'static str, provider: &str, elapsed: Duration) {
        self.agent_duration
            .get_or_create(&AgentProvider {
                agent,
                provider: provider.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        push(
            lock(&self.agent_samples).entry(agent).or_default(),
            elapsed.as_secs_f64(),
        );
    }

    pub fn observe_kb_search(&self, elapsed: Duration) {
        push(&mut lock(&self.kb_samples), elapsed.as_secs_f64());
    }

    /// Count, mean and quantiles (ms) of the recent runs of each agent.
    pub fn agent_performance(&self) -> Vec<(&'static str, Summary)> {
        let samples = lock(&self.agent_samples);
        let mut agents: Vec<(&'static str, Summary)> =
            samples.iter().map(|(a, s)| (*a, Summary::of(s))).collect();
        agents.sort_by_key(|(a, _)| *a);
        agents
    }

    /// Of the lookups of `upstream`'s answers since start, the share answered by a cache
    /// level; `None` before the first.
    pub fn cache_hit_ratio(&self, upstream: &'static str) -> Option<f64> {
        let count = |layer, result| {
            self.cache_requests
                .get(&CacheLabels {
                    layer,
                    upstream,
                    result,
                })
                .map_or(0, |c| c.get())
        };
        let lookups = count("memory", "hit") + count("memory", "miss");
        let hits = count("memory", "hit") + count("redis", "hit");
        (lookups > 0).then(|| hits as f64 / lookups as f64)
    }

    pub fn kb_search_performance(&self) -> Summary {
        Summary::of(&lock(&self.kb_samples))
    }
}

fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

fn push(samples: &mut VecDeque<f64>, value: f64) {
    if samples.len() == SAMPLES {
        samples.pop_front();
    }
    samples.push_back(value);
}

/// Latency of recent samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    pub samples: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn of(samples: &VecDeque<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted: Vec<f64> = samples.iter().map(|s| s * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let round = |v: f64| (v * 100.0).round() / 100.0;
        Self {
            samples: sorted.len(),
            mean_ms: round(sorted.iter().sum::<f64>() / sorted.len() as f64),
            p50_ms: round(pick(0.5)),
            p95_ms: round(pick(0.95)),
            p99_ms: round(pick(0.99)),
            max_ms: round(sorted[sorted.len() - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_samples() {
        let metrics = Metrics::new();
        for ms in 1..=100 {
            metrics.observe_agent("content_writer", "offline", Duration::from_millis(ms));
        }
        let (agent, summary) = metrics.agent_performance()[0];
        assert_eq!(agent, "content_writer");
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_ms, 51.0);
        assert_eq!(summary.p95_ms, 95.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(metrics.kb_search_performance().samples, 0);
        let text = metrics.encode();
        assert!(text.contains("dakota_agent_duration_seconds_count{agent=\"content_writer\",provider=\"offline\"} 100"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        metrics.jobs_started.inc();
        let prometheus = metrics.encode_prometheus_text();
        assert!(
            prometheus.contains(
                "# TYPE dakota_jobs_started_total counter\ndakota_jobs_started_total 1\n"
            ),
            "{prometheus}"
        );
        assert!(!prometheus.contains("# EOF") && !prometheus.contains("# UNIT"));
    }
}
