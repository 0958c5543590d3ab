//! A model that is slow but alive (a local server on a CPU, a busy GPU, a model that thinks
//! first): long prompts read before the first token, slow generation, a context window that
//! is too small, a server with few slots. Slow is not down: no breaker opens, and the job
//! ends with an article.
use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{self, final_article},
    standin::{Fault, Latency, Route, StandIn},
    upstreams::{config, llm_request, warnings},
};

/// The server's metrics, as text.
async fn metrics(server: &common::TestServer) -> String {
    server.admin("/metrics").await.1
}

/// The value of one series in a Prometheus text scrape (0 when absent).
fn series(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// No LLM call was refused by an open breaker, and the breaker is closed.
async fn assert_no_breaker_opened(server: &common::TestServer) {
    let scrape = metrics(server).await;
    assert_eq!(
        series(
            &scrape,
            "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"breaker_open\"}"
        ),
        0.0,
        "calls refused by an open breaker"
    );
    assert_eq!(
        series(
            &scrape,
            "dakota_circuit_breaker_state{upstream=\"llm\",state=\"closed\"}"
        ),
        1.0
    );
}

async fn detailed_llm(server: &common::TestServer) -> Value {
    let (_, body) = server.admin("/health/detailed").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    health["components"]["llm"].clone()
}

/// Every answer starts 1.5 s after its headers, as llama.cpp's do while it reads the prompt.
/// A single gap limit of 500 ms cut each of them as stalled before its first token (and five
/// such failures opened the breaker for every job); the first token has its own budget now,
/// from the prompt's size.
#[tokio::test]
async fn a_model_slow_to_its_first_token_is_waited_for_and_opens_no_breaker() {
    let standin = StandIn::start().await;
    standin.latency(Latency {
        first_token: Duration::from_millis(1500),
        ..Default::default()
    });
    let mut config = config(&standin);
    config.upstreams.llm_idle_timeout = Duration::from_millis(500);
    config.upstreams.breaker_threshold = 2;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let degraded = article.metrics.unwrap().degraded;
    assert!(degraded.is_empty(), "{degraded:?}");
    assert_no_breaker_opened(&server).await;
}

/// Answers that stream slowly (10 tokens every 50 ms) but steadily: the job completes with
/// every part from the model, and the pace the model showed is what `/health/detailed` and
/// the gauge report, per model.
#[tokio::test]
async fn a_model_that_generates_slowly_is_measured_and_given_the_time() {
    let standin = StandIn::start().await;
    standin.latency(Latency {
        tokens_per_second: 200,
        ..Default::default()
    });
    let mut config = config(&standin);
    config.upstreams.llm_idle_timeout = Duration::from_millis(500);
    config.upstreams.breaker_threshold = 2;
    let mut server = common::start(config).await;
    let article = final_article(&server.generate(llm_request()).await);
    assert!(article.metrics.unwrap().degraded.is_empty());
    assert_no_breaker_opened(&server).await;
    let llm = detailed_llm(&server).await;
    // The writer's model streamed the article: its pace is measured near the stand-in's.
    let rate = llm["throughput"]["test-full"]["generation_tokens_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no pace measured: {llm}"));
    assert!((40.0..=400.0).contains(&rate), "{rate} tokens/s");
    let scrape = metrics(&server).await;
    assert!(
        series(
            &scrape,
            "dakota_llm_tokens_per_second{model=\"test-full\",kind=\"generation\"}"
        ) > 0.0,
        "the gauge"
    );
}

/// With a fixed `--llm-timeout` of 1 s, answers that take 3 s while streaming all along are
/// cut by the service's own limit: that is slowness, not an outage, so even a breaker that
/// opens after two failures stays closed, and the job still ends with an article.
#[tokio::test]
async fn calls_cut_by_our_own_limit_while_the_model_streams_are_no_outage() {
    let standin = StandIn::start().await;
    standin.latency(Latency {
        tokens_per_second: 40,
        ..Default::default()
    });
    let mut config = config(&standin);
    config.upstreams.llm_timeout = Some(Duration::from_secs(1));
    config.upstreams.breaker_threshold = 2;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(!article.markdown.is_empty());
    assert_no_breaker_opened(&server).await;
    let scrape = metrics(&server).await;
    assert!(
        series(
            &scrape,
            "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"over_budget\"}"
        ) >= 2.0,
        "{scrape}"
    );
}

/// llama.cpp's answers to a prompt too long for its context (400 "exceeds the available
/// context size", 500 "Context size has been exceeded") are problems of that call: the part
/// degrades to its offline version, the breaker (threshold 1) stays closed, the job completes.
#[tokio::test]
async fn a_context_exceeded_answer_is_a_content_problem_not_an_outage() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        [
            Fault::ContextExceeded(400),
            Fault::ContextExceeded(500),
            Fault::ContextExceeded(400),
            Fault::ContextExceeded(500),
        ],
    );
    let mut config = config(&standin);
    config.upstreams.breaker_threshold = 1;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(!article.metrics.unwrap().degraded.is_empty());
    assert!(
        warnings(&events).iter().any(|w| w.ends_with("_DEGRADED")),
        "{:?}",
        warnings(&events)
    );
    assert_no_breaker_opened(&server).await;
    let scrape = metrics(&server).await;
    assert!(
        series(
            &scrape,
            "dakota_upstream_requests_total{upstream=\"llm\",outcome=\"context_exceeded\"}"
        ) >= 1.0
    );
}

