//! A whole offline `Generate`: the event stream and the article it delivers.
use std::{collections::BTreeSet, sync::Arc};

use dakota::api::{GenerateEvent, Verdict, generate_event::Event};
use dakota_server::{
    testing::agents::{
        Agent, AgentContext, AgentFuture, Agents, Draft, WritingBrief, select::Upstreams,
    },
    testing::pipeline::contract,
    testing::text,
};
use tonic::Code;

use crate::common::{self, collect, final_article, phases_started, request};

const TOPIC: &str = "Private credit and liquidity for pension funds";

fn kind(event: &GenerateEvent) -> &'static str {
    match event.event {
        Some(Event::JobStarted(_)) => "job_started",
        Some(Event::PhaseStarted(_)) => "phase_started",
        Some(Event::AgentStarted(_)) => "agent_started",
        Some(Event::AgentCompleted(_)) => "agent_completed",
        Some(Event::ContentDelta(_)) => "content_delta",
        Some(Event::Warning(_)) => "warning",
        Some(Event::PhaseCompleted(_)) => "phase_completed",
        Some(Event::Completed(_)) => "completed",
        Some(Event::Failed(_)) => "failed",
        None => "none",
    }
}

/// Sequence 1, 2, 3 ... without gaps, one job id, progress never decreasing, exactly one
/// final event and it is the last.
fn assert_well_formed(events: &[GenerateEvent]) {
    assert!(!events.is_empty());
    let job_id = &events[0].job_id;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.sequence,
            i as u64 + 1,
            "sequence numbers have no gaps"
        );
        assert_eq!(&event.job_id, job_id);
        assert!(event.timestamp.is_some());
        assert!(event.progress <= 100);
    }
    assert!(
        events.windows(2).all(|w| w[0].progress <= w[1].progress),
        "progress never decreases"
    );
    assert_eq!(kind(&events[0]), "job_started");
    let finals = events
        .iter()
        .filter(|e| matches!(kind(e), "completed" | "failed"))
        .count();
    assert_eq!(finals, 1, "exactly one final event");
    assert!(matches!(
        kind(events.last().unwrap()),
        "completed" | "failed"
    ));
}

