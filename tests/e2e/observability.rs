//! Traces, metrics, the admin port and logs, read with standard tools' formats.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use dakota_server::{
    app::Server, config::LogFormat, telemetry::Telemetry, testing::agents::select::Upstreams,
};
use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use serde_json::Value;

use crate::{
    common::{self, Gate, admin_get, final_article, next, request},
    standin::{Fault, Route, StandIn},
    upstreams::{OPENAI_KEY, SERPER_KEY, config, llm_request},
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_per_job_from_the_callers_traceparent_down_to_each_upstream_call() {
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let telemetry = Telemetry::init_with(LogFormat::Text, Some(collector.endpoint()));
    let standin = StandIn::start().await;
    let mut server = common::start(config(&standin)).await;

    let mut req = tonic::Request::new(llm_request());
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN}-01").parse().unwrap(),
    );
    let events = common::collect(&mut server.open(req).await).await;
    final_article(&events);
    let phases_run: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(dakota::api::generate_event::Event::PhaseStarted(p)) => Some(p.phase.clone()),
            _ => None,
        })
        .collect();
    server.server.shutdown();
    server.server.wait().await.unwrap();
    telemetry.force_flush();
    let spans = collector.exported_spans(30, Duration::from_secs(20)).await;

    let exported = format!("{spans:?}");
    for key in [OPENAI_KEY, SERPER_KEY] {
        assert!(!exported.contains(key), "a key in the exported spans");
        assert!(
            !exported.contains(&key[..12]),
            "part of a key in the exported spans"
        );
    }
    let by_id: BTreeMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let job: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == TRACE_ID).collect();
    let generate = job
        .iter()
        .find(|s| s.name == "Generate")
        .expect("a Generate span in the caller's trace");
    assert_eq!(
        generate.parent_span_id, PARENT_SPAN,
        "the incoming traceparent is the parent"
    );
    assert_eq!(generate.kind, "SPAN_KIND_SERVER");
    assert_eq!(attr(generate, "rpc.method").as_deref(), Some("Generate"));
    assert!(generate.attributes.contains_key("job_id"));

    let mut phases: Vec<&&ExportedSpan> = job
        .iter()
        .filter(|s| s.parent_span_id == generate.span_id)
        .collect();
    phases.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<String> = phases.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, phases_run, "one span per phase run, in order");
    assert!(
        phases
            .iter()
            .all(|s| attr(s, "phase").as_deref() == Some(s.name.as_str()))
    );

    let writer = job
        .iter()
        .find(|s| s.name == "content_writer")
        .expect("an agent span for the writer");
    assert_eq!(
        by_id[writer.parent_span_id.as_str()].name,
        "writing",
        "agents sit under their phase"
    );
    assert_eq!(attr(writer, "model").as_deref(), Some("test-full"));

    // LLM calls: client spans under their agent, with the GenAI attributes.
    let chat = job
        .iter()
        .find(|s| s.parent_span_id == writer.span_id && s.name == "chat test-full")
        .expect("the writer's chat span");
    assert_eq!(chat.kind, "SPAN_KIND_CLIENT");
    assert_eq!(attr(chat, "gen_ai.system").as_deref(), Some("openai"));
    assert_eq!(
        attr(chat, "gen_ai.request.model").as_deref(),
        Some("test-full")
    );
    assert_eq!(
        attr(chat, "gen_ai.usage.input_tokens").as_deref(),
        Some("1200")
    );
    assert!(attr(chat, "gen_ai.usage.output_tokens").is_some_and(|t| t != "0"));
    assert_eq!(
        attr(chat, "http.response.status_code").as_deref(),
        Some("200")
    );
    let search = job
        .iter()
        .find(|s| s.name == "POST web")
        .expect("a Serper client span");
    assert_eq!(
        attr(search, "url.template").as_deref(),
        Some("{base}/search")
    );
    // Under the cache's span, which says no cache level answered.
    let cache = by_id[search.parent_span_id.as_str()];
    assert_eq!(cache.name, "cache");
    assert_eq!(attr(cache, "cache.layer").as_deref(), Some("none"));
    assert_eq!(attr(cache, "upstream").as_deref(), Some("web"));
    assert_eq!(by_id[cache.parent_span_id.as_str()].name, "web_researcher");

    // Every upstream request carried the job's trace.
    let requests = standin.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        let traceparent = request
            .header("traceparent")
            .unwrap_or_else(|| panic!("{} without traceparent", request.path));
        assert!(
            traceparent.starts_with(&format!("00-{TRACE_ID}-")),
            "{traceparent}"
        );
        let parent = &traceparent[36..52];
        assert!(
            by_id
                .get(parent)
                .is_some_and(|s| s.kind == "SPAN_KIND_CLIENT"),
            "parented by a client span: {traceparent}"
        );
    }
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "one trace for the job"
    );
    telemetry.shutdown().await;
}

