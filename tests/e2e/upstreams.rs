//! The real upstream clients against the stand-in: LLM agents, vector store, Serper, fetch.
use std::time::Duration;

use dakota::api::{self, generate_event::Event};
use dakota_server::{
    config::{Config, Secret},
    testing::pipeline::contract,
    testing::text,
};
use tonic::Code;

use crate::{
    common::{self, collect, final_article, request},
    standin::{Fault, Route, StandIn},
};

pub const OPENAI_KEY: &str = "sk-test-openai-0123456789";
pub const SERPER_KEY: &str = "serper-test-key-9876543210";
const TOPIC: &str = "Private credit and liquidity for pension funds";

pub fn config(standin: &StandIn) -> Config {
    let mut config = common::config();
    let upstreams = &mut config.upstreams;
    upstreams.openai_base_url = Some(standin.openai_url());
    upstreams.openai_api_key = Some(Secret::new(OPENAI_KEY));
    upstreams.openai_vector_store_id = Some("vs_test".into());
    upstreams.serper_api_key = Some(Secret::new(SERPER_KEY));
    upstreams.serper_base_url = standin.url.clone();
    upstreams.model_nano = "test-nano".into();
    upstreams.model_mini = "test-mini".into();
    upstreams.model_full = "test-full".into();
    upstreams.prices = vec![
        ("test-full".into(), "2/8".into()),
        ("test-mini".into(), "0.4/1.6".into()),
        ("test-nano".into(), "0.1/0.4".into()),
    ];
    upstreams.fetch_allow_private = true;
    config
}

pub fn llm_request() -> api::GenerateRequest {
    let mut req = request(TOPIC);
    req.word_count = Some(400);
    req.audience = "pension trustees".into();
    req.custom_instructions = "Mention the 2026 outlook for allocations.".into();
    req
}

/// `n` LLM jobs (topics told apart) run at once, each to its article.
pub async fn llm_jobs_at_once(server: &common::TestServer, n: usize) -> Vec<api::Article> {
    let jobs = (0..n).map(|i| {
        let mut client = server.client.clone();
        async move {
            let mut request = llm_request();
            request.topic = format!("{} {i}", request.topic);
            let mut stream = client.generate(request).await.unwrap().into_inner();
            final_article(&collect(&mut stream).await)
        }
    });
    futures_util::future::join_all(jobs).await
}

pub fn warnings(events: &[api::GenerateEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Warning(w)) => Some(w.code.clone()),
            _ => None,
        })
        .collect()
}

fn expected_model(kind: &str) -> &'static str {
    match kind {
        "kb_researcher" | "seo_specialist" | "social_promoter" => "test-nano",
        "web_researcher" | "fact_checker" | "summary_writer" => "test-mini",
        "research_synthesizer" | "research_synthesizer.plan" | "stream" => "test-full",
        other => panic!("unexpected LLM request kind {other}"),
    }
}

