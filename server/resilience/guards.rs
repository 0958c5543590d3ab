//! The guard of each upstream from configuration: timeouts, body limits, cache TTLs and rate
//! limits per upstream, over one set of concurrency limits.
use std::{sync::Arc, time::Duration};

use super::*;
use crate::domain::Upstream;

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
        let bursts = per_upstream(
            &config.rate_bursts,
            "--rate-bursts",
            "a number of requests",
            [("llm", 0), ("kb", 0), ("web", 0), ("fetch", 0)],
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
                    rate_of(upstream, &rpm, &bursts),
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
            // The LLM client budgets each call itself (from its size and the model's pace);
            // the stack's own limit is only a backstop past any budget.
            llm: guard(
                Upstream::Llm.as_str(),
                config
                    .llm_timeout
                    .map_or(LLM_BACKSTOP, |fixed| fixed + Duration::from_secs(5)),
            ),
            kb: guard(Upstream::Kb.as_str(), config.kb_timeout),
            web: guard(Upstream::Web.as_str(), config.web_timeout),
            fetch: guard(Upstream::Fetch.as_str(), config.fetch_timeout),
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
        if Upstream::named(upstream).is_none() {
            let names: Vec<&str> = Upstream::ALL.iter().map(|u| u.as_str()).collect();
            return Err(format!(
                "{flag} names `{upstream}`; upstreams are {}",
                names.join(", ")
            ));
        }
        let parsed =
            parse(value).ok_or_else(|| format!("{flag} {upstream}={value}: not {expected}"))?;
        values.insert(upstream.clone(), parsed);
    }
    Ok(values)
}

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
/// An upstream's requests per minute and burst: the burst as configured, else about one
/// second's worth (so a job's parallel calls go out together), at least 1.
fn rate_of(
    upstream: &str,
    rpm: &std::collections::HashMap<String, u32>,
    bursts: &std::collections::HashMap<String, u32>,
) -> (u32, u32) {
    let rpm = rpm.get(upstream).copied().unwrap_or(0);
    let burst = match bursts.get(upstream).copied().unwrap_or(0) {
        0 => rpm.div_ceil(60),
        burst => burst,
    };
    (rpm, burst.max(1))
}

/// The stack's limit on one LLM attempt when `--llm-timeout` sets none: past any budget a
/// call could be given, so the client's budget decides.
const LLM_BACKSTOP: Duration = Duration::from_secs(6 * 3600);

/// Requests per minute per upstream unless `--rate-limits` says otherwise.
const DEFAULT_RPM: [(&str, u32); 4] = [("llm", 600), ("kb", 1200), ("web", 300), ("fetch", 600)];