/// An attribute's value (the collector keeps them as the debug text of the OTLP value).
fn attr(span: &ExportedSpan, key: &str) -> Option<String> {
    let raw = span.attributes.get(key)?;
    for (prefix, suffix) in [
        ("StringValue(\"", "\")"),
        ("IntValue(", ")"),
        ("BoolValue(", ")"),
        ("DoubleValue(", ")"),
    ] {
        if let Some(start) = raw.find(prefix) {
            let rest = &raw[start + prefix.len()..];
            return rest.find(suffix).map(|end| rest[..end].to_string());
        }
    }
    Some(raw.clone())
}

fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in the scrape"))
}

/// After one successful job, the series the alerts and the dashboard divide by exist, at
/// zero: a failure rate of 0 is data, not "no data".
#[tokio::test]
async fn series_that_alerts_divide_by_exist_at_zero_before_they_move() {
    let mut server = common::start(common::config()).await;
    final_article(&server.generate(common::request("Factor investing")).await);
    let (_, scrape) = server.admin("/metrics").await;
    for code in ["UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "CANCELLED"] {
        let series = format!("dakota_jobs_failed_total{{code=\"{code}\"}}");
        assert_eq!(sample(&scrape, &series), 0.0, "{series}");
    }
    for code in ["INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED"] {
        let series = format!("dakota_grpc_requests_total{{method=\"Generate\",code=\"{code}\"}}");
        assert_eq!(sample(&scrape, &series), 0.0, "{series}");
    }
}

