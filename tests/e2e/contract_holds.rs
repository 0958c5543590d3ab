//! `completed` means the article contract holds, whatever a small model writes: drafts cut
//! off at `max_tokens`, a paragraph with no structure at all. And a small model's answers
//! cost no more tokens than they must: a repairable answer is not asked again.
use std::sync::Arc;

use dakota::api::{self, generate_event::Event};
use dakota_server::{
    testing::agents::{
        Agent, AgentContext, AgentFuture, Agents, Draft, WritingBrief, select::Upstreams,
    },
    testing::domain::SourceDoc,
    testing::pipeline::contract,
};

use crate::{
    common::{self, final_article},
    standin::{Fault, Latency, Route, Sloppy, StandIn},
    upstreams::{config, llm_request, warnings},
};

/// The contract problems of a finished article, checked by the server's own code.
fn contract_problems(article: &api::Article) -> Vec<contract::Problem> {
    let sources: Vec<SourceDoc> = article
        .sources
        .iter()
        .map(|source| SourceDoc {
            source: source.clone(),
            section: String::new(),
            text: String::new(),
        })
        .collect();
    let target = article.metadata.as_ref().unwrap().target_word_count as usize;
    contract::check(&article.markdown, &sources, target)
}

fn streamed_drafts(standin: &StandIn) -> usize {
    standin
        .requests_of(Route::Llm)
        .iter()
        .filter(|r| r.llm_kind() == "stream")
        .count()
}

/// A model that writes until `max_tokens` in every pass: the job completes with an article
/// that meets the contract, built on the model's complete sections, and no second revision
/// is spent once one did not help.
#[tokio::test]
async fn drafts_cut_off_at_max_tokens_still_make_an_article_that_meets_the_contract() {
    let standin = StandIn::start().await;
    standin.sloppy(Route::LlmStream, Sloppy::Ramble);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let problems = contract_problems(&article);
    assert!(problems.is_empty(), "{problems:?}\n{}", article.markdown);
    let warned = warnings(&events);
    assert!(
        warned.contains(&"CONTENT_WRITER_DEGRADED".to_string()),
        "{warned:?}"
    );
    assert!(
        !warned.contains(&"CONTRACT_NOT_MET".to_string()),
        "{warned:?}"
    );
    // The model's rambling never reaches the article. (Its complete sections are kept
    // when, completed by code, they meet the contract: `pipeline::salvage`'s tests; the
    // stand-in's are too short for the target, so the offline writer's draft stands in.)
    assert!(
        !article.markdown.contains("And so it goes on"),
        "{}",
        article.markdown
    );
    // The first draft and one revision that did not help; not a second one.
    assert_eq!(streamed_drafts(&standin), 2);
    assert!(
        article
            .metadata
            .unwrap()
            .quality
            .unwrap()
            .contract_satisfied
    );
}

/// Replaces whatever the writer wrote with its first paragraph of prose: no title, no
/// sections, no citations (what a 135M model can answer).
struct OneParagraph {
    inner: Arc<dyn Agent<WritingBrief, Draft>>,
}

impl Agent<WritingBrief, Draft> for OneParagraph {
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
            let mut output = self.inner.run(cx, brief).await?;
            output.value.markdown =
                "Private credit has grown quickly and pension funds are paying attention to it, \
                 because it offers a premium over public bonds in exchange for lower liquidity."
                    .into();
            Ok(output)
        })
    }
}

#[tokio::test]
async fn a_writer_that_answers_one_paragraph_still_completes_with_the_contract_met() {
    let standin = StandIn::start().await;
    let agents = Arc::new(|kb, upstreams: &Upstreams| {
        let mut agents = Agents::build(kb, upstreams);
        agents.content_writer = Arc::new(OneParagraph {
            inner: agents.content_writer.clone(),
        });
        agents
    });
    let mut server = common::start_with(config(&standin), agents).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let problems = contract_problems(&article);
    assert!(problems.is_empty(), "{problems:?}\n{}", article.markdown);
    let warned = warnings(&events);
    assert!(
        warned.contains(&"CONTENT_WRITER_DEGRADED".to_string()),
        "{warned:?}"
    );
    assert!(
        !warned.contains(&"CONTRACT_NOT_MET".to_string()),
        "{warned:?}"
    );
    let metrics = article.metrics.unwrap();
    assert!(
        metrics
            .degraded
            .iter()
            .any(|d| d.agent == "content_writer" && d.cause == "contract_not_met"),
        "{:?}",
        metrics.degraded
    );
    // The final analysis describes the final text: its last fact check ran on it.
    let last_check = events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Some(Event::AgentCompleted(a)) if a.agent == "seo_specialist" => Some(a.phase.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_check, "revision");
    // A revision that changed nothing was the only one spent.
    assert_eq!(metrics.revision_iterations, 1);
}