#[tokio::test]
async fn llm_vector_store_and_serper_produce_the_article() {
    let standin = StandIn::start().await;
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);

    // What the LLM endpoint received: the key, each agent's tier model, strict schemas for the
    // structured agents, a stream for the writer, and the request's words in the prompts.
    let llm = standin.requests_of(Route::Llm);
    let kinds: Vec<String> = llm.iter().map(|r| r.llm_kind()).collect();
    for kind in [
        "kb_researcher",
        "web_researcher",
        "research_synthesizer.plan",
        "research_synthesizer",
        "stream",
        "seo_specialist",
        "fact_checker",
        "social_promoter",
        "summary_writer",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} called the LLM: {kinds:?}"
        );
    }
    for request in &llm {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
        let kind = request.llm_kind();
        assert_eq!(request.body["model"], expected_model(&kind), "{kind}");
        if kind == "stream" {
            assert_eq!(request.body["stream"], true);
        } else {
            let format = &request.body["response_format"];
            assert_eq!(format["type"], "json_schema");
            assert_eq!(format["json_schema"]["strict"], true);
            assert_eq!(
                format["json_schema"]["schema"]["additionalProperties"],
                false
            );
        }
    }
    let writer = llm
        .iter()
        .find(|r| r.llm_kind() == "stream")
        .unwrap()
        .prompt_text();
    for expected in [
        TOPIC,
        "pension trustees",
        "Mention the 2026 outlook for allocations.",
        "[S1]",
        "Key Insights at a Glance",
    ] {
        assert!(
            writer.contains(expected),
            "the writer's prompt holds `{expected}`"
        );
    }

    // The vector store and Serper were asked with their credentials.
    let searches = standin.requests_of(Route::VectorStore);
    assert!(!searches.is_empty());
    assert!(
        searches
            .iter()
            .all(|r| r.path == "/v1/vector_stores/vs_test/search"
                && r.header("authorization") == Some(&format!("Bearer {OPENAI_KEY}"))
                && r.body["query"].as_str().is_some_and(|q| !q.is_empty()))
    );
    let web = standin.requests_of(Route::Serper);
    assert!(!web.is_empty());
    assert!(
        web.iter()
            .all(|r| r.header("x-api-key") == Some(SERPER_KEY) && r.body["num"] == 10)
    );

    // Sources come from both; at most three per domain; every citation resolves.
    let kinds: Vec<api::SourceKind> = article.sources.iter().map(|s| s.kind()).collect();
    assert!(
        kinds.contains(&api::SourceKind::KnowledgeBase) && kinds.contains(&api::SourceKind::Web),
        "{kinds:?}"
    );
    assert!(
        article
            .sources
            .iter()
            .filter(|s| s.kind() == api::SourceKind::KnowledgeBase)
            .all(|s| s.url.starts_with("https://vs.example/"))
    );
    assert!(
        article
            .sources
            .iter()
            .filter(|s| s.kind() == api::SourceKind::Web)
            .count()
            <= 3
    );
    let urls: Vec<&str> = article.sources.iter().map(|s| s.url.as_str()).collect();
    let cited = text::links(&article.markdown);
    assert!(!cited.is_empty());
    assert!(cited.iter().all(|l| urls.contains(&l.url.as_str())));
    // Cited web pages were fetched for the fact check, and only those.
    let pages: Vec<String> = standin
        .requests_of(Route::Page)
        .iter()
        .map(|r| r.path.clone())
        .collect();
    let cited_web: Vec<&str> = cited
        .iter()
        .map(|l| l.url.as_str())
        .filter(|u| u.contains("/pages/"))
        .collect();
    assert!(
        !cited_web.is_empty(),
        "the stand-in writer cites every source"
    );
    for url in &cited_web {
        assert!(
            pages.iter().any(|p| url.ends_with(p.as_str())),
            "{url} was fetched"
        );
    }
    assert!(
        pages
            .iter()
            .all(|p| cited_web.iter().any(|u| u.ends_with(p.as_str())))
    );

    // The article is the writer's streamed text (last pass), its citations rendered.
    let streamed = common::streamed_text(&events);
    let sources = common::as_sources(&article);
    assert_eq!(
        contract::render_citations(streamed.trim(), &sources),
        article.markdown
    );
    assert!(
        events
            .iter()
            .filter(|e| matches!(e.event, Some(Event::ContentDelta(_))))
            .count()
            > 5,
        "the text arrived in many deltas"
    );

    // Tokens and cost per agent, from the endpoint's usage and the configured prices.
    let metrics = article.metrics.clone().unwrap();
    let writer = metrics
        .agents
        .iter()
        .find(|a| a.agent == "content_writer")
        .unwrap();
    assert_eq!(
        (writer.provider.as_str(), writer.model.as_str()),
        ("openai-compatible", "test-full")
    );
    let usage = writer.usage.unwrap();
    assert_eq!(usage.input_tokens, 1200, "the usage the stream reported");
    let expected = (usage.input_tokens as f64 * 2.0 + usage.output_tokens as f64 * 8.0) / 1e6;
    assert!((writer.estimated_cost_usd - expected).abs() < 1e-12);
    let total: f64 = metrics.agents.iter().map(|a| a.estimated_cost_usd).sum();
    assert!((metrics.estimated_cost_usd - total).abs() < 1e-9 && total > 0.0);
    assert_eq!(
        metrics.total_input_tokens,
        metrics
            .agents
            .iter()
            .map(|a| a.usage.unwrap().input_tokens)
            .sum::<u64>()
    );
    let completed: Vec<&api::AgentCompleted> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::AgentCompleted(a)) => Some(a),
            _ => None,
        })
        .collect();
    assert!(completed.iter().any(|a| a.agent == "content_writer"
        && a.estimated_cost_usd > 0.0
        && a.usage.unwrap().output_tokens > 0));
    assert!(
        metrics
            .upstream_calls
            .iter()
            .any(|u| u.upstream == "llm" && u.calls as usize == llm.len())
    );
}

