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
        // A lease, and the grace a live runner gets to renew once Redis answers again.
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "within a few lease periods: {:?}",
            killed.elapsed()
        );

        // The same idempotency key on the live replica starts the job again, and it completes.
        let events = second.generate(request).await;
        assert_ne!(events[0].job_id, job_id, "a new attempt");
        final_article(&events);
    });
}

/// Redis stops answering for 6 s while a job runs on one replica and is watched on another
/// (its lease lapses meanwhile, and batches time out here that Redis runs when it resumes):
/// the watcher still gets the job's real end, the stream holds every event once, and the
/// article is served everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_pause_mid_job_loses_nothing_and_fails_no_one() {
    let redis = RedisServer::start();
    let gate = Gate::new();
    // The runner's Redis breaker opens during the pause and, once Redis is back, lets its
    // lease renewal through only after its cool-down; the watcher's patient client never
    // opens its breaker, so it looks at the lapsed lease in that window.
    let mut first = common::start_with(shared(&redis), gate.agents()).await;
    let mut patient = shared(&redis);
    patient.upstreams.redis_timeout = Duration::from_secs(3);
    let mut second = common::start(patient).await;
    let (mut stream, job_id) = first.held_job(&gate, request("Pension buyouts")).await;
    let mut watched = second.watch(job_id.clone(), 0).await;
    assert_eq!(next(&mut watched).await.unwrap().sequence, 1);

    // The job goes on (and ends) while Redis is stopped.
    let gate_opener = {
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            gate.open();
        })
    };
    tokio::task::block_in_place(|| redis.pause(Duration::from_secs(6)));
    gate_opener.await.unwrap();

    let here = collect(&mut stream).await;
    let article = final_article(&here);
    let there = tokio::time::timeout(Duration::from_secs(40), collect(&mut watched))
        .await
        .expect("the watcher gets the job's end");
    assert_eq!(
        final_article(&there),
        article,
        "the watcher's end is the job's: completed, with the article"
    );
    assert_eq!(shape(&there), shape(&here), "every event, once, in order");
    assert_eq!(second.article(job_id.clone()).await, article);
    let stored = redis
        .cli(&["XLEN", &format!("dakota:v1:job:{job_id}:events")])
        .unwrap();
    assert_eq!(
        stored.trim_start_matches("(integer) "),
        (here.len() + 1).to_string(),
        "the stream holds each event once"
    );
}

