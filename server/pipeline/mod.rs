//! The pipeline engine: phases of SPEC §4 in dependency order, parallel agents within a
//! phase, events for every step, the revision loop, and the finished `Article`.
use crate::domain::WarningCode;
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tonic::Code;
use tracing::Instrument;

use crate::{
    agents::pricing::PriceTable,
    agents::{
        Agent, AgentContext, AgentError, AgentOutput, Agents, Draft, FactCheckInput, FinalArticle,
        Revision, Synthesis, SynthesisInput, UpstreamCounters, WebResearch, WritingBrief,
        metrics_analyzer,
    },
    domain::{AgentName, JobEvents, SourceDoc},
    lock,
    metrics::{self, Metrics},
    resilience::{CallScope, Called, Calls, Pool},
    text,
    upstream::fetch::Fetcher,
};
use dakota::api::{self, generate_event::Event};

pub use crate::domain::{JobRequest, Phase, contract, plan};

mod assembly;
mod error;
mod events;
mod pages;
mod revision;
mod salvage;
mod schedule;

pub use assembly::proto_duration;
use assembly::{Analysed, Assembly};
use error::PipelineError;

/// The `job_started` event: the plan of phases and agents the request will run.
pub fn job_started(request: &JobRequest) -> api::JobStarted {
    api::JobStarted {
        topic: request.topic.clone(),
        slug: request.slug.clone(),
        word_count: request.word_count as u32,
        idempotency_key: request.idempotency_key.clone().unwrap_or_default(),
        phases: plan(request)
            .iter()
            .map(|(phase, agents)| api::PlannedPhase {
                phase: phase.as_str().into(),
                agents: agents.iter().map(|a| a.as_str().into()).collect(),
                depends_on: phase
                    .depends_on()
                    .iter()
                    .map(|p| p.as_str().into())
                    .collect(),
                conditional: *phase == Phase::Revision,
            })
            .collect(),
    }
}

/// Settings of the engine that come from configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub max_iterations: u32,
    pub prices: Arc<PriceTable>,
    pub metrics: Arc<Metrics>,
    /// Reads the pages of cited web sources for the fact check; `None` leaves their snippets.
    pub fetcher: Option<Arc<Fetcher>>,
}

/// One job's pipeline between the runner's start and end (`jobs::runner`): the phases, in
/// order, writing their events to the job. The runner owns the rest of the job's life.
pub struct PipelineRun(Arc<JobRun>);

impl PipelineRun {
    pub fn new(
        job: Arc<dyn JobEvents>,
        agents: Agents,
        settings: PipelineSettings,
        deadline: Option<Duration>,
    ) -> Self {
        Self(Arc::new(JobRun::new(job, agents, settings, deadline)))
    }

    /// Says that the job waits in the queue for a job slot.
    pub fn queued(&self) {
        self.0.warn(
            Phase::Setup,
            None,
            WarningCode::Queued,
            "every job slot is taken; waiting in the queue".into(),
        );
    }

    /// The phases, in order: the article, or the status of what went wrong.
    pub async fn execute(&self) -> Result<api::Article, (Code, String)> {
        let settings = self.0.settings.clone();
        self.0.clone().execute(settings).await.map_err(|error| {
            tracing::warn!(job_id = %self.0.job.id(), %error, "job failed");
            (error.code(), error.to_string())
        })
    }

    /// The phase the job is in (or ended in).
    pub fn current_phase(&self) -> &'static str {
        self.0.current_phase()
    }
}

/// State of one running job.
struct JobRun {
    job: Arc<dyn JobEvents>,
    agents: Agents,
    cx: AgentContext,
    started: Instant,
    phase: Mutex<Phase>,
    /// Agents finished in the current phase, for progress.
    done_in_phase: AtomicU32,
    metrics: Mutex<api::RunMetrics>,
    /// The writer pass whose text `content_delta` events carry (1, then revisions).
    writer_iteration: Arc<AtomicU32>,
    settings: PipelineSettings,
    /// Pages of cited web sources fetched for the fact check, by URL (empty when the fetch
    /// failed): each is read once per job.
    fetched: tokio::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl JobRun {
    fn new(
        job: Arc<dyn JobEvents>,
        agents: Agents,
        settings: PipelineSettings,
        deadline: Option<Duration>,
    ) -> Self {
        let delta_job = job.clone();
        let writer_iteration = Arc::new(AtomicU32::new(1));
        let delta_iteration = writer_iteration.clone();
        let cx = AgentContext {
            request: job.request().clone(),
            cancel: job.cancel().clone(),
            deltas: Arc::new(move |text: &str| {
                let progress = Phase::Writing.progress_range().0;
                delta_job.emit(
                    Event::ContentDelta(api::ContentDelta {
                        text: text.to_string(),
                        iteration: delta_iteration.load(Ordering::Relaxed),
                    }),
                    progress,
                );
            }),
            text_iteration: writer_iteration.clone(),
            upstream: Arc::new(UpstreamCounters::default()),
            metrics: settings.metrics.clone(),
            // Retries never reach past the caller's deadline.
            scope: CallScope {
                deadline: deadline.and_then(|d| tokio::time::Instant::now().checked_add(d)),
                ..CallScope::new(Pool::Search)
            },
        };
        Self {
            job,
            agents,
            cx,
            started: Instant::now(),
            phase: Mutex::new(Phase::Setup),
            done_in_phase: AtomicU32::new(0),
            metrics: Mutex::new(api::RunMetrics::default()),
            writer_iteration,
            settings,
            fetched: Default::default(),
        }
    }

    fn current_phase(&self) -> &'static str {
        lock(&self.phase).as_str()
    }

