//! Jobs across calls: replay, idempotent re-attach, cancellation, bad input.
use std::time::Duration;

use dakota::api::{self, JobState, generate_event::Event};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{self, Gate, collect, final_article, next, request};

const TOPIC: &str = "Liquidity tiers in institutional portfolios";

#[tokio::test]
async fn watch_job_replays_after_a_dropped_stream_and_follows_live() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut req = request(TOPIC);
    req.idempotency_key = "replay-test".into();
    let mut stream = server.open(req).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut stream).await.unwrap());
    }
    gate.wait_entered(1).await;
    drop(stream); // the connection of the first client goes away mid-job
    let job_id = seen[0].job_id.clone();

    let mut resumed = server
        .client
        .watch_job(api::WatchJobRequest {
            job_id: job_id.clone(),
            after_sequence: 4,
        })
        .await
        .unwrap()
        .into_inner();
    gate.open();
    let rest = collect(&mut resumed).await;
    assert_eq!(
        rest[0].sequence, 5,
        "replay starts right after the last event seen"
    );
    seen.extend(rest);
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(event.sequence, i as u64 + 1);
    }
    let article = final_article(&seen);
    assert!(
        !gate.dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the job was not cancelled by the drop"
    );

    // A finished job replays every event, identical to the live ones.
    let replay = server.replay(job_id.clone()).await;
    assert_eq!(replay, seen);
    assert_eq!(server.article(job_id).await, article);
}

#[tokio::test]
async fn the_same_idempotency_key_attaches_to_the_same_job() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut req = request(TOPIC);
    req.idempotency_key = "same-key".into();
    let mut first = server.open(req.clone()).await;
    let first_event = next(&mut first).await.unwrap();
    gate.wait_entered(1).await;

    let mut second = server.open(req.clone()).await;
    gate.open();
    let second_events = collect(&mut second).await;
    assert_eq!(
        second_events[0], first_event,
        "the retry replays the same job from its start"
    );
    let mut first_events = vec![first_event];
    first_events.extend(collect(&mut first).await);
    assert_eq!(first_events, second_events);
    assert_eq!(
        gate.entered.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only one job ran"
    );

    // The key names that request: reusing it for another topic is an error, not a new job.
    let mut other = request("Factor investing");
    other.idempotency_key = "same-key".into();
    let status = server.client.generate(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["idempotency_key"]);
}

#[tokio::test]
async fn cancel_job_stops_a_running_job_and_its_agents() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let (mut stream, job_id) = server.held_job(&gate, request(TOPIC)).await;

    let running = server
        .client
        .get_article(api::GetArticleRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        running.code(),
        Code::FailedPrecondition,
        "no article while the job runs"
    );

    let response = server
        .client
        .cancel_job(api::CancelJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.state(), JobState::Cancelled);
    assert!(
        gate.wait_dropped().await,
        "the in-flight agent call was dropped"
    );
    let events = collect(&mut stream).await;
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::Cancelled as i32);
    assert_eq!(failed.phase, "research");
    let status = server
        .client
        .get_article(api::GetArticleRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Cancelled);
    // Cancelling a finished job changes nothing.
    let again = server
        .client
        .cancel_job(api::CancelJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state(), JobState::Cancelled);
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_job() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let (stream, job_id) = server.held_job(&gate, request(TOPIC)).await;
    drop(stream);
    assert!(
        gate.wait_dropped().await,
        "the abandoned job's agent call was dropped"
    );
    let events = server.replay(job_id).await;
    assert_eq!(common::failed(&events).code, Code::Cancelled as i32);
}

