//! Models that bend every limit a prompt states (empty and short arrays, over-long strings,
//! answers that never stop, nothing at all), rate limits without `Retry-After`, and servers
//! without strict schemas: every job with a working model ends with an article.
use std::{collections::HashMap, time::Duration};

use dakota::api;
use dakota_server::testing::upstream::llm::StructuredOutput;
use tonic::Code;

use crate::{
    common::{self, final_article},
    standin::{Route, Sloppy, StandIn},
    upstreams::{config, llm_request, warnings},
};

/// Every chat request the stand-in saw carried a `max_tokens` bound.
fn assert_bounded(standin: &StandIn) {
    let chats = standin.requests_of(Route::Llm);
    assert!(!chats.is_empty());
    for chat in &chats {
        assert!(
            chat.body["max_tokens"].as_u64().is_some_and(|n| n > 0),
            "{} sent without max_tokens",
            chat.llm_kind()
        );
    }
}

/// The corrective re-asks: the last user message of requests that carry one.
fn reasks(standin: &StandIn) -> Vec<String> {
    standin
        .requests_of(Route::Llm)
        .iter()
        .filter_map(|r| {
            let messages = r.body["messages"].as_array()?;
            (messages.len() > 2)
                .then(|| messages.last()?["content"].as_str().map(str::to_string))
                .flatten()
        })
        .collect()
}

/// The messages of the warnings with this code.
fn warning_messages(events: &[api::GenerateEvent], code: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(api::generate_event::Event::Warning(w)) if w.code == code => {
                Some(w.message.clone())
            }
            _ => None,
        })
        .collect()
}

/// Empty and one-item arrays have a safe repair: used at once (no corrective re-ask, which
/// would cost a whole answer more), with an `ANSWER_REPAIRED` warning naming the violation.
/// (Issue 21 changed this from a re-ask, then the repair.)
#[tokio::test]
async fn empty_and_short_arrays_are_repaired_at_once() {
    for sloppy in [Sloppy::EmptyArrays, Sloppy::ShortArrays] {
        let standin = StandIn::start().await;
        standin.sloppy(Route::Llm, sloppy);
        let mut server = common::start(config(&standin)).await;
        let events = server.generate(llm_request()).await;
        let article = final_article(&events);
        assert_bounded(&standin);
        assert!(reasks(&standin).is_empty(), "{:?}", reasks(&standin));
        let expected = if sloppy == Sloppy::EmptyArrays {
            "0 queries, expected 3-4"
        } else {
            "1 queries, expected 3-4"
        };
        let repaired = warning_messages(&events, "ANSWER_REPAIRED");
        assert!(
            repaired.iter().any(|m| m.contains(expected)),
            "{sloppy:?}: the warning names the violation: {repaired:?}"
        );
        // Repaired, not replaced: the SEO comes from the model's (padded) answer.
        let seo = article.metadata.unwrap().seo.unwrap();
        assert!((5..=7).contains(&seo.keywords.len()), "{seo:?}");
        assert_eq!(article.social.unwrap().thread.len(), 10);
    }
}

#[tokio::test]
async fn overlong_strings_are_cut_at_a_word_and_extra_items_dropped() {
    let standin = StandIn::start().await;
    standin.sloppy(Route::Llm, Sloppy::Overlong);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert_bounded(&standin);
    let repaired = warning_messages(&events, "ANSWER_REPAIRED");
    assert!(
        repaired
            .iter()
            .any(|m| m.contains("a title of 300 characters (1-60)")),
        "{repaired:?}"
    );
    let seo = article.metadata.unwrap().seo.unwrap();
    assert!(seo.title.chars().count() <= 60, "{}", seo.title);
    assert!(!seo.title.ends_with(' ') && !seo.title.is_empty());
    assert!(seo.meta_description.chars().count() <= 155);
    assert!((5..=7).contains(&seo.keywords.len()));
    let social = article.social.unwrap();
    assert_eq!(social.linkedin_posts.len(), 3);
    assert!(social.thread.iter().all(|p| p.chars().count() <= 280));
}