#[tokio::test]
async fn malformed_and_schema_violating_answers_are_retried() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, [Fault::Malformed, Fault::SchemaViolation]);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    let retried = events
        .iter()
        .any(|e| matches!(&e.event, Some(Event::AgentCompleted(a)) if a.attempts >= 2));
    assert!(retried, "an agent needed more than one attempt");
}

/// Garbage instead of answers: every part but the article falls back to its offline version
/// with a warning; a writer that answers garbage fails the job as UNAVAILABLE.
#[tokio::test]
async fn an_llm_that_only_answers_garbage_degrades_every_part_but_the_writer() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, std::iter::repeat_n(Fault::Malformed, 50));
    let mut config = config(&standin);
    config.upstreams.max_attempts = 2;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let warned = warnings(&events);
    for code in [
        "KB_RESEARCHER_DEGRADED",
        "RESEARCH_SYNTHESIZER_DEGRADED",
        "SEO_SPECIALIST_DEGRADED",
        "SOCIAL_PROMOTER_DEGRADED",
        "SUMMARY_WRITER_DEGRADED",
    ] {
        assert!(warned.iter().any(|w| w == code), "{code} in {warned:?}");
    }
    let degraded = article.metrics.unwrap().degraded;
    assert!(
        degraded
            .iter()
            .all(|d| d.cause == "unavailable" && d.message.contains("malformed")),
        "{degraded:?}"
    );

    let standin = StandIn::start().await;
    standin.fault(Route::LlmStream, std::iter::repeat_n(Fault::Malformed, 50));
    let mut config = self::config(&standin);
    config.upstreams.max_attempts = 2;
    let mut server = common::start(config).await;
    let failed = common::failed(&server.generate(llm_request()).await);
    assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
    assert_eq!(failed.phase, "writing");
}

#[tokio::test]
async fn without_a_serper_key_web_research_is_skipped_with_a_warning() {
    let standin = StandIn::start().await;
    let mut config = config(&standin);
    config.upstreams.serper_api_key = None;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(warnings(&events).contains(&"WEB_SEARCH_UNAVAILABLE".to_string()));
    assert!(standin.requests_of(Route::Serper).is_empty());
    assert!(
        article
            .sources
            .iter()
            .all(|s| s.kind() == api::SourceKind::KnowledgeBase)
    );
}

#[tokio::test]
async fn serper_failing_degrades_the_job_instead_of_failing_it() {
    let standin = StandIn::start().await;
    standin.fault(Route::Serper, std::iter::repeat_n(Fault::Status(500), 50));
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        warnings(&events).contains(&"WEB_SEARCH_FAILED".to_string()),
        "{:?}",
        warnings(&events)
    );
    assert!(
        article
            .sources
            .iter()
            .all(|s| s.kind() == api::SourceKind::KnowledgeBase)
    );
}

#[tokio::test]
async fn private_addresses_are_not_fetched_unless_allowed() {
    let standin = StandIn::start().await;
    let mut config = config(&standin);
    config.upstreams.fetch_allow_private = false;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        standin.requests_of(Route::Page).is_empty(),
        "nothing was fetched from 127.0.0.1"
    );
    assert!(warnings(&events).contains(&"SOURCE_FETCH_FAILED".to_string()));
    // Claims resting on the unread pages are unverifiable, not a crash.
    let fact_check = article.fact_check.unwrap();
    let web_urls: Vec<&str> = article
        .sources
        .iter()
        .filter(|s| s.kind() == api::SourceKind::Web)
        .map(|s| s.url.as_str())
        .collect();
    assert!(
        fact_check
            .claims
            .iter()
            .filter(|c| web_urls.contains(&c.source_url.as_str()))
            .all(|c| c.verdict() != api::Verdict::Supported)
    );
}