#[tokio::test]
async fn a_passed_deadline_fails_the_job_with_deadline_exceeded() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut req = tonic::Request::new(request(TOPIC));
    req.set_timeout(Duration::from_secs(3));
    let mut stream = server.open(req).await;
    let job_id = next(&mut stream).await.unwrap().job_id;
    while let Ok(Some(_)) = stream.message().await {}
    assert!(
        gate.wait_dropped().await,
        "the held agent call was dropped at the deadline"
    );
    // However the caller's stream ended, the job's own record says why it stopped.
    let events = server.replay(job_id).await;
    let failed = common::failed(&events);
    assert_eq!(
        failed.code,
        Code::DeadlineExceeded as i32,
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn agents_of_one_phase_run_concurrently() {
    let gate = Gate::new();
    let mut server = common::start_with(common::config(), gate.agents()).await;
    let mut stream = server.open(request(TOPIC)).await;
    gate.wait_entered(1).await;
    // web_researcher is held; kb_researcher and the outline planner finish beside it.
    let mut finished = Vec::new();
    while finished.len() < 2 {
        if let Some(Event::AgentCompleted(done)) = next(&mut stream).await.unwrap().event {
            finished.push(done.agent);
        }
    }
    finished.sort();
    assert_eq!(finished, ["kb_researcher", "research_synthesizer"]);
    gate.open();
    final_article(&collect(&mut stream).await);
}

#[tokio::test]
async fn a_full_job_table_answers_resource_exhausted_with_retry_info() {
    let gate = Gate::new();
    let mut config = common::config();
    config.max_jobs = 1;
    let mut server = common::start_with(config, gate.agents()).await;
    let mut running = server.open(request(TOPIC)).await;
    gate.wait_entered(1).await;
    let status = server
        .client
        .generate(request("Factor investing"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .is_some()
    );
    gate.open();
    final_article(&collect(&mut running).await);
    // A finished job makes room.
    let events = server.generate(request("Factor investing")).await;
    final_article(&events);
}

#[tokio::test]
async fn a_detached_job_with_a_key_is_cancelled_when_nobody_returns_within_the_grace() {
    let gate = Gate::new();
    let mut config = common::config();
    config.detach_grace = Duration::from_millis(400);
    let mut server = common::start_with(config, gate.agents()).await;
    let mut req = request(TOPIC);
    req.idempotency_key = "gone-for-good".into();
    let (stream, job_id) = server.held_job(&gate, req).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !gate.dropped.load(std::sync::atomic::Ordering::SeqCst),
        "still running inside the grace"
    );
    assert!(gate.wait_dropped().await, "cancelled once the grace passed");
    let events = server.replay(job_id).await;
    assert_eq!(common::failed(&events).code, Code::Cancelled as i32);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_violation_per_field() {
    let mut server = common::start(common::config()).await;
    let fields = |status: tonic::Status| -> Vec<String> {
        assert_eq!(status.code(), Code::InvalidArgument);
        status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    };
    let mut bad = request("   ");
    bad.word_count = Some(99);
    bad.custom_instructions = "x".repeat(1001);
    let status = server.client.generate(bad).await.unwrap_err();
    assert_eq!(
        fields(status),
        ["topic", "word_count", "custom_instructions"]
    );

    let mut bad = request(&"t".repeat(501));
    bad.word_count = Some(10_001);
    assert_eq!(
        fields(server.client.generate(bad).await.unwrap_err()),
        ["topic", "word_count"]
    );
    assert_eq!(
        fields(server.client.generate(request("ab")).await.unwrap_err()),
        ["topic"]
    );

    let unknown = "6f1c1e8e-0c51-4f7e-9a41-3f7b3c0e2a10".to_string();
    let status = server
        .client
        .watch_job(api::WatchJobRequest {
            job_id: unknown.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = server
        .client
        .get_article(api::GetArticleRequest {
            job_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = server
        .client
        .cancel_job(api::CancelJobRequest { job_id: unknown })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = server
        .client
        .get_article(api::GetArticleRequest {
            job_id: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(status), ["job_id"]);
}

#[tokio::test]
async fn knowledge_base_search_answers_each_query_in_order() {
    let mut server = common::start(common::config()).await;
    let response = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec![
                "duration and interest rate risk".into(),
                "hedge fund operational due diligence".into(),
            ],
            max_results: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 2);
    assert_eq!(response.results[0].query, "duration and interest rate risk");
    assert!(
        response
            .results
            .iter()
            .all(|r| (1..=3).contains(&r.hits.len()))
    );
    assert!(
        response.results[0].hits[0]
            .url
            .ends_with("interest-rate-risk-and-duration")
    );
    assert!(
        response.results[1].hits[0]
            .url
            .ends_with("hedge-fund-operational-due-diligence")
    );
    assert!(
        response.results[0]
            .hits
            .windows(2)
            .all(|w| w[0].score >= w[1].score)
    );

    let status = server
        .client
        .search_knowledge_base(api::SearchKnowledgeBaseRequest {
            queries: vec![],
            max_results: 100,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["queries", "max_results"]);
}

#[tokio::test]
async fn events_of_an_idempotent_job_carry_its_key() {
    let mut server = common::start(common::config()).await;
    let mut req = request(TOPIC);
    req.idempotency_key = "key-in-plan".into();
    let events = server.generate(req).await;
    let Some(Event::JobStarted(started)) = &events[0].event else {
        unreachable!()
    };
    assert_eq!(started.idempotency_key, "key-in-plan");
}

/// Finished jobs expire on a timer, with no new job needed to make room; `/metrics` shows
/// what the kept ones hold.
#[tokio::test]
async fn finished_jobs_expire_on_a_timer_and_their_memory_is_reported() {
    let mut config = common::config();
    config.job_ttl = Duration::from_millis(300);
    let mut server = common::start(config).await;
    let events = server.generate(request("Factor investing")).await;
    let job_id = events[0].job_id.clone();
    let (_, scrape) = server.admin("/metrics").await;
    let line = scrape
        .lines()
        .find(|l| l.starts_with("dakota_jobs_retained_bytes{state=\"finished\"}"))
        .expect("retained bytes are exported");
    let bytes: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 1_000.0, "{line}");
    let expired = tokio::time::timeout(common::PATIENCE, async {
        loop {
            let status = server
                .client
                .get_article(api::GetArticleRequest {
                    job_id: job_id.clone(),
                })
                .await;
            if matches!(&status, Err(s) if s.code() == Code::NotFound) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(expired.is_ok(), "the finished job expired by itself");
    let (_, scrape) = server.admin("/metrics").await;
    assert!(
        scrape.contains("dakota_jobs_retained{state=\"finished\"} 0"),
        "{scrape}"
    );
}