#[tokio::test]
async fn offline_generate_streams_every_phase_and_delivers_a_contract_article() {
    let mut server = common::start(common::config()).await;
    let mut stream = server.open(request(TOPIC)).await;
    let events = collect(&mut stream).await;
    assert_well_formed(&events);
    assert_eq!(events.last().unwrap().progress, 100);

    // The plan names every phase and agent; each planned agent starts and completes.
    let Some(Event::JobStarted(plan)) = &events[0].event else {
        unreachable!()
    };
    let planned: Vec<&str> = plan.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        planned,
        [
            "setup",
            "research",
            "synthesis",
            "writing",
            "analysis",
            "revision",
            "distribution"
        ]
    );
    let started = phases_started(&events);
    let expected: Vec<String> = [
        "setup",
        "research",
        "synthesis",
        "writing",
        "analysis",
        "distribution",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(started, expected, "a clean first draft needs no revision");
    for phase in plan.phases.iter().filter(|p| !p.conditional) {
        for agent in &phase.agents {
            let ran = |k: &str| {
                events.iter().any(|e| match &e.event {
                    Some(Event::AgentStarted(a)) if k == "started" => {
                        a.agent == *agent && a.phase == phase.phase
                    }
                    Some(Event::AgentCompleted(a)) if k == "completed" => {
                        a.agent == *agent && a.phase == phase.phase
                    }
                    _ => false,
                })
            };
            assert!(
                ran("started") && ran("completed"),
                "{agent} in {} started and completed",
                phase.phase
            );
        }
    }
    // Each phase completes after it starts and before the next one starts.
    let mut open: Option<String> = None;
    for event in &events {
        match &event.event {
            Some(Event::PhaseStarted(p)) => {
                assert!(open.is_none(), "phases do not overlap");
                open = Some(p.phase.clone());
            }
            Some(Event::PhaseCompleted(p)) => {
                assert_eq!(open.take().as_deref(), Some(p.phase.as_str()))
            }
            Some(Event::AgentStarted(a)) => assert_eq!(open.as_deref(), Some(a.phase.as_str())),
            _ => {}
        }
    }
    // No web search is configured offline: a warning says so, the job still completes.
    assert!(events.iter().any(
        |e| matches!(&e.event, Some(Event::Warning(w)) if w.code == "WEB_SEARCH_UNAVAILABLE")
    ));

    let article = final_article(&events);
    assert_eq!(
        article.slug,
        "private-credit-and-liquidity-for-pension-funds"
    );
    assert!(article.markdown.starts_with("# "));
    // The contract, checked by the same code the pipeline uses, and by hand for the headings.
    let sources = common::as_sources(&article);
    assert_eq!(contract::check(&article.markdown, &sources, 1500), vec![]);
    let headings = contract::sections(&article.markdown);
    assert_eq!(
        headings.first().map(String::as_str),
        Some(contract::KEY_INSIGHTS)
    );
    assert_eq!(
        headings.last().map(String::as_str),
        Some(contract::CONCLUSION)
    );
    assert!((3..=4).contains(&contract::main_sections(&article.markdown).len()));
    let words = text::markdown_word_count(&article.markdown);
    assert!(
        (1275..=1725).contains(&words),
        "{words} words for a 1500-word target"
    );

    // Every citation is a link to one of the job's sources; sources are unique and real.
    let urls: BTreeSet<&str> = article.sources.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(
        urls.len(),
        article.sources.len(),
        "sources are deduplicated by URL"
    );
    assert!(article.sources.len() <= 10);
    let cited = text::links(&article.markdown);
    assert!(cited.len() >= 5, "the article cites its sources");
    for link in &cited {
        assert!(
            urls.contains(link.url.as_str()),
            "{} is one of the job's sources",
            link.url
        );
    }
    let kb_files: Vec<String> = std::fs::read_dir(common::kb_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for source in &article.sources {
        assert!(
            kb_files
                .iter()
                .any(|f| f.contains(&format!("url: {}", source.url))),
            "{} exists in the knowledge base",
            source.url
        );
    }

    // The streamed text is the article: deltas of the last writer pass, citations rendered.
    let streamed = common::streamed_text(&events);
    assert_eq!(
        contract::render_citations(&streamed, &sources),
        article.markdown
    );

    // Metadata: SEO within limits, computed metrics, a fact check that checked real claims.
    let metadata = article.metadata.clone().unwrap();
    let seo = metadata.seo.unwrap();
    assert!(
        !seo.title.is_empty() && seo.title.chars().count() <= 60,
        "{}",
        seo.title
    );
    assert!(!seo.meta_description.is_empty() && seo.meta_description.chars().count() <= 155);
    assert!((5..=7).contains(&seo.keywords.len()), "{:?}", seo.keywords);
    let content = metadata.content.unwrap();
    assert_eq!(content.word_count as usize, words);
    assert_eq!(content.citation_count as usize, cited.len());
    let quality = metadata.quality.unwrap();
    assert!(
        quality.contract_satisfied,
        "{:?}",
        quality.contract_violations
    );
    assert!(quality.overall > 0.0 && quality.overall <= 100.0);
    let fact_check = article.fact_check.clone().unwrap();
    assert!(fact_check.passed);
    assert!(fact_check.claims.len() >= 5);
    // The offline article lifts its sources' sentences: those are reported as quoted (with
    // their source), not as supported; what it restates is checked.
    assert!(fact_check.quoted > 0, "{fact_check:?}");
    for claim in &fact_check.claims {
        assert!(
            matches!(claim.verdict(), Verdict::Quoted | Verdict::Supported),
            "{claim:?}"
        );
        assert!(urls.contains(claim.source_url.as_str()));
        assert!(!claim.evidence.is_empty());
    }
    assert!(!metadata.related_articles.is_empty());
    assert!((3..=4).contains(&metadata.key_themes.len()));

    let social = article.social.clone().unwrap();
    assert_eq!(social.linkedin_posts.len(), 3);
    assert_eq!(social.thread.len(), 10);
    assert!(
        !social.email_snippet.is_empty()
            && !social.instagram_post.is_empty()
            && !social.facebook_post.is_empty()
    );
    let summary = article.summary.clone().unwrap();
    assert!(!summary.key_value.is_empty());
    assert!(
        (2..=3).contains(&text::sentences(&summary.overview).len()),
        "{}",
        summary.overview
    );
    assert!((1..=4).contains(&summary.takeaways.len()));

    // Run metrics: every agent run with its provider, every phase timed.
    let metrics = article.metrics.clone().unwrap();
    let phases: Vec<&str> = metrics.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        phases,
        [
            "setup",
            "research",
            "synthesis",
            "writing",
            "analysis",
            "distribution"
        ]
    );
    assert!(
        metrics
            .agents
            .iter()
            .all(|a| a.provider == "offline" && a.attempts == 1)
    );
    assert!(
        metrics
            .upstream_calls
            .iter()
            .any(|u| u.upstream == "kb" && u.calls == 1 && u.errors == 0)
    );
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

#[tokio::test]
async fn requested_options_shape_the_plan() {
    let mut server = common::start(common::config()).await;
    let mut req = request("Currency hedging for international portfolios");
    req.include_social = Some(false);
    req.include_summary = Some(false);
    req.skip_web_search = true;
    req.word_count = Some(600);
    let events = server.generate(req).await;
    assert_well_formed(&events);
    let Some(Event::JobStarted(plan)) = &events[0].event else {
        unreachable!()
    };
    assert!(plan.phases.iter().all(|p| p.phase != "distribution"));
    assert!(
        !plan
            .phases
            .iter()
            .any(|p| p.agents.iter().any(|a| a == "web_researcher"))
    );
    assert!(
        !events.iter().any(|e| kind(e) == "warning"),
        "skipping web search is not a degradation"
    );
    let article = final_article(&events);
    assert!(article.social.is_none() && article.summary.is_none());
    let words = text::markdown_word_count(&article.markdown);
    assert!(
        (510..=690).contains(&words),
        "{words} words for a 600-word target"
    );
}

#[tokio::test]
async fn topics_with_figures_or_contract_words_still_get_a_clean_article() {
    let mut server = common::start(common::config()).await;
    for topic in [
        "Introduction to ESG integration in 2026",
        "The 60/40 portfolio after 2022 — risk parity?",
    ] {
        let events = server.generate(request(topic)).await;
        assert_well_formed(&events);
        let article = final_article(&events);
        let mut problems = contract::check(&article.markdown, &common::as_sources(&article), 1500);
        // Only the sample's one document naming ESG is evidence for an ESG topic: the article
        // is as long as it supports, and says so, rather than padded with the others.
        let short_for_want_of_material = events.iter().any(
            |e| matches!(&e.event, Some(Event::Warning(w)) if w.code == "INSUFFICIENT_MATERIAL"),
        );
        if short_for_want_of_material {
            problems.retain(|p| !matches!(p, contract::Problem::WordCount { .. }));
        }
        assert_eq!(problems, vec![], "{topic}");
        let fact_check = article.fact_check.unwrap();
        assert!(
            fact_check.passed && fact_check.unsupported == 0,
            "{topic}: {fact_check:?}"
        );
        assert!(
            !phases_started(&events).contains(&"revision".to_string()),
            "{topic} needed no revision"
        );
    }
}

#[tokio::test]
async fn a_topic_the_knowledge_base_does_not_cover_fails_clearly() {
    let mut server = common::start(common::config()).await;
    let events = server
        .generate(request("Sourdough baking with rye flour"))
        .await;
    assert_well_formed(&events);
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::FailedPrecondition as i32);
    assert!(failed.message.contains("no sources"), "{}", failed.message);
    assert_eq!(failed.phase, "synthesis");
}