/// A server with one slot (llama.cpp's `/props` says `total_slots: 1`): calls wait in the
/// service's queue, one in flight at a time however many jobs run, and `/health/detailed`
/// shows the slots and the context window it learned.
#[tokio::test]
async fn llm_calls_wait_for_the_servers_slots_in_our_queue() {
    let standin = StandIn::start().await;
    standin.set_props(json!({"total_slots": 1, "default_generation_settings": {"n_ctx": 32768}}));
    standin.latency(Latency {
        llm: Duration::from_millis(30),
        ..Default::default()
    });
    let config = config(&standin);
    let server = common::start(config).await;
    crate::upstreams::llm_jobs_at_once(&server, 3).await;
    assert_eq!(standin.max_llm_in_flight(), 1, "one call at a time");
    let llm = detailed_llm(&server).await;
    assert_eq!(llm["slots"]["size"], 1, "{llm}");
    assert_eq!(llm["context_tokens"], 32768, "{llm}");
}

/// A model with a 1,500-token context: every request sent fits it (prompt and the answer
/// asked for), the rest are not sent at all, and the job still completes.
#[tokio::test]
async fn prompts_are_fitted_into_a_small_context_window() {
    const CONTEXT: u64 = 1_500;
    let standin = StandIn::start().await;
    standin.set_props(json!({"default_generation_settings": {"n_ctx": CONTEXT}}));
    let mut config = config(&standin);
    config.upstreams.breaker_threshold = 1;
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    // The fact checker's claims went out in as many calls as the window needed, each
    // answered: none of it gave way to the offline version.
    assert!(
        !warnings(&events).contains(&"FACT_CHECKER_DEGRADED".to_string()),
        "{:?}",
        warnings(&events)
    );
    let chats = standin.requests_of(Route::Llm);
    let fact_checks = chats
        .iter()
        .filter(|c| c.llm_kind() == "fact_checker")
        .count();
    assert!(
        fact_checks >= 2,
        "{fact_checks} fact-check call(s): the claims in batches"
    );
    for chat in &chats {
        let said = chat.prompt_text().len() as u64;
        let max_tokens = chat.body["max_tokens"].as_u64().unwrap();
        // The service's estimate: 3.5 bytes a token.
        assert!(
            said * 2 / 7 + max_tokens <= CONTEXT + 2,
            "{} asked {max_tokens} tokens after {said} bytes",
            chat.llm_kind()
        );
    }
    assert_no_breaker_opened(&server).await;
}

/// The time from the job's start to its distribution phase, and its analysis phase's duration.
fn pace_of(
    events: &[dakota::api::GenerateEvent],
    started: std::time::Instant,
    at: &[std::time::Instant],
) -> (Duration, Duration) {
    use dakota::api::generate_event::Event;
    let mut to_distribution = Duration::ZERO;
    let mut analysis = Duration::ZERO;
    for (event, at) in events.iter().zip(at) {
        match &event.event {
            Some(Event::PhaseStarted(p)) if p.phase == "distribution" => {
                to_distribution = *at - started;
            }
            Some(Event::PhaseCompleted(p)) if p.phase == "analysis" => {
                analysis = p
                    .duration
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    (to_distribution, analysis)
}

/// Every model call takes 1.5 s. A job without a deadline (after one that fills the caches)
/// shows the pace: when its distribution began and how long its analysis took. A next job's
/// deadline leaves it
/// about half an analysis after it reaches the distribution: the social posts and the
/// summary are written offline at once (degraded, cause `deadline`, with warnings), and the
/// job completes within its deadline instead of failing DEADLINE_EXCEEDED.
#[tokio::test]
async fn a_job_short_of_time_writes_its_optional_parts_offline_and_completes() {
    let standin = StandIn::start().await;
    standin.latency(Latency {
        llm: Duration::from_millis(1500),
        ..Default::default()
    });
    // No revisions: every job takes the same path to its distribution.
    let mut config = config(&standin);
    config.max_iterations = 0;
    let server = common::start(config).await;
    let run = |deadline: Option<Duration>| {
        let mut client = server.client.clone();
        async move {
            let mut request = tonic::Request::new(llm_request());
            if let Some(deadline) = deadline {
                request.set_timeout(deadline);
            }
            let started = std::time::Instant::now();
            let mut stream = client.generate(request).await.unwrap().into_inner();
            let (mut events, mut at) = (Vec::new(), Vec::new());
            while let Ok(Some(event)) = stream.message().await {
                events.push(event);
                at.push(std::time::Instant::now());
            }
            (events, started, at)
        }
    };
    // The first job fills the caches (searches, pages); the second shows the pace.
    final_article(&run(None).await.0);
    let (events, started, at) = run(None).await;
    final_article(&events);
    let (to_distribution, analysis) = pace_of(&events, started, &at);
    assert!(analysis > Duration::from_secs(1), "{analysis:?}");
    let (events, started, at) = run(Some(to_distribution + analysis / 2)).await;
    let article = final_article(&events);
    let second = pace_of(&events, started, &at);
    let degraded = article.metrics.unwrap().degraded;
    for agent in ["social_promoter", "summary_writer"] {
        assert!(
            degraded
                .iter()
                .any(|d| d.agent == agent && d.cause == "deadline"),
            "{agent}: {degraded:?} (first job: {to_distribution:?} to the distribution, analysis {analysis:?}; second {second:?})"
        );
    }
    assert!(warnings(&events).contains(&"SOCIAL_PROMOTER_DEGRADED".to_string()));
}
