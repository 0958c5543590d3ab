//! The admin HTTP port: liveness, readiness, health (summary and per component), Prometheus
//! metrics and recent latency quantiles. Scrapes are not logged.
use std::{sync::Arc, time::UNIX_EPOCH};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    fault::breaker::BreakerState,
    kb::KnowledgeSource,
    metrics::{BreakerLabels, JobStateLabel, PoolLabels, ProviderLabels, ThroughputLabels},
    resilience::Guard,
    service::AppState,
    upstream::llm::LlmClient,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router(state: Arc<AppState>) -> Router {
    // Details of upstreams and their errors: for holders of an API key, when keys are set.
    let details = Router::new()
        .route("/health/detailed", get(detailed))
        .route("/performance/agents", get(agents))
        .route("/performance/kb-search", get(kb_search))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(details)
        .with_state(state)
}

/// 401 without a valid `authorization: Bearer <key>` when API keys are configured.
async fn require_key(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let allowed = match &state.api_keys {
        None => true,
        Some(keys) => crate::auth::bearer(request.headers())
            .and_then(|key| keys.principal(key))
            .is_some(),
    };
    if allowed {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "an API key is required: authorization: Bearer <key>"})),
        )
            .into_response()
    }
}

fn llm_breaker_open(state: &AppState) -> bool {
    state.upstreams.llm.is_some()
        && state.upstreams.guards.llm.breaker.state() == BreakerState::Open
}

/// Why the server should not get traffic now, if it should not.
fn not_ready(state: &AppState) -> Option<&'static str> {
    if state.is_draining() {
        Some("draining")
    } else if state.ready.get().is_none() {
        Some("starting")
    } else if llm_breaker_open(state) {
        Some("llm circuit breaker open")
    } else {
        None
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match not_ready(&state) {
        None => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// `ok`, `degraded` (an optional dependency is down) or `unavailable` (jobs cannot succeed).
fn component_status(guard: &Guard, configured: bool) -> &'static str {
    match (configured, guard.breaker.state()) {
        (false, _) => "not_configured",
        (true, BreakerState::Open) => "down",
        (true, BreakerState::HalfOpen) => "recovering",
        (true, BreakerState::Closed) => "ok",
    }
}

/// What the provider's rate-limit headers last said is left (absent until one was seen).
fn provider_limits(guard: &Guard) -> Value {
    match guard.provider.seen() {
        (None, None) => Value::Null,
        (requests, tokens) => json!({"requests": requests, "tokens": tokens}),
    }
}

fn component(guard: &Guard, configured: bool, extra: Value) -> Value {
    let mut value = json!({
        "status": component_status(guard, configured),
        "breaker": guard.breaker.state().as_str(),
        "provider_limits": provider_limits(guard),
        "last_error": guard.last_error().map(|(message, at)| json!({
            "message": message,
            "at_unix": at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })),
    });
    if let (Some(map), Value::Object(extra)) = (value.as_object_mut(), extra) {
        map.extend(extra);
    }
    value
}

/// The LLM's pace per model (what call budgets are made from), what its server says of
/// itself, and its slots.
fn llm_details(client: &LlmClient, guard: &Guard) -> Value {
    let throughput: serde_json::Map<String, Value> = client
        .throughput
        .snapshot()
        .into_iter()
        .map(|(model, rates)| (model, json!(rates)))
        .collect();
    let props = client.known_props();
    json!({
        "provider": client.provider,
        "throughput": throughput,
        "context_tokens": props.context_tokens,
        "server_slots": props.slots,
        "slots": guard.slots().map(|(size, in_use)| json!({"size": size, "in_use": in_use})),
    })
}

fn detailed_json(state: &AppState) -> Value {
    let upstreams = &state.upstreams;
    let guards = &upstreams.guards;
    let kb = match state.ready.get().map(|r| &r.kb) {
        None => json!({"status": "starting"}),
        Some(KnowledgeSource::Local(kb)) => json!({
            "status": "ok", "kind": "local", "documents": kb.document_count(), "chunks": kb.chunk_count(),
        }),
        Some(KnowledgeSource::VectorStore(store)) => component(
            &guards.kb,
            true,
            json!({"kind": "openai-vector-store", "store_id": store.store_id}),
        ),
    };
    let llm = match &upstreams.llm {
        None => json!({"status": "offline", "provider": "offline (extractive agents)"}),
        Some(client) => component(&guards.llm, true, llm_details(client, &guards.llm)),
    };
    let web = component(
        &guards.web,
        upstreams.serper.is_some(),
        json!({"provider": "serper"}),
    );
    let fetch = component(&guards.fetch, true, json!({}));
    let breakers: serde_json::Map<String, Value> = guards
        .all()
        .iter()
        .map(|g| (g.upstream.to_string(), json!(g.breaker.state().as_str())))
        .collect();
    let pools: serde_json::Map<String, Value> = guards
        .limits
        .usage()
        .into_iter()
        .map(|(pool, in_use, size, waiting)| {
            (
                pool.to_string(),
                json!({"in_use": in_use, "size": size, "waiting": waiting}),
            )
        })
        .collect();
    let redis = match &upstreams.redis {
        None => {
            json!({"status": "not_configured", "note": "no REDIS_URL: cache and jobs are this replica's alone"})
        }
        Some(redis) => json!(redis.health()),
    };
    let (cache_entries, cache_bytes) = upstreams.cache.usage();
    let down = |v: &Value| matches!(v["status"].as_str(), Some("down" | "starting"));
    let status = if not_ready(state).is_some() || down(&llm) || down(&kb) {
        "unavailable"
    } else if down(&web) || down(&fetch) || redis["status"] == "degraded" {
        "degraded"
    } else {
        "ok"
    };
    json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": not_ready(state).is_none(),
        "not_ready_reason": not_ready(state),
        "components": {
            "llm": llm,
            "kb": kb,
            "web": web,
            "fetch": fetch,
            "redis": redis,
            "cache": {"entries": cache_entries, "bytes": cache_bytes},
            "breakers": breakers,
            "pools": pools,
            "jobs": {"running": state.runner.running_jobs(), "queued": state.runner.queued_jobs()},
        },
    })
}