/// A writer whose first draft cites a source research never returned and states a figure no
/// source backs; its revision is the offline writer's clean draft.
struct CarelessWriter {
    inner: Arc<dyn Agent<WritingBrief, Draft>>,
}

impl Agent<WritingBrief, Draft> for CarelessWriter {
    fn provider(&self) -> &str {
        "careless"
    }
    fn model(&self) -> &str {
        "test"
    }
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
            let mut output = self.inner.run(cx, brief).await?;
            if brief.revision.is_none() {
                output.value.markdown = output.value.markdown.replacen(
                    "\n\n## Key Insights",
                    " Private credit always returns 99% a year [S99].\n\n## Key Insights",
                    1,
                );
            }
            Ok(output)
        })
    }
}

#[tokio::test]
async fn a_failing_draft_is_revised_until_it_passes() {
    let agents = Arc::new(|kb, upstreams: &Upstreams| {
        let mut agents = Agents::build(kb, upstreams);
        agents.content_writer = Arc::new(CarelessWriter {
            inner: agents.content_writer.clone(),
        });
        agents
    });
    let mut server = common::start_with(common::config(), agents).await;
    let events = server.generate(request(TOPIC)).await;
    assert_well_formed(&events);
    assert_eq!(
        phases_started(&events),
        [
            "setup",
            "research",
            "synthesis",
            "writing",
            "analysis",
            "revision",
            "distribution"
        ]
        .map(String::from)
        .to_vec()
    );
    // The analysis found both problems: the invented citation and the unsupported figure.
    let first_check = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::AgentCompleted(a))
                if a.agent == "fact_checker" && a.phase == "analysis" =>
            {
                Some(a.summary.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(first_check.contains("1 unsupported"), "{first_check}");
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Some(Event::ContentDelta(d)) if d.iteration == 2))
    );
    let article = final_article(&events);
    assert!(!article.markdown.contains("99%") && !article.markdown.contains("[S99]"));
    let quality = article.metadata.unwrap().quality.unwrap();
    assert!(quality.contract_satisfied);
    assert_eq!(quality.revision_iterations, 1);
    assert!(article.fact_check.unwrap().passed);
}