/// A first answer whose safe repair is known is repaired at once: one call, no re-ask.
#[tokio::test]
async fn a_repairable_first_answer_is_repaired_without_a_reask() {
    let standin = StandIn::start().await;
    standin.sloppy(Route::Llm, Sloppy::Overlong);
    let mut server = common::start(config(&standin)).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let asked: Vec<String> = standin
        .requests_of(Route::Llm)
        .iter()
        .map(|r| r.llm_kind())
        .collect();
    // One SEO call per draft analysed: none asked again.
    let seo = asked.iter().filter(|k| *k == "seo_specialist").count();
    let drafts = asked.iter().filter(|k| *k == "stream").count();
    assert_eq!(seo, drafts, "{asked:?}");
    assert!(
        standin
            .requests_of(Route::Llm)
            .iter()
            .all(|r| r.body["messages"].as_array().map_or(0, Vec::len) <= 2),
        "no corrective re-ask"
    );
    assert!(
        warnings(&events).contains(&"ANSWER_REPAIRED".to_string()),
        "{:?}",
        warnings(&events)
    );
    let seo = article.metadata.unwrap().seo.unwrap();
    assert!(seo.title.chars().count() <= 60, "{}", seo.title);
    assert!(article.metrics.unwrap().degraded.is_empty());
}

/// A writer whose drafts never reach their conclusion (a small model that stops early): the
/// offline writer's draft of the brief, its title changed and its `## Conclusion` cut.
struct NoConclusion {
    inner: Arc<dyn Agent<WritingBrief, Draft>>,
}

impl Agent<WritingBrief, Draft> for NoConclusion {
    fn provider(&self) -> &str {
        "early-stopper"
    }
    fn model(&self) -> &str {
        "test"
    }
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
            let mut output = self.inner.run(cx, brief).await?;
            let markdown = &output.value.markdown;
            let body = markdown.split_once('\n').map_or("", |(_, rest)| rest);
            let body = body.split("## Conclusion").next().unwrap_or_default();
            output.value.markdown = format!("# The Model's Own Title\n{body}");
            Ok(output)
        })
    }
}

/// The model's draft is not thrown away for a missing section: code completes it from the
/// offline writer's draft, and says so.
#[tokio::test]
async fn a_draft_without_its_conclusion_is_completed_by_code_and_keeps_the_models_text() {
    let standin = StandIn::start().await;
    let agents = Arc::new(|kb, upstreams: &Upstreams| {
        let mut agents = Agents::build(kb, upstreams);
        agents.content_writer = Arc::new(NoConclusion {
            inner: agents.offline.as_ref().unwrap().content_writer.clone(),
        });
        agents
    });
    let mut server = common::start_with(config(&standin), agents).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    let problems = contract_problems(&article);
    assert!(problems.is_empty(), "{problems:?}\n{}", article.markdown);
    assert!(
        article.markdown.starts_with("# The Model's Own Title\n"),
        "{}",
        article.markdown
    );
    assert_eq!(article.title, "The Model's Own Title");
    let degraded: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Warning(w)) if w.code == "CONTENT_WRITER_DEGRADED" => {
                Some(w.message.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        degraded
            .iter()
            .any(|m| m.contains("completed by code with the offline writer's `Conclusion`")),
        "{degraded:?}"
    );
}

/// The model goes away after the first draft: the revision cannot be written, but the job
/// has a draft, so it completes (the draft completed to the contract) instead of failing.
#[tokio::test]
async fn a_model_lost_during_revision_does_not_fail_a_job_that_has_a_draft() {
    let standin = StandIn::start().await;
    let first = Fault::Delay(std::time::Duration::ZERO);
    standin.fault(
        Route::LlmStream,
        std::iter::once(first).chain(std::iter::repeat_n(Fault::Status(503), 8)),
    );
    let agents = Arc::new(|kb, upstreams: &Upstreams| {
        let mut agents = Agents::build(kb, upstreams);
        agents.content_writer = Arc::new(OneParagraph {
            inner: agents.content_writer.clone(),
        });
        agents
    });
    let mut config = config(&standin);
    config.upstreams.max_attempts = 1;
    let mut server = common::start_with(config, agents).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        contract_problems(&article).is_empty(),
        "{}",
        article.markdown
    );
    let revision_failed = events.iter().any(|e| {
        matches!(&e.event, Some(Event::Warning(w))
            if w.code == "CONTENT_WRITER_DEGRADED" && w.message.contains("the revision failed"))
    });
    assert!(revision_failed, "{:?}", warnings(&events));
}

/// A writer cut off by its call's time budget while it was still writing (a slow local
/// model): its text so far is a draft cut off, kept and completed, not an outage.
#[tokio::test]
async fn a_draft_cut_by_the_time_budget_is_kept_not_failed() {
    let standin = StandIn::start().await;
    standin.latency(Latency {
        tokens_per_second: 40,
        ..Default::default()
    });
    let mut config = config(&standin);
    config.upstreams.llm_timeout = Some(std::time::Duration::from_secs(2));
    let mut server = common::start(config).await;
    let events = server.generate(llm_request()).await;
    let article = final_article(&events);
    assert!(
        contract_problems(&article).is_empty(),
        "{}",
        article.markdown
    );
    let writer = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::AgentCompleted(a)) if a.agent == "content_writer" => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(writer.provider, "openai-compatible");
    assert!(
        writer.summary.contains("cut off by its time budget"),
        "{}",
        writer.summary
    );
    assert!(
        warnings(&events).contains(&"CONTENT_WRITER_DEGRADED".to_string()),
        "{:?}",
        warnings(&events)
    );
}