    fn request(&self) -> &JobRequest {
        self.job.request()
    }

    /// The phases in order: research, synthesis, writing, analysis, revisions while the
    /// contract or the fact check fails, distribution; then the article.
    async fn execute(
        self: Arc<Self>,
        settings: PipelineSettings,
    ) -> Result<api::Article, PipelineError> {
        // Validation, slug and job id happened before the job existed; the phase records them.
        self.phase(Phase::Setup, 1, async { Ok(()) }).await?;
        let (input, related) = self.research().await?;
        let synthesis = self.synthesise(&input).await?;
        let sources = Arc::new(synthesis.sources.clone());
        let draft = self.first_draft(&synthesis, &sources).await?;
        let analysed = self
            .phase(
                Phase::Analysis,
                1,
                self.analyse(Phase::Analysis, 3, draft, &sources),
            )
            .await?;
        let (analysed, problems, revisions) = self
            .revise(&synthesis, &sources, analysed, settings.max_iterations)
            .await?;
        let (analysed, problems) = self
            .meet_contract(&synthesis, &sources, (analysed, problems), revisions)
            .await?;
        let title = contract::title(&analysed.draft.markdown)
            .unwrap_or_else(|| self.request().topic.clone());
        let final_article = FinalArticle {
            title,
            markdown: analysed.draft.markdown.clone(),
            seo: analysed.seo.clone(),
            key_themes: synthesis.key_themes.clone(),
        };
        let (social, summary) = self.distribute(&final_article).await?;
        Ok(self.assemble(Assembly {
            final_article,
            analysed,
            problems,
            revisions,
            synthesis: &synthesis,
            related,
            social,
            summary,
        }))
    }

    /// `kb_researcher` ∥ `web_researcher` ∥ the outline plan. Web research degrades the job
    /// with a warning, it never fails it.
    async fn research(&self) -> Result<(SynthesisInput, Vec<api::RelatedArticle>), PipelineError> {
        let request = self.request();
        let agents = &self.agents;
        let total = if request.skip_web_search { 2 } else { 3 };
        let web = async {
            if request.skip_web_search {
                return Ok(WebResearch::default());
            }
            let name = AgentName::WebResearcher;
            match self
                .agent(
                    Phase::Research,
                    total,
                    name,
                    &*agents.web_researcher,
                    request,
                )
                .await
            {
                Err(PipelineError::Agent { source, .. }) => {
                    let message = format!(
                        "web research failed, continuing with the knowledge base: {source}"
                    );
                    self.warn(
                        Phase::Research,
                        Some(name),
                        WarningCode::WebSearchFailed,
                        message,
                    );
                    Ok(WebResearch::default())
                }
                other => other,
            }
        };
        let (kb, web, plan) = self
            .phase(Phase::Research, 1, async {
                tokio::try_join!(
                    self.agent(
                        Phase::Research,
                        total,
                        AgentName::KbResearcher,
                        &*agents.kb_researcher,
                        request
                    ),
                    web,
                    self.agent(
                        Phase::Research,
                        total,
                        AgentName::ResearchSynthesizer,
                        &*agents.outline_planner,
                        request
                    ),
                )
            })
            .await?;
        let related = kb.related.clone();
        Ok((SynthesisInput { plan, kb, web }, related))
    }

    async fn synthesise(&self, input: &SynthesisInput) -> Result<Arc<Synthesis>, PipelineError> {
        let synthesizer = &*self.agents.research_synthesizer;
        let agent = self.agent(
            Phase::Synthesis,
            1,
            AgentName::ResearchSynthesizer,
            synthesizer,
            input,
        );
        Ok(Arc::new(self.phase(Phase::Synthesis, 1, agent).await?))
    }

