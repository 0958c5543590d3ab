//! The two-level cache and single-flight (SPEC §6), against the stand-in and real
//! `redis-server` processes: what a repeated topic saves, what a burst costs, and Redis going
//! away in the middle of a run of jobs.
use std::time::Duration;

use dakota::api::{self, generate_event::Event};
use dakota_server::config::{Config, Secret};
use futures_util::future::join_all;

use crate::{
    common::{self, final_article},
    redis_server::RedisServer,
    standin::{Fault, Route, StandIn},
    upstreams::{config as upstream_config, llm_request},
};

/// The stand-in's upstreams, with deterministic LLM requests (temperature 0: cacheable).
fn cached_config(standin: &StandIn) -> Config {
    let mut config = upstream_config(standin);
    config.upstreams.llm_temperature = 0.0;
    config
}

fn with_redis(mut config: Config, redis: &RedisServer) -> Config {
    config.upstreams.redis_url = Some(Secret::new(redis.url()));
    config
}

/// Agents whose `agent_completed` event reports a cache hit.
fn cache_hits(events: &[api::GenerateEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::AgentCompleted(a)) if a.cache_hit => Some(a.agent.clone()),
            _ => None,
        })
        .collect()
}

/// The `agent_completed` event of `agent` (its last, should it run twice).
fn completed<'a>(events: &'a [api::GenerateEvent], agent: &str) -> &'a api::AgentCompleted {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Some(Event::AgentCompleted(a)) if a.agent == agent => Some(a),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{agent} completed"))
}

/// Requests the stand-in has received on the routes agents call.
fn agent_requests(standin: &StandIn) -> usize {
    [Route::Llm, Route::VectorStore, Route::Serper, Route::Page]
        .into_iter()
        .map(|route| standin.requests_of(route).len())
        .sum()
}

/// The call counts of a job that sent `requests` to a fault-free stand-in (one request per
/// call the cache did not answer): `cache_hit` is "every call cached", the run metrics
/// hold the same counts per agent and their sums.
fn check_call_counts(events: &[api::GenerateEvent], requests: usize) {
    let metrics = final_article(events).metrics.clone().unwrap();
    let mut uncached = 0;
    for event in events {
        let Some(Event::AgentCompleted(a)) = &event.event else {
            continue;
        };
        assert!(a.cached_calls <= a.calls, "{a:?}");
        assert_eq!(
            a.cache_hit,
            a.calls > 0 && a.cached_calls == a.calls,
            "{a:?}"
        );
        uncached += (a.calls - a.cached_calls) as usize;
    }
    assert_eq!(uncached, requests, "each call the cache did not answer");
    for a in &metrics.agents {
        assert_eq!(
            a.cache_hit,
            a.calls > 0 && a.cached_calls == a.calls,
            "{a:?}"
        );
    }
    let sum = |f: fn(&api::AgentMetrics) -> u32| metrics.agents.iter().map(f).sum::<u32>();
    assert_eq!(metrics.calls, sum(|a| a.calls));
    assert_eq!(metrics.cached_calls, sum(|a| a.cached_calls));
    let hits = metrics.agents.iter().filter(|a| a.cache_hit).count();
    assert_eq!(metrics.cache_hits as usize, hits);
}

/// LLM requests of kind `kind` the stand-in has received.
fn llm_requests(standin: &StandIn, kind: &str) -> u32 {
    let n = standin
        .requests_of(Route::Llm)
        .iter()
        .filter(|r| r.llm_kind() == kind)
        .count();
    n as u32
}

