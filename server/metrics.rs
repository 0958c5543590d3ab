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

pub struct Metrics {
    registry: Registry,
    pub grpc_requests: Family<MethodCode, Counter>,
    pub grpc_duration: Histograms<Method>,
    pub jobs_started: Counter,
    pub jobs_completed: Counter,
    pub jobs_failed: Family<Code, Counter>,
    pub job_duration: Histogram,
    pub jobs_running: Gauge,
    /// Bytes the job logs in memory hold, and the jobs they belong to, by state.
    pub jobs_retained_bytes: Family<JobStateLabel, Gauge>,
    pub jobs_retained: Family<JobStateLabel, Gauge>,
    pub jobs_queued: Gauge,
    pub phase_duration: Histograms<Phase>,
    pub agent_duration: Histograms<AgentProvider>,
    pub upstream_requests: Family<UpstreamOutcome, Counter>,
    pub upstream_duration: Histograms<Upstream>,
    pub upstream_retries: Family<Upstream, Counter>,
    pub breaker_state: Family<BreakerLabels, Gauge>,
    pub pool_in_use: Family<PoolLabels, Gauge>,
    pub pool_waiting: Family<PoolLabels, Gauge>,
    pub pool_size: Family<PoolLabels, Gauge>,
    pub llm_tokens: Family<TokenLabels, Counter>,
    pub llm_cost: Family<AgentModel, Counter<f64, AtomicU64>>,
    pub cache_requests: Family<CacheLabels, Counter>,
    /// Calls that waited for an identical call in flight instead of making their own.
    pub cache_coalesced: Family<Upstream, Counter>,
    /// Tasks alive in the async runtime, read at scrape time: a leak shows as steady growth.
    pub tokio_tasks: Gauge,
    /// 1 while Redis answers (or is not configured), 0 while the server runs without it.
    pub redis_up: Gauge,
    pub redis_errors: Family<RedisOp, Counter>,
    /// Recent agent run durations, by agent, in seconds.
    agent_samples: Mutex<HashMap<&'static str, VecDeque<f64>>>,
    /// Recent knowledge-base search durations, in seconds.
    kb_samples: Mutex<VecDeque<f64>>,
}

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

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("dakota");
        Self {
            grpc_requests: counted(
                &mut r,
                "grpc_requests",
                "gRPC requests by method and status code",
                Family::default(),
            ),
            grpc_duration: timed(
                &mut r,
                "grpc_request_duration",
                "Time from a gRPC request to the end of its response (for streams, the last message)",
                seconds_family(),
            ),
            jobs_started: counted(&mut r, "jobs_started", "Jobs started", Counter::default()),
            jobs_completed: counted(
                &mut r,
                "jobs_completed",
                "Jobs that delivered their article",
                Counter::default(),
            ),
            jobs_failed: counted(
                &mut r,
                "jobs_failed",
                "Jobs that failed, by gRPC code",
                Family::default(),
            ),
            job_duration: timed(
                &mut r,
                "job_duration",
                "Job duration, start to end",
                job_seconds(),
            ),
            jobs_running: counted(
                &mut r,
                "jobs_running",
                "Jobs holding a job slot",
                Gauge::default(),
            ),
            jobs_retained_bytes: counted(
                &mut r,
                "jobs_retained_bytes",
                "Bytes held by the event logs of the jobs kept in memory (approximate), by state",
                Family::default(),
            ),
            jobs_retained: counted(
                &mut r,
                "jobs_retained",
                "Jobs kept in memory, by state",
                Family::default(),
            ),
            jobs_queued: counted(
                &mut r,
                "jobs_queued",
                "Jobs waiting for a job slot",
                Gauge::default(),
            ),
            phase_duration: timed(&mut r, "phase_duration", "Phase duration", seconds_family()),
            agent_duration: timed(
                &mut r,
                "agent_duration",
                "Agent run duration",
                seconds_family(),
            ),
            upstream_requests: counted(
                &mut r,
                "upstream_requests",
                "Upstream call attempts by outcome",
                Family::default(),
            ),
            upstream_duration: timed(
                &mut r,
                "upstream_request_duration",
                "Upstream call attempt duration",
                seconds_family(),
            ),
            upstream_retries: counted(
                &mut r,
                "upstream_retries",
                "Upstream call retries",
                Family::default(),
            ),
            breaker_state: counted(
                &mut r,
                "circuit_breaker_state",
                "1 for the current state of each upstream's circuit breaker",
                Family::default(),
            ),
            pool_in_use: counted(
                &mut r,
                "pool_in_use",
                "Upstream calls in flight by pool (global: all pools)",
                Family::default(),
            ),
            pool_waiting: counted(
                &mut r,
                "pool_waiting",
                "Upstream calls waiting for a pool permit",
                Family::default(),
            ),
            pool_size: counted(
                &mut r,
                "pool_size",
                "Pool sizes (global: the cap on upstream calls)",
                Family::default(),
            ),
            llm_tokens: counted(
                &mut r,
                "llm_tokens",
                "LLM tokens by agent, model and kind (input, output)",
                Family::default(),
            ),
            llm_cost: counted(
                &mut r,
                "llm_estimated_cost_usd",
                "Estimated LLM cost in USD from the price table",
                Family::default(),
            ),
            cache_requests: counted(
                &mut r,
                "cache_requests",
                "Cache lookups by layer (memory, redis), upstream and result (hit, miss)",
                Family::default(),
            ),
            cache_coalesced: counted(
                &mut r,
                "cache_coalesced",
                "Upstream calls saved by waiting for an identical call in flight (single-flight)",
                Family::default(),
            ),
            tokio_tasks: counted(
                &mut r,
                "tokio_tasks_alive",
                "Tasks alive in the server's async runtime",
                Gauge::default(),
            ),
            redis_up: {
                let up = counted(
                    &mut r,
                    "redis_up",
                    "1 while Redis answers or is not configured; 0 while the server runs on its in-process cache and memory alone",
                    Gauge::default(),
                );
                up.set(1);
                up
            },
            redis_errors: counted(
                &mut r,
                "redis_errors",
                "Redis operations that failed, timed out or were skipped by its open breaker, by operation",
                Family::default(),
            ),
            agent_samples: Mutex::default(),
            kb_samples: Mutex::default(),
            registry: r,
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