fn status_code(health: &Value) -> StatusCode {
    if health["status"] == "unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let detailed = detailed_json(&state);
    let summary = json!({"status": detailed["status"], "ready": detailed["ready"], "version": detailed["version"]});
    (status_code(&detailed), Json(summary)).into_response()
}

async fn detailed(State(state): State<Arc<AppState>>) -> Response {
    let detailed = detailed_json(&state);
    (status_code(&detailed), Json(detailed)).into_response()
}

/// Gauges that are read off live state at scrape time.
fn refresh_gauges(state: &AppState) {
    let metrics = &state.metrics;
    metrics.jobs_running.set(state.runner.running_jobs() as i64);
    metrics.jobs_queued.set(state.runner.queued_jobs() as i64);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics
            .tokio_tasks
            .set(runtime.metrics().num_alive_tasks() as i64);
    }
    for (label, (jobs, bytes)) in ["running", "finished"]
        .into_iter()
        .zip(state.jobs.retained())
    {
        let labels = JobStateLabel { state: label };
        metrics
            .jobs_retained
            .get_or_create(&labels)
            .set(jobs as i64);
        metrics
            .jobs_retained_bytes
            .get_or_create(&labels)
            .set(bytes as i64);
    }
    for guard in state.upstreams.guards.all() {
        let current = guard.breaker.state();
        for breaker_state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            metrics
                .breaker_state
                .get_or_create(&BreakerLabels {
                    upstream: guard.upstream,
                    state: breaker_state.as_str(),
                })
                .set(i64::from(current == breaker_state));
        }
    }
    refresh_llm_gauges(state);
    for (pool, in_use, size, waiting) in state.upstreams.guards.limits.usage() {
        let labels = PoolLabels { pool };
        metrics
            .pool_in_use
            .get_or_create(&labels)
            .set(in_use as i64);
        metrics.pool_size.get_or_create(&labels).set(size as i64);
        metrics
            .pool_waiting
            .get_or_create(&labels)
            .set(waiting as i64);
    }
}

/// The LLM's measured pace per model, and each upstream's provider budget as last seen.
fn refresh_llm_gauges(state: &AppState) {
    let metrics = &state.metrics;
    if let Some(llm) = &state.upstreams.llm {
        for (model, rates) in llm.throughput.snapshot() {
            for (kind, rate) in [
                ("prompt", rates.prompt_tokens_per_second),
                ("generation", rates.generation_tokens_per_second),
            ] {
                if let Some(rate) = rate {
                    metrics
                        .llm_throughput
                        .get_or_create(&ThroughputLabels {
                            model: model.clone(),
                            kind,
                        })
                        .set(rate);
                }
            }
        }
    }
    for guard in state.upstreams.guards.all() {
        let (requests, tokens) = guard.provider.seen();
        for (kind, seen) in [("requests", requests), ("tokens", tokens)] {
            if let Some(seen) = seen {
                metrics
                    .provider_remaining
                    .get_or_create(&ProviderLabels {
                        upstream: guard.upstream,
                        kind,
                    })
                    .set(seen.remaining as i64);
            }
        }
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the Prometheus text format for
/// everything else (curl, promtool).
async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    refresh_gauges(&state);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS)],
            state.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            state.metrics.encode_prometheus_text(),
        )
            .into_response()
    }
}

async fn agents(State(state): State<Arc<AppState>>) -> Json<Value> {
    let agents: serde_json::Map<String, Value> = state
        .metrics
        .agent_performance()
        .into_iter()
        .map(|(agent, summary)| (agent.to_string(), json!(summary)))
        .collect();
    Json(json!({"window": "the most recent 1024 runs of each agent", "agents": agents}))
}

async fn kb_search(State(state): State<Arc<AppState>>) -> Json<Value> {
    let kb = state.ready.get().map(|r| r.kb.name());
    let breaker = match state.ready.get().map(|r| &r.kb) {
        Some(KnowledgeSource::VectorStore(_)) => {
            Some(state.upstreams.guards.kb.breaker.state().as_str())
        }
        _ => None,
    };
    Json(json!({
        "knowledge_base": kb,
        "latency": state.metrics.kb_search_performance(),
        "window": "the most recent 1024 batch searches",
        "cache_hit_ratio": state.metrics.cache_hit_ratio("kb"),
        "cache": match kb {
            Some("local") => "the local index is searched in the process, not cached",
            _ => "answers cached in the process and, with REDIS_URL, in Redis; the ratio counts every search since start",
        },
        "breaker": breaker,
    }))
}