/// At the default temperature no LLM answer is cached, yet a repeated job's searches are:
/// the researchers report them as cached calls while their `cache_hit` stays false, as
/// their query-writing LLM calls went upstream.
#[tokio::test]
async fn a_repeated_job_counts_its_cached_searches_though_its_llm_calls_are_not_cached() {
    let standin = StandIn::start().await;
    let config = upstream_config(&standin);
    assert!(
        config.upstreams.llm_temperature > 0.0,
        "LLM answers not cached"
    );
    let mut server = common::start(config).await;

    let first = server.generate(llm_request()).await;
    check_call_counts(&first, agent_requests(&standin));
    let web = completed(&first, "web_researcher");
    let searches = standin.requests_of(Route::Serper).len() as u32;
    assert!(searches > 0);
    assert_eq!(
        web.calls,
        searches + llm_requests(&standin, "web_researcher")
    );
    assert_eq!((web.cached_calls, web.cache_hit), (0, false));
    let kb = completed(&first, "kb_researcher");
    let kb_searches = standin.requests_of(Route::VectorStore).len() as u32;
    assert_eq!(
        kb.calls,
        kb_searches + llm_requests(&standin, "kb_researcher")
    );
    assert_eq!(kb.cached_calls, 0);

    let (before, web_llm, kb_llm) = (
        agent_requests(&standin),
        llm_requests(&standin, "web_researcher"),
        llm_requests(&standin, "kb_researcher"),
    );
    let second = server.generate(llm_request()).await;
    check_call_counts(&second, agent_requests(&standin) - before);
    assert_eq!(standin.requests_of(Route::Serper).len() as u32, searches);
    assert_eq!(
        standin.requests_of(Route::VectorStore).len() as u32,
        kb_searches
    );
    let web = completed(&second, "web_researcher");
    let asked = llm_requests(&standin, "web_researcher") - web_llm;
    assert!(asked > 0, "the query-writing LLM call is made again");
    assert_eq!(
        (web.calls, web.cached_calls, web.cache_hit),
        (searches + asked, searches, false),
        "every search cached, the LLM call not: {web:?}"
    );
    let kb = completed(&second, "kb_researcher");
    let asked = llm_requests(&standin, "kb_researcher") - kb_llm;
    assert_eq!(
        (kb.calls, kb.cached_calls, kb.cache_hit),
        (kb_searches + asked, kb_searches, false),
        "{kb:?}"
    );
    let metrics = final_article(&second).metrics.clone().unwrap();
    assert!(
        metrics.cached_calls >= searches + kb_searches,
        "{metrics:?}"
    );
    let record = metrics
        .agents
        .iter()
        .find(|a| a.agent == "web_researcher")
        .unwrap();
    assert_eq!(
        (record.calls, record.cached_calls, record.cache_hit),
        (web.calls, web.cached_calls, web.cache_hit)
    );
}

/// A second replica sharing Redis finds the first's searches there and counts them; the
/// pages it fetches are its own (they never travel to Redis).
#[tokio::test]
async fn a_replica_sharing_redis_counts_the_searches_another_paid_for() {
    let redis = RedisServer::start();
    let standin = StandIn::start().await;
    let config = with_redis(upstream_config(&standin), &redis);
    common::start(config.clone())
        .await
        .generate(llm_request())
        .await;
    let (before, searches, web_llm) = (
        agent_requests(&standin),
        standin.requests_of(Route::Serper).len() as u32,
        llm_requests(&standin, "web_researcher"),
    );
    let events = common::start(config).await.generate(llm_request()).await;
    check_call_counts(&events, agent_requests(&standin) - before);
    assert_eq!(standin.requests_of(Route::Serper).len() as u32, searches);
    let web = completed(&events, "web_researcher");
    let asked = llm_requests(&standin, "web_researcher") - web_llm;
    assert_eq!(
        (web.calls, web.cached_calls, web.cache_hit),
        (searches + asked, searches, false),
        "the searches from Redis, the LLM call not: {web:?}"
    );
    let kb = completed(&events, "kb_researcher");
    assert!(kb.cached_calls > 0 && kb.cached_calls < kb.calls, "{kb:?}");
}