    /// The writing phase; a draft short for want of material says so at once.
    async fn first_draft(
        &self,
        synthesis: &Arc<Synthesis>,
        sources: &Arc<Vec<SourceDoc>>,
    ) -> Result<Draft, PipelineError> {
        let brief = WritingBrief {
            synthesis: synthesis.clone(),
            revision: None,
        };
        let draft = self
            .phase(
                Phase::Writing,
                1,
                self.write(Phase::Writing, 1, &brief, sources),
            )
            .await?;
        if let Some(reachable) = draft.reachable_words {
            self.warn(
                Phase::Writing,
                Some(AgentName::ContentWriter),
                WarningCode::InsufficientMaterial,
                format!(
                    "the sources support about {reachable} words, not the {} asked for; the article is shorter and no revision is spent on its length",
                    self.request().word_count
                ),
            );
        }
        Ok(draft)
    }

    /// `metrics_analyzer` ∥ `seo_specialist` ∥ `fact_checker` on a draft.
    async fn analyse(
        &self,
        phase: Phase,
        total: u32,
        draft: Draft,
        sources: &Arc<Vec<SourceDoc>>,
    ) -> Result<Analysed, PipelineError> {
        let agents = &self.agents;
        let (content, seo, fact_check) = tokio::try_join!(
            self.agent(
                phase,
                total,
                AgentName::MetricsAnalyzer,
                &*agents.metrics_analyzer,
                &draft
            ),
            self.agent(
                phase,
                total,
                AgentName::SeoSpecialist,
                &*agents.seo_specialist,
                &draft
            ),
            self.fact_check(phase, total, &draft, sources),
        )?;
        Ok(Analysed {
            draft,
            content,
            seo,
            fact_check,
        })
    }

    /// `social_promoter` ∥ `summary_writer`, each only when asked for.
    async fn distribute(
        &self,
        article: &FinalArticle,
    ) -> Result<(Option<api::SocialContent>, Option<api::Summary>), PipelineError> {
        let request = self.request();
        let total = u32::from(request.include_social) + u32::from(request.include_summary);
        if total == 0 {
            return Ok((None, None));
        }
        let (social_promoter, summary_writer) = self.distribution_agents();
        let social = async {
            if !request.include_social {
                return Ok(None);
            }
            let agent = &*social_promoter;
            self.agent(
                Phase::Distribution,
                total,
                AgentName::SocialPromoter,
                agent,
                article,
            )
            .await
            .map(Some)
        };
        let summary = async {
            if !request.include_summary {
                return Ok(None);
            }
            let agent = &*summary_writer;
            self.agent(
                Phase::Distribution,
                total,
                AgentName::SummaryWriter,
                agent,
                article,
            )
            .await
            .map(Some)
        };
        self.phase(Phase::Distribution, 1, async {
            tokio::try_join!(social, summary)
        })
        .await
    }

    /// The writer's draft with its `[S<n>]` markers rendered as links to the sources; a
    /// draft cut off at the model's token limit is kept up to its last complete section.
    async fn write(
        &self,
        phase: Phase,
        iteration: u32,
        brief: &WritingBrief,
        sources: &[SourceDoc],
    ) -> Result<Draft, PipelineError> {
        let total = if phase == Phase::Writing { 1 } else { 4 };
        // Each pass's text replaces the earlier passes' (and a restarted stream's): a pass
        // after the first takes the next iteration.
        if iteration > 1 {
            self.writer_iteration.fetch_add(1, Ordering::Relaxed);
        }
        let writer = &*self.agents.content_writer;
        let mut draft = self
            .agent(phase, total, AgentName::ContentWriter, writer, brief)
            .await?;
        if draft.cut_off {
            draft.markdown = salvage::complete_sections(&draft.markdown);
        }
        Ok(self.rendered(phase, draft, sources))
    }

    /// A draft as the article shows it: `[S<n>]` markers as links to the job's sources, and
    /// any other link reduced to its text (with a warning).
    fn rendered(&self, phase: Phase, draft: Draft, sources: &[SourceDoc]) -> Draft {
        let rendered = contract::render_citations(&draft.markdown, sources);
        // Citations resolve only to the job's sources, whatever the text asked for.
        let (markdown, foreign) = contract::unlink_foreign(&rendered, sources);
        if foreign > 0 {
            self.warn(
                phase,
                Some(AgentName::ContentWriter),
                WarningCode::ForeignLinksRemoved,
                format!(
                    "{foreign} link(s) to URLs research did not return were reduced to their text"
                ),
            );
        }
        Draft {
            markdown,
            reachable_words: draft.reachable_words,
            cut_off: draft.cut_off,
        }
    }

    async fn fact_check(
        &self,
        phase: Phase,
        total: u32,
        draft: &Draft,
        sources: &Arc<Vec<SourceDoc>>,
    ) -> Result<api::FactCheckReport, PipelineError> {
        let (sources, fetches) = self.with_fetched_pages(phase, draft, sources).await;
        let input = FactCheckInput {
            markdown: draft.markdown.clone(),
            sources,
        };
        self.agent_after(
            phase,
            total,
            AgentName::FactChecker,
            &*self.agents.fact_checker,
            &input,
            fetches,
        )
        .await
    }
}