/// The `Generate` RPC is timed to the end of its stream: at least as long as its job.
#[tokio::test]
async fn the_generate_rpc_is_timed_to_its_last_message() {
    let mut server = common::start(common::config()).await;
    let article = final_article(&server.generate(common::request("Factor investing")).await);
    let job = article
        .metrics
        .and_then(|m| m.total_duration)
        .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap();
    let (_, scrape) = server.admin("/metrics").await;
    let rpc = sample(
        &scrape,
        "dakota_grpc_request_duration_seconds_sum{method=\"Generate\"}",
    );
    assert!(rpc >= job, "Generate took {rpc} s, its job {job} s");
    // The health checks the fixture made are counted too: every RPC goes through the layer.
    assert!(
        sample(
            &scrape,
            "dakota_grpc_requests_total{method=\"Check\",code=\"OK\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn metrics_count_requests_jobs_phases_agents_upstreams_and_tokens() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, [Fault::Status(500)]);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    let writer_runs = events
        .iter()
        .filter(|e| matches!(&e.event, Some(dakota::api::generate_event::Event::AgentCompleted(a)) if a.agent == "content_writer"))
        .count();
    let _ = server
        .client
        .get_article(dakota::api::GetArticleRequest {
            job_id: "not-a-job".into(),
        })
        .await;

    let (status, scrape) = server.admin("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &scrape,
            "dakota_grpc_requests_total{method=\"Generate\",code=\"OK\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "dakota_grpc_requests_total{method=\"GetArticle\",code=\"INVALID_ARGUMENT\"}"
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "dakota_jobs_started_total"), 1.0);
    assert_eq!(sample(&scrape, "dakota_jobs_completed_total"), 1.0);
    assert_eq!(sample(&scrape, "dakota_job_duration_seconds_count"), 1.0);
    assert_eq!(sample(&scrape, "dakota_jobs_running"), 0.0);
    for phase in [
        "setup",
        "research",
        "synthesis",
        "writing",
        "analysis",
        "distribution",
    ] {
        assert!(
            sample(
                &scrape,
                &format!("dakota_phase_duration_seconds_count{{phase=\"{phase}\"}}")
            ) >= 1.0
        );
    }
    assert_eq!(
        sample(
            &scrape,
            "dakota_agent_duration_seconds_count{agent=\"content_writer\",provider=\"openai-compatible\"}"
        ),
        writer_runs as f64
    );
    // One LLM attempt failed with a 500 and was retried.
    assert_eq!(
        sample(
            &scrape,
            "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"server_error\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, "dakota_upstream_retries_total{upstream=\"llm\"}"),
        1.0
    );
    let llm_ok = sample(
        &scrape,
        "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"ok\"}",
    );
    assert_eq!(llm_ok as usize, standin.requests_of(Route::Llm).len() - 1);
    assert!(
        sample(
            &scrape,
            "dakota_upstream_requests_total{upstream=\"web\",outcome=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "dakota_circuit_breaker_state{upstream=\"llm\",state=\"closed\"}"
        ),
        1.0
    );
    assert_eq!(sample(&scrape, "dakota_pool_size{pool=\"global\"}"), 10.0);
    assert_eq!(sample(&scrape, "dakota_pool_in_use{pool=\"global\"}"), 0.0);
    assert!(
        sample(
            &scrape,
            "dakota_llm_tokens_total{agent=\"content_writer\",model=\"test-full\",kind=\"input\"}"
        ) >= 1200.0
    );
    assert!(
        sample(
            &scrape,
            "dakota_llm_estimated_cost_usd_total{agent=\"content_writer\",model=\"test-full\"}"
        ) > 0.0
    );
    // Low-cardinality labels only: no topics, job ids or URLs.
    assert!(
        !scrape.contains("Private credit")
            && !scrape.contains("127.0.0.1")
            && !scrape.contains("job_id")
    );

    let (_, agents) = server.admin("/performance/agents").await;
    let agents: Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(agents["agents"]["content_writer"]["samples"], writer_runs);
    assert!(
        agents["agents"]["content_writer"]["p95_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (_, kb) = server.admin("/performance/kb-search").await;
    let kb: Value = serde_json::from_str(&kb).unwrap();
    assert_eq!(kb["knowledge_base"], "openai-vector-store");
    assert_eq!(kb["latency"]["samples"], 1);
    assert_eq!(kb["breaker"], "closed");
}

#[tokio::test]
async fn ready_is_503_while_starting_and_draining_and_200_in_between() {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let gate = Gate::new();
    let gated = gate.agents();
    let factory = Arc::new(move |kb, upstreams: &Upstreams| {
        let _ = held.lock().unwrap().recv();
        gated(kb, upstreams)
    });
    let server = Server::start_with(common::config(), factory).await.unwrap();
    let (status, body) = admin_get(server.admin_addr, "/ready").await;
    assert_eq!((status, body.contains("starting")), (503, true), "{body}");
    assert_eq!(
        admin_get(server.admin_addr, "/live").await.0,
        200,
        "alive while starting"
    );
    release.send(()).unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    common::wait_for_health(
        &channel,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;
    assert_eq!(admin_get(server.admin_addr, "/ready").await.0, 200);

    let mut client = dakota::api::content_service_client::ContentServiceClient::new(channel);
    let mut running = client
        .generate(request("Infrastructure investing"))
        .await
        .unwrap()
        .into_inner();
    next(&mut running).await.unwrap();
    gate.wait_entered(1).await;
    server.shutdown();
    let draining = tokio::time::timeout(common::PATIENCE, async {
        loop {
            let (status, body) = admin_get(server.admin_addr, "/ready").await;
            if status == 503 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(draining.contains("draining"), "{draining}");
    gate.open();
    final_article(&common::collect(&mut running).await);
    server.wait().await.unwrap();
}

#[tokio::test]
async fn detailed_health_reports_a_dead_dependency() {
    let standin = StandIn::start().await;
    let mut config = config(&standin);
    config.upstreams.serper_base_url = "http://127.0.0.1:1".into(); // nothing listens there
    config.upstreams.breaker_threshold = 2;
    config.upstreams.max_attempts = 1;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);

    let (status, body) = server.admin("/health/detailed").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status, 200,
        "a dead web search degrades, it does not make the service unavailable"
    );
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["components"]["web"]["status"], "down");
    assert_eq!(health["components"]["web"]["breaker"], "open");
    let error = health["components"]["web"]["last_error"]["message"]
        .as_str()
        .unwrap();
    assert!(error.contains("cannot connect"), "{error}");
    assert_eq!(health["components"]["llm"]["status"], "ok");
    assert_eq!(health["components"]["kb"]["kind"], "openai-vector-store");
    assert_eq!(health["components"]["redis"]["status"], "not_configured");
    assert_eq!(health["components"]["pools"]["global"]["size"], 10);
    assert_eq!(
        server.admin("/ready").await.0,
        200,
        "still ready: the LLM is fine"
    );

    // The LLM dying makes the service unavailable and not ready.
    standin.fault(Route::Llm, std::iter::repeat_n(Fault::Status(503), 20));
    let _ = server.generate(llm_request()).await;
    let _ = server.generate(llm_request()).await;
    let (status, body) = server.admin("/health/detailed").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, health["status"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert_eq!(health["components"]["llm"]["status"], "down");
    let (status, body) = server.admin("/ready").await;
    assert_eq!(
        (status, body.contains("llm circuit breaker open")),
        (503, true),
        "{body}"
    );
}

#[test]
fn json_logs_carry_the_trace_and_span_ids_of_the_job() {
    let server = common::ServerProcess::spawn(&[], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        let mut req = tonic::Request::new(request("Factor investing"));
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_SPAN}-01").parse().unwrap(),
        );
        final_article(
            &common::collect(&mut client.generate(req).await.unwrap().into_inner()).await,
        );
    });
    let (_, log) = server.terminate();
    let log: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ended = log
        .iter()
        .find(|l| l["message"] == "job ended")
        .expect("the job's end is logged");
    assert_eq!(ended["trace_id"], TRACE_ID, "{ended}");
    assert_eq!(ended["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(ended["span"], "Generate");
    assert!(
        log.iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
}

#[test]
fn a_missing_collector_is_logged_once_and_never_fatal() {
    let server = common::ServerProcess::spawn(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = server.client().await;
        for topic in ["Factor investing", "Risk parity and leverage"] {
            final_article(
                &common::collect(&mut client.generate(request(topic)).await.unwrap().into_inner())
                    .await,
            );
            tokio::time::sleep(Duration::from_millis(500)).await; // several export attempts
        }
    });
    let (status, log) = server.terminate();
    assert!(status.success(), "exit 0 with no collector");
    let failures = log
        .iter()
        .filter(|l| l.contains("trace export failing"))
        .count();
    assert_eq!(failures, 1, "{log:?}");
}
