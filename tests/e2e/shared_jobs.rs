//! Jobs any replica can serve: two servers sharing a real `redis-server`, a job started on
//! one followed, fetched and cancelled on the other, and a replica killed mid-job.
use std::time::{Duration, Instant};

use dakota::api::{self, JobState};
use dakota_server::config::{Config, Secret};
use tonic::Code;

use crate::{
    common::{self, Gate, collect, final_article, next, request},
    redis_server::RedisServer,
    standin::{Fault, Route, StandIn},
};

fn shared(redis: &RedisServer) -> Config {
    let mut config = common::config();
    config.upstreams.redis_url = Some(Secret::new(redis.url()));
    config.job_lease = Duration::from_secs(1);
    config
}

/// (sequence, kind) of each event, to compare two streams of one job.
fn shape(events: &[api::GenerateEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            let kind = format!("{:?}", e.event.as_ref().map(std::mem::discriminant));
            (e.sequence, kind)
        })
        .collect()
}

#[tokio::test]
async fn a_job_started_on_one_replica_is_watched_and_fetched_on_another() {
    let redis = RedisServer::start();
    let gate = Gate::new();
    let mut first = common::start_with(shared(&redis), gate.agents()).await;
    let mut second = common::start(shared(&redis)).await;

    let (mut stream, job_id) = first
        .held_job(&gate, request("Pension risk transfer"))
        .await;
    // The second replica knows the job while it runs.
    let mut watched = second.watch(job_id.clone(), 0).await;
    let status = second
        .client
        .get_article(api::GetArticleRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    gate.open();

    let here = collect(&mut stream).await;
    let there = collect(&mut watched).await;
    // `held_job` read the first event (sequence 1) off the first stream.
    assert_eq!(there[0].sequence, 1);
    assert_eq!(
        shape(&there[1..]),
        shape(&here),
        "the same events, in order"
    );
    assert_eq!(common::streamed_text(&there), common::streamed_text(&here));
    let article = final_article(&here);
    assert_eq!(
        final_article(&there),
        article,
        "the completed event carries the article"
    );

    assert_eq!(second.article(job_id).await, article);
}

#[tokio::test]
async fn a_cancel_sent_to_another_replica_stops_the_job_where_it_runs() {
    let redis = RedisServer::start();
    let gate = Gate::new();
    let mut first = common::start_with(shared(&redis), gate.agents()).await;
    let mut second = common::start(shared(&redis)).await;
    let (mut stream, job_id) = first.held_job(&gate, request("Private credit")).await;

    let response = second
        .client
        .cancel_job(api::CancelJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.state(), JobState::Cancelled);
    assert!(gate.wait_dropped().await, "the held agent was dropped");
    let events = collect(&mut stream).await;
    assert_eq!(common::failed(&events).code, Code::Cancelled as i32);
}

#[test]
fn a_killed_replica_fails_its_watchers_elsewhere_and_its_key_starts_the_job_again() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start();
    let standin = runtime.block_on(StandIn::start());
    // The research phase's two LLM calls never answer: the job stays running.
    standin.fault(
        Route::Llm,
        [Fault::Stall { chunks: 0 }, Fault::Stall { chunks: 0 }],
    );
    let first = common::ServerProcess::spawn(
        &["--job-lease", "1s", "--llm-timeout", "120s"],
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("OPENAI_BASE_URL", standin.openai_url().as_str()),
            ("OPENAI_API_KEY", "sk-test-0123456789"),
        ],
    );
    runtime.block_on(async {
        let mut second = common::start(shared(&redis)).await;
        let mut request = request("Liability-driven investing");
        request.idempotency_key = "ldi-attempt".into();
        let mut client = first.client().await;
        let mut stream = client.generate(request.clone()).await.unwrap().into_inner();
        let job_id = next(&mut stream).await.unwrap().job_id;
        let mut watched = second.watch(job_id.clone(), 0).await;
        // The watcher has seen the job running before its replica dies.
        assert_eq!(next(&mut watched).await.unwrap().sequence, 1);

        let killed = Instant::now();
        first.kill();
        let rest = collect(&mut watched).await;
        let failed = common::failed(&rest);
        assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
        assert!(failed.message.contains("replica"), "{}", failed.message);
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "within a few lease periods: {:?}",
            killed.elapsed()
        );

        // The same idempotency key on the live replica starts the job again, and it completes.
        let events = second.generate(request).await;
        assert_ne!(events[0].job_id, job_id, "a new attempt");
        final_article(&events);
    });
}
