//! Upstreams that misbehave on purpose (issue 19): bodies of hundreds of megabytes, a writer
//! stream that ignores `max_tokens`, usage counts of 2^63, a redirect that would carry the
//! Serper key to another origin, and cached values in Redis that are garbage or huge.
use dakota::api;
use dakota_server::config::Secret;

use crate::{
    common::{self, final_article},
    redis_server::RedisServer,
    standin::{Fault, Route, StandIn},
    upstreams::{config, llm_request, warnings},
};

const MB: usize = 1 << 20;

/// A 50 MB chat answer, a 500 with a 300 MB body and a 50 MB page of search results: each
/// is read only up to its upstream's limit (4, 0.004 and 1 MiB by default), and the job
/// goes on without them.
#[tokio::test]
async fn huge_answers_are_not_read_past_their_limit() {
    let standin = StandIn::start().await;
    standin.fault(
        Route::Llm,
        [
            Fault::Huge {
                status: 200,
                bytes: 50 * MB,
            },
            Fault::Huge {
                status: 500,
                bytes: 300 * MB,
            },
        ],
    );
    standin.fault(
        Route::Serper,
        [Fault::Huge {
            status: 200,
            bytes: 50 * MB,
        }],
    );
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(article.markdown.len() > 500);
    // What went out before the server hung up: the limits plus what sockets buffer, not
    // the 400 MB offered.
    let sent = standin.hostile_bytes_sent();
    assert!(sent < 40 * MB, "{} MB of hostile bodies read", sent / MB);
    let degraded = article.metrics.unwrap().degraded;
    assert!(
        degraded.iter().any(|d| d.message.contains("byte limit")),
        "{degraded:?}"
    );
}

/// The writer's stream never ends: it is cut where its `max_tokens` says it must have
/// ended, and the job still ends with exactly one final event.
#[tokio::test]
async fn a_writer_stream_that_ignores_max_tokens_is_cut() {
    let standin = StandIn::start().await;
    standin.fault(Route::LlmStream, std::iter::repeat_n(Fault::Endless, 20));
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let finals = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                Some(
                    api::generate_event::Event::Completed(_)
                        | api::generate_event::Event::Failed(_)
                )
            )
        })
        .count();
    assert_eq!(finals, 1, "exactly one final event");
    let sent = standin.hostile_bytes_sent();
    assert!(sent < 100 * MB, "{} MB of endless streams read", sent / MB);
    let streamed: usize = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(api::generate_event::Event::ContentDelta(d)) => Some(d.text.len()),
            _ => None,
        })
        .sum();
    assert!(streamed < 10 * MB, "{streamed} bytes of deltas streamed");
}

/// Usage of 2^63 tokens on every structured answer: the totals stay within what the calls
/// can have used, and the cost is not 10^15 dollars.
#[tokio::test]
async fn usage_far_above_max_tokens_is_capped() {
    let standin = StandIn::start().await;
    standin.fault(Route::Llm, std::iter::repeat_n(Fault::WildUsage, 40));
    let mut server = common::start(config(&standin)).await;
    let article = final_article(&server.generate(llm_request()).await);
    let metrics = article.metrics.unwrap();
    assert!(
        metrics.total_output_tokens < 1_000_000,
        "{}",
        metrics.total_output_tokens
    );
    assert!(
        metrics.total_input_tokens < 10_000_000,
        "{}",
        metrics.total_input_tokens
    );
    assert!(
        metrics.estimated_cost_usd < 100.0,
        "{}",
        metrics.estimated_cost_usd
    );
}

/// Serper answers with a redirect to another origin: the request, and its `X-API-KEY`, do
/// not follow it; web search degrades instead.
#[tokio::test]
async fn the_serper_key_does_not_follow_a_redirect() {
    let (standin, elsewhere) = (StandIn::start().await, StandIn::start().await);
    let target = format!("{}/search", elsewhere.url);
    standin.fault(
        Route::Serper,
        std::iter::repeat_n(Fault::Redirect(target), 20),
    );
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    assert!(
        !standin.requests_of(Route::Serper).is_empty(),
        "Serper was asked"
    );
    let leaked = elsewhere.requests_of(Route::Serper);
    assert!(
        leaked.is_empty(),
        "followed to another origin with X-API-KEY {:?}",
        leaked.first().and_then(|r| r.header("x-api-key"))
    );
    assert!(warnings(&events).contains(&"WEB_SEARCH_FAILED".to_string()));
}

/// Cached web answers in Redis replaced by garbage and by a 5 MB value (over the 1 MiB web
/// limit): a replica reading them treats them as misses, asks Serper again and overwrites
/// them, instead of failing web search for the entries' hour.
#[tokio::test]
async fn undecodable_or_huge_cached_values_are_misses_and_are_overwritten() {
    let standin = StandIn::start().await;
    let redis = RedisServer::start();
    let shared = || {
        let mut config = config(&standin);
        config.upstreams.redis_url = Some(Secret::new(redis.url()));
        config
    };
    let mut first = common::start(shared()).await;
    final_article(&first.generate(llm_request()).await);
    let keys = redis.keys("dakota:v1:cache:web:*");
    assert!(!keys.is_empty(), "web answers cached in Redis");
    let huge = "x".repeat(5 * MB);
    for (i, key) in keys.iter().enumerate() {
        let value = if i % 2 == 0 {
            "not json"
        } else {
            huge.as_str()
        };
        redis.set_from_stdin(key, value.as_bytes());
    }
    let asked_before = standin.requests_of(Route::Serper).len();

    let mut second = common::start(shared()).await;
    let events = second.generate(llm_request()).await;
    final_article(&events);
    let warned = warnings(&events);
    assert!(
        !warned.iter().any(|w| w == "WEB_SEARCH_FAILED"),
        "{warned:?}"
    );
    assert!(
        standin.requests_of(Route::Serper).len() > asked_before,
        "Serper asked again"
    );
    for key in &keys {
        let value = redis.cli(&["GETRANGE", key, "0", "0"]).unwrap_or_default();
        assert!(
            value == "[" || value == "{",
            "{key} overwritten with an answer, starts with {value:?}"
        );
    }
}
