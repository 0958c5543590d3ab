//! The resilience stack seen from outside: breakers, the global cap, the job queue, health.
use std::time::Duration;

use dakota::api::{self, SERVICE_NAME};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::{
    common::{self, Gate, final_article, next, request},
    standin::{Fault, Route, StandIn},
    upstreams::{config, llm_request},
};

fn warned(events: &[api::GenerateEvent], code: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(&e.event, Some(api::generate_event::Event::Warning(w)) if w.code == code))
}

#[tokio::test]
async fn an_open_web_breaker_stops_calls_until_its_cool_down_then_allows_one_trial() {
    let standin = StandIn::start().await;
    standin.fault(Route::Serper, std::iter::repeat_n(Fault::Status(500), 100));
    let mut config = config(&standin);
    config.upstreams.breaker_threshold = 2;
    config.upstreams.breaker_cool_down = Duration::from_secs(5);
    config.upstreams.max_attempts = 1;
    config.upstreams.rate_limits = common::no_rate_limits();
    let mut server = common::start(config).await;

    let events = server.generate(llm_request()).await;
    final_article(&events);
    assert!(
        warned(&events, "WEB_SEARCH_FAILED"),
        "the job went on without the web"
    );
    let after_first = standin.requests_of(Route::Serper).len();
    assert!(after_first >= 2, "{after_first} searches reached Serper");

    // Open: the next job does not touch Serper at all, and still completes.
    let events = server.generate(llm_request()).await;
    final_article(&events);
    assert!(warned(&events, "WEB_SEARCH_FAILED"));
    assert_eq!(
        standin.requests_of(Route::Serper).len(),
        after_first,
        "no request while open"
    );

    // After the cool-down: exactly one trial (it fails, so the breaker opens again).
    tokio::time::sleep(Duration::from_millis(5100)).await;
    final_article(&server.generate(llm_request()).await);
    assert_eq!(
        standin.requests_of(Route::Serper).len(),
        after_first + 1,
        "one half-open trial"
    );
}

#[tokio::test]
async fn an_open_llm_breaker_fails_jobs_fast_and_takes_the_service_out_of_rotation() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, std::iter::repeat_n(Fault::Status(503), 100));
    let mut config = config(&standin);
    config.upstreams.breaker_threshold = 2;
    config.upstreams.breaker_cool_down = Duration::from_secs(5);
    config.upstreams.max_attempts = 1;
    config.upstreams.rate_limits = common::no_rate_limits();
    let mut server = common::start(config).await;

    // Two jobs, two failed calls: the breaker opens.
    for _ in 0..2 {
        let failed = common::failed(&server.generate(llm_request()).await);
        assert_eq!(failed.code, Code::Unavailable as i32);
    }
    common::wait_for_service(&server.channel, SERVICE_NAME, ServingStatus::NotServing).await;
    assert_eq!(
        common::health(&server.channel, "").await,
        ServingStatus::Serving,
        "the process itself is fine"
    );

    let seen = standin.requests_of(Route::Llm).len();
    let started = std::time::Instant::now();
    let failed = common::failed(&server.generate(llm_request()).await);
    assert_eq!(failed.code, Code::Unavailable as i32);
    assert!(
        failed.message.contains("circuit breaker open"),
        "{}",
        failed.message
    );
    assert_eq!(
        standin.requests_of(Route::Llm).len(),
        seen,
        "failed fast, without calling the LLM"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting on timeouts: {:?}",
        started.elapsed()
    );

    // The cool-down over, the service takes traffic again so a trial can go through.
    common::wait_for_service(&server.channel, SERVICE_NAME, ServingStatus::Serving).await;
}

#[tokio::test]
async fn twenty_concurrent_jobs_never_hold_more_than_the_global_cap_of_upstream_calls() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        std::iter::repeat_n(Fault::Delay(Duration::from_millis(100)), 1000),
    );
    let mut config = config(&standin);
    config.upstreams.max_concurrent_upstream = 10;
    config.upstreams.rate_limits = common::no_rate_limits();
    config.max_running_jobs = 20;
    let server = common::start(config).await;
    let jobs: Vec<_> = (0..20)
        .map(|_| {
            let mut client = server.client.clone();
            tokio::spawn(async move {
                common::collect(&mut client.generate(llm_request()).await.unwrap().into_inner())
                    .await
            })
        })
        .collect();
    for job in jobs {
        final_article(&job.await.unwrap());
    }
    let max = standin.max_in_flight();
    assert!(
        max <= 10,
        "the stand-in saw {max} requests in flight at once"
    );
    assert!(
        max >= 5,
        "the cap was actually reached for: only {max} at once"
    );
}

#[tokio::test]
async fn past_the_queue_generate_is_refused_at_once_with_retry_info() {
    let gate = Gate::new();
    let mut config = common::config();
    config.max_running_jobs = 1;
    config.max_queued_jobs = 1;
    let mut server = common::start_with(config, gate.agents()).await;

    let mut running = server.open(request("Factor investing")).await;
    next(&mut running).await.unwrap();
    gate.wait_entered(1).await;
    let mut queued = server.open(request("Risk parity")).await;
    let mut queued_events = vec![
        next(&mut queued).await.unwrap(),
        next(&mut queued).await.unwrap(),
    ];
    assert!(warned(&queued_events, "QUEUED"), "{queued_events:?}");

    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        server.client.generate(request("Infrastructure investing")),
    )
    .await
    .expect("answered at once, not held")
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .is_some()
    );
    assert!(
        refused.message().contains("1 jobs running and 1 waiting"),
        "{}",
        refused.message()
    );

    gate.open();
    final_article(&common::collect(&mut running).await);
    queued_events.extend(common::collect(&mut queued).await);
    final_article(&queued_events);
}

/// A provider account with 8 requests a 2 s window left, told in its `x-ratelimit-*`
/// headers: two jobs at once slow down as the budget runs low and wait for its reset, so
/// the provider never answers 429; `/health/detailed` shows what it last said.
#[tokio::test]
async fn a_burst_of_jobs_against_a_tight_provider_budget_meets_no_429() {
    let standin = StandIn::start().await;
    standin.provider_budget(8, Duration::from_secs(2));
    let mut config = config(&standin);
    config.upstreams.rate_limits = common::no_rate_limits();
    let server = common::start(config).await;
    crate::upstreams::llm_jobs_at_once(&server, 2).await;
    let calls = standin.requests_of(Route::Llm).len();
    assert!(calls > 8, "{calls} calls: more than one window's budget");
    assert_eq!(standin.budget_refused(), 0, "429s from the provider");
    let (_, body) = server.admin("/health/detailed").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen = &health["components"]["llm"]["provider_limits"]["requests"];
    assert_eq!(seen["limit"], 8, "{health}");
}