fn search_request(query: &str) -> api::SearchKnowledgeBaseRequest {
    api::SearchKnowledgeBaseRequest {
        queries: vec![query.into()],
        max_results: 3,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_repeated_topic_makes_no_search_requests_and_reports_its_hits() {
    let standin = StandIn::start().await;
    let mut server = common::start(cached_config(&standin)).await;

    let first = server.generate(llm_request()).await;
    let first_article = final_article(&first);
    // Within the first job only a revision's repeat of an identical request can hit (the
    // stand-in's writer gives the same draft again, so SEO and fact check ask the same).
    let first_hits = cache_hits(&first);
    assert!(
        first_hits
            .iter()
            .all(|a| a == "seo_specialist" || a == "fact_checker"),
        "{first_hits:?}"
    );
    assert_eq!(
        first_article.metrics.as_ref().unwrap().cache_hits as usize,
        first_hits.len()
    );
    let searches = |standin: &StandIn| {
        (
            standin.requests_of(Route::VectorStore).len(),
            standin.requests_of(Route::Serper).len(),
            standin
                .requests_of(Route::Llm)
                .iter()
                .filter(|r| r.llm_kind() != "stream")
                .count(),
        )
    };
    let (kb_before, web_before, llm_before) = searches(&standin);
    assert!(kb_before > 0 && web_before > 0 && llm_before > 0);
    let pages_before = standin.requests_of(Route::Page).len();
    assert!(pages_before > 0, "the fact check fetched its sources");

    let second = server.generate(llm_request()).await;
    let article = final_article(&second);
    let (kb_after, web_after, llm_after) = searches(&standin);
    assert_eq!(
        kb_after, kb_before,
        "no knowledge-base request the second time"
    );
    assert_eq!(
        web_after, web_before,
        "no web-search request the second time"
    );
    assert_eq!(
        llm_after, llm_before,
        "deterministic LLM answers come from the cache"
    );
    let hits = cache_hits(&second);
    for agent in ["kb_researcher", "web_researcher"] {
        assert!(
            hits.iter().any(|a| a == agent),
            "{agent} reports a hit: {hits:?}"
        );
    }
    let metrics = article.metrics.as_ref().unwrap();
    assert_eq!(metrics.cache_hits as usize, hits.len());
    assert!(
        metrics.agents.iter().filter(|a| a.cache_hit).count() >= 2,
        "the run metrics say which agents were answered by the cache"
    );
    assert!(article.markdown.len() > 500, "the article is whole");

    // A changed audience changes the prompts: those LLM requests are misses.
    let mut other_audience = llm_request();
    other_audience.audience = "first-time retail investors".into();
    server.generate(other_audience).await;
    let (_, _, llm_third) = searches(&standin);
    assert!(
        llm_third > llm_after,
        "a different audience is a different LLM request"
    );

    let (_, scrape) = server.admin("/metrics").await;
    assert!(
        scrape
            .contains(r#"dakota_cache_requests_total{layer="memory",upstream="kb",result="hit"}"#),
        "{scrape}"
    );
    let (_, perf) = server.admin("/performance/kb-search").await;
    let perf: serde_json::Value = serde_json::from_str(&perf).unwrap();
    assert!(
        perf["cache_hit_ratio"].as_f64().is_some_and(|r| r > 0.0),
        "{perf}"
    );
}

#[tokio::test]
async fn a_changed_model_is_a_miss() {
    // Replicas sharing Redis, so the second finds the first's answers: only the model differs
    // for the third.
    let redis = RedisServer::start();
    let standin = StandIn::start().await;
    let mut config = with_redis(cached_config(&standin), &redis);
    let seo_requests = |standin: &StandIn| {
        standin
            .requests_of(Route::Llm)
            .iter()
            .filter(|r| r.llm_kind() == "seo_specialist")
            .count()
    };
    common::start(config.clone())
        .await
        .generate(llm_request())
        .await;
    let first = seo_requests(&standin);
    common::start(config.clone())
        .await
        .generate(llm_request())
        .await;
    assert_eq!(
        seo_requests(&standin),
        first,
        "the same model: answered by Redis"
    );
    config.upstreams.model_nano = "test-nano-2".into();
    common::start(config).await.generate(llm_request()).await;
    assert!(seo_requests(&standin) > first, "a new model is asked again");
}

#[tokio::test]
async fn fifty_identical_searches_in_flight_make_one_upstream_request() {
    let standin = StandIn::start().await;
    let server = common::start(cached_config(&standin)).await;
    // The first request is slow, so the other 49 arrive while it is in flight.
    standin.fault(
        Route::VectorStore,
        [Fault::Delay(Duration::from_millis(400))],
    );
    let calls = (0..50).map(|_| {
        let mut client = server.client.clone();
        async move {
            client
                .search_knowledge_base(search_request("pension liquidity"))
                .await
        }
    });
    let answers = join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(standin.requests_of(Route::VectorStore).len(), 1);
    let (_, scrape) = server.admin("/metrics").await;
    assert!(
        scrape.contains(r#"dakota_cache_coalesced_total{upstream="kb"} 49"#),
        "{scrape}"
    );
}

#[tokio::test]
async fn a_burst_over_two_replicas_sharing_redis_makes_one_upstream_request() {
    let redis = RedisServer::start();
    let standin = StandIn::start().await;
    let first = common::start(with_redis(cached_config(&standin), &redis)).await;
    let second = common::start(with_redis(cached_config(&standin), &redis)).await;
    standin.fault(
        Route::VectorStore,
        [Fault::Delay(Duration::from_millis(400))],
    );
    let calls = (0..50).map(|i| {
        let mut client = if i % 2 == 0 { &first } else { &second }.client.clone();
        async move {
            client
                .search_knowledge_base(search_request("annuity buy-in"))
                .await
        }
    });
    let answers = join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(standin.requests_of(Route::VectorStore).len(), 1);
    assert_eq!(redis.keys("dakota:v1:cache:kb:*").len(), 1);

    // A third replica started later finds the answer in Redis.
    let mut third = common::start(with_redis(cached_config(&standin), &redis)).await;
    third
        .client
        .search_knowledge_base(search_request("annuity buy-in"))
        .await
        .unwrap();
    assert_eq!(standin.requests_of(Route::VectorStore).len(), 1);
    let (_, scrape) = third.admin("/metrics").await;
    assert!(
        scrape
            .contains(r#"dakota_cache_requests_total{layer="redis",upstream="kb",result="hit"} 1"#),
        "{scrape}"
    );
}

#[tokio::test]
async fn jobs_complete_while_redis_dies_and_redis_is_used_again_when_back() {
    let mut redis = RedisServer::start();
    let standin = StandIn::start().await;
    let mut config = with_redis(cached_config(&standin), &redis);
    config.upstreams.redis_timeout = Duration::from_millis(200);
    let mut server = common::start(config).await;
    let topics = [
        "Pension risk transfer",
        "Private credit",
        "Liability-driven investing",
    ];

    let mut request = llm_request();
    request.topic = topics[0].into();
    final_article(&server.generate(request).await);
    assert!(
        !redis.keys("dakota:v1:cache:*").is_empty(),
        "answers went to Redis"
    );

    redis.kill();
    for topic in &topics[1..] {
        let mut request = llm_request();
        request.topic = (*topic).into();
        let events = server.generate(request).await;
        final_article(&events);
    }
    let (_, health) = server.admin("/health/detailed").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        health["components"]["redis"]["status"], "degraded",
        "{health}"
    );
    assert_eq!(health["status"], "degraded");
    let (_, scrape) = server.admin("/metrics").await;
    assert!(scrape.contains("dakota_redis_up 0"), "{scrape}");

    redis.restart();
    // Past the breaker's cool-down, the next job's writes reach the new Redis.
    let started = std::time::Instant::now();
    let mut n = 0;
    while redis.keys("dakota:v1:cache:*").is_empty() {
        assert!(started.elapsed() < common::PATIENCE, "Redis is used again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        n += 1;
        let mut request = llm_request();
        request.topic = format!("Defined benefit funding, take {n}");
        final_article(&server.generate(request).await);
    }
    let (_, scrape) = server.admin("/metrics").await;
    assert!(scrape.contains("dakota_redis_up 1"), "{scrape}");
}

#[tokio::test]
async fn a_malformed_redis_url_is_a_clear_start_up_error() {
    let mut config = common::config();
    config.upstreams.redis_url = Some(Secret::new("http://user:hunter2@cache:6379"));
    let error = dakota_server::app::Server::start(config)
        .await
        .err()
        .expect("refused at start-up")
        .to_string();
    assert!(error.contains("REDIS_URL"), "{error}");
    assert!(
        !error.contains("hunter2"),
        "the URL's password is not echoed: {error}"
    );
}

#[tokio::test]
async fn the_rate_limit_is_counted_across_replicas_sharing_redis() {
    let redis = RedisServer::start();
    let standin = StandIn::start().await;
    let limited = || {
        let mut config = with_redis(cached_config(&standin), &redis);
        config.upstreams.rate_limits = vec![("kb".into(), "3".into())];
        config.upstreams.rate_bursts = vec![("kb".into(), "3".into())];
        config
    };
    let first = common::start(limited()).await;
    let second = common::start(limited()).await;
    // One bucket for the account, not minute windows: wherever in the minute this starts
    // (a fixed window let twice the limit through around a minute's edge), three calls go
    // at once and the next waits its 20 s.
    let search = |server: &common::TestServer, query: &'static str| {
        let mut client = server.client.clone();
        async move { client.search_knowledge_base(search_request(query)).await }
    };
    // Three calls, the account's limit for this minute, spread over two replicas.
    search(&first, "pension liquidity").await.unwrap();
    search(&second, "annuity pricing").await.unwrap();
    search(&first, "private credit").await.unwrap();
    assert_eq!(standin.requests_of(Route::VectorStore).len(), 3);
    // A fourth waits for its turn, whichever replica it goes to.
    let fourth =
        tokio::time::timeout(Duration::from_secs(2), search(&second, "liability hedging")).await;
    assert!(fourth.is_err(), "over the shared limit the call waits");
    assert_eq!(standin.requests_of(Route::VectorStore).len(), 3);
    assert_eq!(redis.keys("dakota:v1:rate:kb*"), vec!["dakota:v1:rate:kb"]);
}