/// Redis restarts empty after a job completed: the replica that ran it writes its records
/// again, so another replica still serves the article and the same idempotency key
/// re-attaches to it instead of starting a duplicate.
#[tokio::test]
async fn a_redis_that_lost_everything_gets_its_finished_jobs_back() {
    let mut redis = RedisServer::start();
    let mut first = common::start(shared(&redis)).await;
    let mut second = common::start(shared(&redis)).await;
    let mut request = request("Endowment spending rules");
    request.idempotency_key = "endowment-1".into();
    let events = first.generate(request.clone()).await;
    let (job_id, article) = (events[0].job_id.clone(), final_article(&events));

    redis.kill();
    redis.restart();
    assert!(
        redis.keys("dakota:v1:job:*").is_empty(),
        "Redis starts empty"
    );
    let started = Instant::now();
    let fetched = loop {
        let answer = second
            .client
            .get_article(api::GetArticleRequest {
                job_id: job_id.clone(),
            })
            .await;
        match answer {
            Ok(found) => break found.into_inner(),
            Err(status) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "the other replica never finds the job again: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(fetched, article);
    let again = second.generate(request).await;
    assert_eq!(again[0].job_id, job_id, "re-attached, not a duplicate");
    assert_eq!(final_article(&again), article);
}

/// Redis restarts empty while a job runs: its runner writes the job's records again (meta,
/// idempotency key, the events so far), so another replica replays it whole from the first
/// event and its key re-attaches to it.
#[tokio::test]
async fn a_redis_restarted_mid_job_gets_the_running_job_back() {
    let mut redis = RedisServer::start();
    let gate = Gate::new();
    let mut first = common::start_with(shared(&redis), gate.agents()).await;
    let mut second = common::start(shared(&redis)).await;
    let mut request = request("Insurance general accounts");
    request.idempotency_key = "general-accounts-1".into();
    let (mut stream, job_id) = first.held_job(&gate, request.clone()).await;

    redis.kill();
    redis.restart();
    gate.open();
    let here = collect(&mut stream).await;
    let started = Instant::now();
    let replayed = loop {
        let watched = second
            .client
            .watch_job(api::WatchJobRequest {
                job_id: job_id.clone(),
                after_sequence: 0,
            })
            .await;
        if let Ok(watched) = watched {
            let events = collect(&mut watched.into_inner()).await;
            if events.first().is_some_and(|e| e.sequence == 1) && events.len() == here.len() + 1 {
                break events;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the other replica never replays the whole job"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shape(&replayed[1..]), shape(&here));
    assert_eq!(final_article(&replayed), final_article(&here));
    let again = second.generate(request).await;
    assert_eq!(again[0].job_id, job_id, "re-attached, not a duplicate");
}

/// `calls=` of every command in `INFO commandstats`, summed.
fn redis_commands(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Watchers of a job on another replica cost Redis what one does: one blocking reader per
/// replica, not a poll per watcher (which, every 100 ms, made 100 watchers 1,000 reads a
/// second). Every watcher still gets every event and the end. `DAKOTA_WATCHERS` sets how many
/// (100 by default); the figures are printed (`--no-capture`).
#[tokio::test(flavor = "multi_thread")]
async fn watchers_on_another_replica_cost_redis_a_few_commands_a_second_however_many() {
    let watchers: usize = std::env::var("DAKOTA_WATCHERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let redis = RedisServer::start();
    let gate = Gate::new();
    let mut first = common::start_with(shared(&redis), gate.agents()).await;
    let mut second = common::start(shared(&redis)).await;
    let (mut stream, job_id) = first
        .held_job(&gate, request("Pension risk transfer"))
        .await;
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let mut watched = second.watch(job_id.clone(), 0).await;
        assert_eq!(next(&mut watched).await.unwrap().sequence, 1);
        streams.push(watched);
    }
    // Every watcher caught up and handed to the reader; then a window with the job held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, window) = (redis_commands(&redis), Duration::from_secs(3));
    tokio::time::sleep(window).await;
    let per_second = (redis_commands(&redis) - before) as f64 / window.as_secs_f64();
    println!(
        "{watchers} watchers of a running job on another replica: {per_second:.1} Redis commands a second (both replicas, the runner's lease and publishing included)"
    );
    assert!(
        per_second < 60.0,
        "{per_second:.1} commands a second for {watchers} watchers"
    );

    // Each watcher read in its own task: the delay from the runner's event to it.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut watched| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(event) = next(&mut watched).await {
                    let at = std::time::SystemTime::now();
                    let sent = event
                        .timestamp
                        .and_then(|t| std::time::SystemTime::try_from(t).ok());
                    let delay = sent.and_then(|s| at.duration_since(s).ok());
                    seen.push((event, delay));
                }
                seen
            })
        })
        .collect();
    let opened = std::time::SystemTime::now();
    gate.open();
    let here = collect(&mut stream).await;
    let mut delays = Vec::new();
    for reader in readers {
        let seen = reader.await.unwrap();
        let events: Vec<_> = seen.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(shape(&events), shape(&here), "every event, in order");
        final_article(&events);
        // Only what the runner emitted once the window was over.
        let after_open = |e: &api::GenerateEvent| {
            e.timestamp
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
                .is_some_and(|t| t >= opened)
        };
        delays.extend(
            seen.into_iter()
                .filter(|(e, _)| after_open(e))
                .filter_map(|(_, d)| d),
        );
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    println!(
        "runner -> remote watcher, {} events: p50 {:?}, p99 {:?}",
        delays.len(),
        at(0.5),
        at(0.99)
    );
}