#[test]
fn secrets_never_reach_the_logs() {
    dakota_server::testing::upstream::install_crypto_provider(); // for the admin port's HTTP client
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(StandIn::start());
    let (openai_url, serper_url) = (standin.openai_url(), standin.url.clone());
    // A Redis that does not answer, with a password in its URL: degraded, and never echoed.
    const REDIS_PASSWORD: &str = "redis-pw-4b1d7c0e9f";
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:1/0");
    let server = common::ServerProcess::spawn(
        &["--fetch-allow-private"],
        &[
            ("RUST_LOG", "debug"),
            ("OPENAI_BASE_URL", &openai_url),
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("SERPER_API_KEY", SERPER_KEY),
            ("SERPER_BASE_URL", &serper_url),
            ("REDIS_URL", &redis_url),
        ],
    );
    let admin = server
        .log
        .iter()
        .find_map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).ok()?;
            line["admin_addr"].as_str().map(str::to_string)
        })
        .expect("the admin address is logged");
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    let (health, scrape) = runtime.block_on(async {
        let mut client = server.client().await;
        final_article(
            &collect(&mut client.generate(llm_request()).await.unwrap().into_inner()).await,
        );
        (
            common::admin_get(admin, "/health/detailed").await.1,
            common::admin_get(admin, "/metrics").await.1,
        )
    });
    assert!(
        health.contains("degraded"),
        "Redis shows as degraded: {health}"
    );
    for secret in [OPENAI_KEY, SERPER_KEY, REDIS_PASSWORD] {
        assert!(
            !health.contains(secret) && !scrape.contains(secret),
            "a secret in /health/detailed or /metrics"
        );
    }
    let (_, log) = server.terminate();
    let log = log.join("\n");
    assert!(
        log.contains("job ended") && log.contains("agents selected"),
        "the log is the real one:\n{log}"
    );
    assert!(
        !log.contains(OPENAI_KEY) && !log.contains(SERPER_KEY) && !log.contains(REDIS_PASSWORD),
        "a key leaked into the log"
    );
    assert!(
        !log.contains(&OPENAI_KEY[..12]) && !log.contains(&SERPER_KEY[..12]),
        "part of a key leaked into the log"
    );
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        [
            Fault::TooMany {
                retry_after_secs: 1,
            },
            Fault::TooMany {
                retry_after_secs: 1,
            },
        ],
    );
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    let llm = standin.requests_of(Route::Llm);
    // Each throttled request's next try of the same agent came at least a second later.
    for throttled in &llm[..2] {
        let kind = throttled.llm_kind();
        let retry = llm
            .iter()
            .find(|r| r.at > throttled.at && r.llm_kind() == kind)
            .expect("the throttled call was retried");
        assert!(
            retry.at - throttled.at >= Duration::from_secs(1),
            "{kind} retried after {:?}",
            retry.at - throttled.at
        );
    }
}

#[tokio::test]
async fn a_broken_connection_is_retried() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, [Fault::Close]);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    // The agent whose call broke made one attempt more than it made calls.
    assert!(
        events.iter().any(|e| matches!(&e.event,
            Some(Event::AgentCompleted(a)) if a.calls > 0 && a.attempts == a.calls + 1)),
        "{events:?}"
    );
}

/// A model that never answers: the parts that can fall back do, each within its timeouts,
/// until the breaker opens; the article cannot, and the job fails UNAVAILABLE.
#[tokio::test]
async fn an_llm_that_never_answers_fails_the_job_within_its_timeouts() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        std::iter::repeat_n(Fault::Stall { chunks: 0 }, 40),
    );
    let mut config = config(&standin);
    config.upstreams.llm_timeout = Some(Duration::from_millis(400));
    config.upstreams.max_attempts = 2;
    let mut server = common::start(config).await;
    let started = std::time::Instant::now();
    let events = server.generate(llm_request()).await;
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
    assert_eq!(failed.phase, "writing");
    assert!(
        warnings(&events).contains(&"KB_RESEARCHER_DEGRADED".to_string()),
        "{:?}",
        warnings(&events)
    );
    // Two attempts of 400 ms and a backoff per part; generous room for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stream_that_stalls_midway_is_cut_and_the_draft_written_again() {
    let standin = StandIn::start().await;
    let mut config = config(&standin);
    config.upstreams.llm_idle_timeout = Duration::from_millis(500);
    // Only the writer streams: its first answer stops after three chunks.
    standin.fault(Route::LlmStream, [Fault::Stall { chunks: 3 }]);
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        warnings(&events).contains(&"WRITER_RESTARTED".to_string()),
        "{:?}",
        warnings(&events)
    );
    // The broken stream's three chunks came as iteration 1; the whole draft as iteration 2,
    // which replaces them for a client that shows the text live.
    let deltas: Vec<&api::ContentDelta> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::ContentDelta(d)) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas.iter().filter(|d| d.iteration == 1).count(),
        3,
        "the text that had arrived before the stall"
    );
    let second: String = deltas
        .iter()
        .filter(|d| d.iteration == 2)
        .map(|d| d.text.as_str())
        .collect();
    assert!(second.len() > 500, "the draft written again");
    assert!(
        article.markdown.len() > 500,
        "the job delivered its article"
    );
    // Revisions, if any, come after it: iterations never go back.
    assert!(deltas.windows(2).all(|w| w[0].iteration <= w[1].iteration));
}

