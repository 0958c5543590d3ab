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

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dakota");
        let grpc_requests = Family::<MethodCode, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            grpc_requests.clone(),
        );
        let grpc_duration =
            Histograms::<Method>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to answer a gRPC request (for streams: to open the stream)",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let jobs_started = Counter::default();
        registry.register("jobs_started", "Jobs started", jobs_started.clone());
        let jobs_completed = Counter::default();
        registry.register(
            "jobs_completed",
            "Jobs that delivered their article",
            jobs_completed.clone(),
        );
        let jobs_failed = Family::<Code, Counter>::default();
        registry.register(
            "jobs_failed",
            "Jobs that failed, by gRPC code",
            jobs_failed.clone(),
        );
        let job_duration = job_seconds();
        registry.register_with_unit(
            "job_duration",
            "Job duration, start to end",
            Unit::Seconds,
            job_duration.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register(
            "jobs_running",
            "Jobs holding a job slot",
            jobs_running.clone(),
        );
        let jobs_retained_bytes = Family::<JobStateLabel, Gauge>::default();
        registry.register(
            "jobs_retained_bytes",
            "Bytes held by the event logs of the jobs kept in memory (approximate), by state",
            jobs_retained_bytes.clone(),
        );
        let jobs_retained = Family::<JobStateLabel, Gauge>::default();
        registry.register(
            "jobs_retained",
            "Jobs kept in memory, by state",
            jobs_retained.clone(),
        );
        let jobs_queued = Gauge::default();
        registry.register(
            "jobs_queued",
            "Jobs waiting for a job slot",
            jobs_queued.clone(),
        );
        let phase_duration =
            Histograms::<Phase>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register_with_unit(
            "phase_duration",
            "Phase duration",
            Unit::Seconds,
            phase_duration.clone(),
        );
        let agent_duration =
            Histograms::<AgentProvider>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register_with_unit(
            "agent_duration",
            "Agent run duration",
            Unit::Seconds,
            agent_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamOutcome, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream call attempts by outcome",
            upstream_requests.clone(),
        );
        let upstream_duration =
            Histograms::<Upstream>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register_with_unit(
            "upstream_request_duration",
            "Upstream call attempt duration",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_retries = Family::<Upstream, Counter>::default();
        registry.register(
            "upstream_retries",
            "Upstream call retries",
            upstream_retries.clone(),
        );
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "circuit_breaker_state",
            "1 for the current state of each upstream's circuit breaker",
            breaker_state.clone(),
        );
        let pool_in_use = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_in_use",
            "Upstream calls in flight by pool (global: all pools)",
            pool_in_use.clone(),
        );
        let pool_waiting = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_waiting",
            "Upstream calls waiting for a pool permit",
            pool_waiting.clone(),
        );
        let pool_size = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_size",
            "Pool sizes (global: the cap on upstream calls)",
            pool_size.clone(),
        );
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "llm_tokens",
            "LLM tokens by agent, model and kind (input, output)",
            llm_tokens.clone(),
        );
        let llm_cost = Family::<AgentModel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "llm_estimated_cost_usd",
            "Estimated LLM cost in USD from the price table",
            llm_cost.clone(),
        );
        Self {
            registry,
            grpc_requests,
            grpc_duration,
            jobs_started,
            jobs_completed,
            jobs_failed,
            job_duration,
            jobs_running,
            jobs_retained_bytes,
            jobs_retained,
            jobs_queued,
            phase_duration,
            agent_duration,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            breaker_state,
            pool_in_use,
            pool_waiting,
            pool_size,
            llm_tokens,
            llm_cost,
            agent_samples: Mutex::default(),
            kb_samples: Mutex::default(),
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