/// A writer that panics: a bug in one agent must end its job, not hang its watchers.
struct PanickingWriter;

impl Agent<WritingBrief, Draft> for PanickingWriter {
    fn provider(&self) -> &str {
        "broken"
    }
    fn model(&self) -> &str {
        "test"
    }
    fn run<'a>(
        &'a self,
        _cx: &'a AgentContext,
        _brief: &'a WritingBrief,
    ) -> AgentFuture<'a, Draft> {
        Box::pin(async { panic!("a bug in an agent") })
    }
}

#[tokio::test]
async fn a_panicking_agent_fails_its_job_with_internal_and_the_server_goes_on() {
    let agents = Arc::new(|kb, upstreams: &Upstreams| {
        let mut agents = Agents::build(kb, upstreams);
        agents.content_writer = Arc::new(PanickingWriter);
        agents
    });
    // One job slot and no queue: the next job runs only if the failed one gave its slot back.
    let mut config = common::config();
    config.max_running_jobs = 1;
    config.max_queued_jobs = 0;
    let mut server = common::start_with(config, agents).await;
    let events = server.generate(request(TOPIC)).await;
    assert_well_formed(&events);
    let failed = common::failed(&events);
    assert_eq!(failed.code, Code::Internal as i32);
    assert_eq!(failed.phase, "writing");
    // The server still answers, and the next job gets its slot.
    let again = server.generate(request(TOPIC)).await;
    assert_eq!(common::failed(&again).code, Code::Internal as i32);
    let (status, _) = server.admin("/ready").await;
    assert_eq!(status, 200);
}