#[tokio::test]
async fn cancelling_a_job_closes_its_open_upstream_requests() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        std::iter::repeat_n(Fault::Stall { chunks: 0 }, 20),
    );
    let mut server = common::start(config(&standin)).await;
    let mut stream = server.open(llm_request()).await;
    let job_id = common::next(&mut stream).await.unwrap().job_id;
    tokio::time::timeout(common::PATIENCE, async {
        while standin.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    server
        .client
        .cancel_job(api::CancelJobRequest { job_id })
        .await
        .unwrap();
    let seen = standin.requests().len();
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while standin.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the stand-in still holds {} open requests",
        standin.in_flight()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        standin.requests().len(),
        seen,
        "no new upstream request after the cancel"
    );
    assert_eq!(
        common::failed(&collect(&mut stream).await).code,
        Code::Cancelled as i32
    );
}

#[tokio::test]
async fn a_slow_vector_store_hits_the_knowledge_base_timeout() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::VectorStore,
        std::iter::repeat_n(Fault::Delay(Duration::from_secs(3)), 20),
    );
    let mut config = config(&standin);
    config.upstreams.kb_timeout = Duration::from_millis(300);
    config.upstreams.max_attempts = 2;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::Unavailable as i32, "{}", failed.message);
    assert!(
        failed.message.contains("kb: no answer within 300ms"),
        "{}",
        failed.message
    );
    // The same search path answers the RPC: it is refused the same way.
    let status = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec!["liquidity".into()],
            max_results: 3,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn search_rpc_uses_the_vector_store_when_configured() {
    let standin = StandIn::start().await;
    let mut server = common::start(config(&standin)).await;
    let response = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec!["private credit liquidity".into(), "duration".into()],
            max_results: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 2);
    assert!(
        response
            .results
            .iter()
            .flat_map(|r| &r.hits)
            .all(|h| h.url.starts_with("https://vs.example/"))
    );
    assert_eq!(
        standin.requests_of(Route::VectorStore).len(),
        2,
        "one search per query"
    );
}

#[tokio::test]
async fn fetches_follow_few_redirects_only_to_http_and_read_a_bounded_body() {
    use dakota_server::{
        testing::resilience::{CallScope, Guard, Pool},
        testing::upstream::fetch::Fetcher,
    };
    use std::sync::Arc;
    let standin = StandIn::start().await;
    let scope = CallScope::new(Pool::Analysis);
    let guard = || Arc::new(Guard::unlimited("fetch"));
    let fetcher = Fetcher::new(Duration::from_secs(5), 1000, true, guard()).unwrap();
    let arrived = fetcher
        .fetch_text(&scope, &format!("{}/hop/3", standin.url))
        .await
        .unwrap();
    assert_eq!(arrived, "Arrived after the redirects.");
    let too_many = fetcher
        .fetch_text(&scope, &format!("{}/hop/6", standin.url))
        .await
        .unwrap_err();
    assert!(
        too_many.to_string().contains("more than 5 redirects"),
        "{too_many}"
    );
    let escape = fetcher
        .fetch_text(&scope, &format!("{}/escape", standin.url))
        .await
        .unwrap_err();
    assert!(escape.to_string().contains("scheme `file`"), "{escape}");
    let big = fetcher
        .fetch_text(&scope, &format!("{}/big", standin.url))
        .await
        .unwrap();
    assert_eq!(big.len(), 1000, "the rest of a large page is not read");
    // The same server, with private addresses refused as in production.
    let guarded = Fetcher::new(Duration::from_secs(5), 1000, false, guard()).unwrap();
    let refused = guarded
        .fetch_text(&scope, &format!("{}/hop/0", standin.url))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("private or reserved"),
        "{refused}"
    );
    let by_name = guarded
        .fetch_text(&scope, &standin.url.replace("127.0.0.1", "localhost"))
        .await
        .unwrap_err();
    assert!(
        by_name.to_string().contains("private or reserved"),
        "{by_name}"
    );
}

#[tokio::test]
async fn an_upstream_that_echoes_the_key_does_not_leak_it() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, std::iter::repeat_n(Fault::EchoCredentials, 10));
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let degraded = article.metrics.unwrap().degraded;
    assert!(
        degraded
            .iter()
            .any(|d| d.message.contains("invalid credentials: Bearer [redacted]")),
        "{degraded:?}"
    );
    assert!(!format!("{events:?}").contains(OPENAI_KEY));
    let (_, health) = server.admin("/health/detailed").await;
    assert!(
        health.contains("[redacted]") && !health.contains(OPENAI_KEY),
        "{health}"
    );
}