/// Structured answers that never stop are cut by `max_tokens`: `finish_reason: length` is an
/// answer that does not fit; after the re-ask, the offline version stands in.
#[tokio::test]
async fn answers_cut_off_by_max_tokens_degrade_to_the_offline_parts() {
    let standin = StandIn::start().await;
    standin.sloppy(Route::Llm, Sloppy::Ramble);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert_bounded(&standin);
    let metrics = article.metrics.unwrap();
    // The tokens the rambling answers cost are still the job's: both rounds of the degraded
    // SEO call (each cut off at its 200 tokens), priced at its model, in the job's total.
    let seo = metrics
        .agents
        .iter()
        .find(|a| a.agent == "seo_specialist" && a.phase == "analysis")
        .unwrap();
    assert!(seo.usage.unwrap().output_tokens >= 2 * 190, "{seo:?}");
    assert!(seo.estimated_cost_usd > 0.0, "{seo:?}");
    let sum: u64 = metrics
        .agents
        .iter()
        .map(|a| a.usage.unwrap().output_tokens)
        .sum();
    assert_eq!(metrics.total_output_tokens, sum);
    let degraded = metrics.degraded;
    let agents: Vec<&str> = degraded.iter().map(|d| d.agent.as_str()).collect();
    for agent in ["kb_researcher", "seo_specialist", "summary_writer"] {
        assert!(agents.contains(&agent), "{agent} in {agents:?}");
    }
    assert!(
        degraded
            .iter()
            .all(|d| d.cause == "invalid_answer" && d.message.contains("cut off")),
        "{degraded:?}"
    );
    assert!(warnings(&events).contains(&"SEO_SPECIALIST_DEGRADED".to_string()));
    // Degraded parts are reported with the provider that really produced them.
    let started: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(api::generate_event::Event::AgentCompleted(a)) => {
                Some((a.agent.clone(), a.provider.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(started.contains(&("seo_specialist".into(), "offline".into())));
    // What the model was asked before the offline version stood in is counted (by the
    // resilience stack, which sees every call): the question and its re-ask, and the tokens
    // the model wrote for them.
    let seo = article_agent(&events, "seo_specialist");
    assert_eq!(seo.calls, 2, "{seo:?}");
    assert!(seo.usage.is_some_and(|u| u.output_tokens > 0), "{seo:?}");
}

/// The `agent_completed` event of `agent`.
fn article_agent(events: &[api::GenerateEvent], agent: &str) -> api::AgentCompleted {
    events
        .iter()
        .find_map(|e| match &e.event {
            Some(api::generate_event::Event::AgentCompleted(a)) if a.agent == agent => {
                Some(a.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {agent} in the events"))
}

/// A writer that answers nothing usable (nothing at all, or drafts cut off at `max_tokens`
/// in every pass) no longer fails the job: the offline writer's draft, or the model's draft
/// completed from it, stands in with `CONTENT_WRITER_DEGRADED` (issue 21: the job fails only
/// when no article can be made). An unreachable model still fails it with UNAVAILABLE.
#[tokio::test]
async fn a_writer_with_no_usable_article_is_stood_in_for_and_an_unreachable_one_fails() {
    for sloppy in [Sloppy::Empty, Sloppy::Ramble] {
        let standin = StandIn::start().await;
        standin.sloppy(Route::LlmStream, sloppy);
        let mut server = common::start(config(&standin)).await;
        let events = server.generate(llm_request()).await;
        let article = final_article(&events);
        assert!(
            article
                .metadata
                .unwrap()
                .quality
                .unwrap()
                .contract_satisfied,
            "{sloppy:?}"
        );
        let warned = warnings(&events);
        assert!(
            warned.contains(&"CONTENT_WRITER_DEGRADED".to_string()),
            "{sloppy:?}: {warned:?}"
        );
        assert_bounded(&standin);
    }
    let standin = StandIn::start().await;
    let mut config = config(&standin);
    config.upstreams.openai_base_url = Some("http://127.0.0.1:9/v1".into());
    config.upstreams.max_attempts = 1;
    let mut server = common::start(config).await;
    let failed = common::failed(&server.generate(llm_request()).await);
    assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
}

/// 429 without `Retry-After` on the first two attempts of every call: retried seconds apart,
/// never opening the breaker, and the job completes. With `OPENAI_API_KEY=x` the upstream's
/// text is not mangled by redaction.
#[tokio::test]
async fn rate_limits_without_retry_after_are_waited_out_in_seconds() {
    let standin = StandIn::start().await;
    standin.rate_limit_each_call(2);
    let mut config = config(&standin);
    config.upstreams.openai_api_key = Some(dakota_server::config::Secret::new("x"));
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    final_article(&events);
    let mut attempts: HashMap<String, Vec<std::time::Instant>> = HashMap::new();
    for request in standin.requests_of(Route::Llm) {
        attempts
            .entry(request.body.to_string())
            .or_default()
            .push(request.at);
    }
    assert!(!attempts.is_empty());
    for times in attempts.values() {
        // Two 429s, then the answer (an identical later call goes straight through).
        assert!(times.len() >= 3, "{}", times.len());
        for pair in times[..3].windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
        }
    }
    let (_, health) = server.admin("/health/detailed").await;
    assert!(health.contains("Rate limit exceeded"), "{health}");
    assert!(!health.contains("[redacted]"), "{health}");
    assert!(health.contains(r#""llm":"closed""#), "{health}");
}

/// A server without strict schemas: the schema goes into the prompt, the answer is checked
/// by code, and the job completes without falling back.
#[tokio::test]
async fn servers_without_strict_schemas_are_asked_through_the_prompt() {
    for mode in [StructuredOutput::JsonObject, StructuredOutput::Prompt] {
        let standin = StandIn::start().await;
        let mut config = config(&standin);
        config.upstreams.llm_structured_output = mode;
        let mut server = common::start(config).await;
        let article = final_article(&server.generate(llm_request()).await);
        assert!(article.metrics.unwrap().degraded.is_empty(), "{mode:?}");
        for chat in standin.requests_of(Route::Llm) {
            if crate::standin::is_writer_stream(&chat.body) {
                continue;
            }
            let format = &chat.body["response_format"];
            match mode {
                StructuredOutput::JsonObject => assert_eq!(format["type"], "json_object"),
                _ => assert!(format.is_null()),
            }
            let system = chat.body["messages"][0]["content"].as_str().unwrap();
            assert!(system.contains("JSON Schema"), "{system}");
        }
    }
}

/// A model that obeys text injected into its sources cannot change what the article cites
/// nor put its instructions into it: both are removed by code, with warnings.
#[tokio::test]
async fn injected_links_and_recited_instructions_never_reach_the_article() {
    let standin = StandIn::start().await;
    standin.sloppy(Route::LlmStream, Sloppy::Injected);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        !article.markdown.contains("attacker.example"),
        "{}",
        article.markdown
    );
    assert!(
        !article.markdown.contains("You are the senior writer"),
        "{}",
        article.markdown
    );
    let urls: Vec<&str> = article.sources.iter().map(|s| s.url.as_str()).collect();
    for link in dakota_server::testing::text::links(&article.markdown) {
        assert!(
            urls.contains(&link.url.as_str()),
            "{} is a source",
            link.url
        );
    }
    let warned = warnings(&events);
    assert!(
        warned.contains(&"FOREIGN_LINKS_REMOVED".to_string()),
        "{warned:?}"
    );
    assert!(
        warned.contains(&"PROMPT_TEXT_REMOVED".to_string()),
        "{warned:?}"
    );
}
