//! The pipeline engine: phases of SPEC §4 in dependency order, parallel agents within a
//! phase, events for every step, the revision loop, and the finished `Article`.
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

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
enum PipelineError {
    #[error("{agent}: {source}")]
    Agent {
        agent: &'static str,
        source: AgentError,
    },
    #[error("token budget of {budget} exceeded: {used} tokens used")]
    Budget { budget: u64, used: u64 },
}

impl PipelineError {
    fn code(&self) -> Code {
        match self {
            Self::Agent { source, .. } => match source {
                AgentError::NoSources(_) => Code::FailedPrecondition,
                AgentError::Kb(crate::kb::KbError::Upstream(_)) => Code::Unavailable,
                AgentError::Kb(_) | AgentError::Internal(_) => Code::Internal,
                // The model answered, unusably: retrying later will not help by itself.
                AgentError::InvalidAnswer { .. } => Code::FailedPrecondition,
                AgentError::Unavailable { .. } => Code::Unavailable,
            },
            Self::Budget { .. } => Code::ResourceExhausted,
        }
    }
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
            "QUEUED",
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

/// A draft and what the analysis phase found in it.
struct Analysed {
    draft: Draft,
    content: api::ContentMetrics,
    seo: api::SeoMetadata,
    fact_check: api::FactCheckReport,
}

/// What the article is assembled from.
struct Assembly<'a> {
    final_article: FinalArticle,
    analysed: Analysed,
    problems: Vec<contract::Problem>,
    revisions: u32,
    synthesis: &'a Synthesis,
    related: Vec<api::RelatedArticle>,
    social: Option<api::SocialContent>,
    summary: Option<api::Summary>,
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
                pool: Pool::Search,
                deadline: deadline.and_then(|d| tokio::time::Instant::now().checked_add(d)),
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

    fn progress(&self, phase: Phase, total_agents: u32) -> u32 {
        let (start, end) = phase.progress_range();
        let done = self
            .done_in_phase
            .load(Ordering::Relaxed)
            .min(total_agents.max(1));
        start + (end - start) * done / total_agents.max(1)
    }

    fn emit(&self, event: Event, progress: u32) {
        self.job.emit(event, progress);
    }

    fn warn(&self, phase: Phase, agent: Option<AgentName>, code: &str, message: String) {
        let progress = self.progress(phase, 1);
        self.emit(
            Event::Warning(api::Warning {
                code: code.to_string(),
                message,
                phase: phase.as_str().to_string(),
                agent: agent.map(|a| a.as_str().to_string()).unwrap_or_default(),
            }),
            progress.min(phase.progress_range().0),
        );
    }

    /// Runs one phase: `phase_started`, the work, `phase_completed` with its duration.
    async fn phase<T, F: Future<Output = Result<T, PipelineError>>>(
        &self,
        phase: Phase,
        iteration: u32,
        work: F,
    ) -> Result<T, PipelineError> {
        *lock(&self.phase) = phase;
        self.done_in_phase.store(0, Ordering::Relaxed);
        let (start, end) = phase.progress_range();
        self.emit(
            Event::PhaseStarted(api::PhaseStarted {
                phase: phase.as_str().into(),
                iteration,
            }),
            start,
        );
        let began = Instant::now();
        let span = tracing::info_span!(
            "phase",
            otel.name = phase.as_str(),
            phase = phase.as_str(),
            iteration
        );
        let value = work.instrument(span).await?;
        let elapsed = began.elapsed();
        self.settings
            .metrics
            .phase_duration
            .get_or_create(&metrics::Phase {
                phase: phase.as_str(),
            })
            .observe(elapsed.as_secs_f64());
        self.emit(
            Event::PhaseCompleted(api::PhaseCompleted {
                phase: phase.as_str().into(),
                duration: proto_duration(elapsed),
                iteration,
            }),
            end,
        );
        if let Ok(mut metrics) = self.metrics.lock() {
            match metrics
                .phases
                .iter_mut()
                .find(|p| p.phase == phase.as_str())
            {
                Some(existing) => {
                    let total = existing
                        .duration
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or_default()
                        + elapsed;
                    existing.duration = proto_duration(total);
                    existing.runs += 1;
                }
                None => metrics.phases.push(api::PhaseMetrics {
                    phase: phase.as_str().into(),
                    duration: proto_duration(elapsed),
                    runs: 1,
                }),
            }
        }
        Ok(value)
    }

    /// Runs one agent with its events and accounting.
    async fn agent<I: ?Sized + Sync, O>(
        &self,
        phase: Phase,
        phase_agents: u32,
        name: AgentName,
        agent: &dyn Agent<I, O>,
        input: &I,
    ) -> Result<O, PipelineError> {
        self.agent_after(phase, phase_agents, name, agent, input, Calls::default())
            .await
    }

    /// [`JobRun::agent`] for an agent whose input took `calls` made for it (the pages the
    /// fact checker checks against): they count as its own.
    async fn agent_after<I: ?Sized + Sync, O>(
        &self,
        phase: Phase,
        phase_agents: u32,
        name: AgentName,
        agent: &dyn Agent<I, O>,
        input: &I,
        calls: Calls,
    ) -> Result<O, PipelineError> {
        let (provider, model) = (agent.provider().to_string(), agent.model().to_string());
        self.emit(
            Event::AgentStarted(api::AgentStarted {
                agent: name.as_str().into(),
                phase: phase.as_str().into(),
                provider: provider.clone(),
                model: model.clone(),
            }),
            self.progress(phase, phase_agents),
        );
        let began = Instant::now();
        // Each agent's upstream calls count against the pool of its kind of work.
        let cx = AgentContext {
            scope: CallScope {
                pool: Pool::for_agent(name),
                ..self.cx.scope
            },
            ..self.cx.clone()
        };
        let span = tracing::info_span!(
            "agent",
            otel.name = name.as_str(),
            agent = name.as_str(),
            phase = phase.as_str(),
            provider = provider.as_str(),
            model = model.as_str(),
        );
        let mut output = agent
            .run(&cx, input)
            .instrument(span)
            .await
            .map_err(|source| PipelineError::Agent {
                agent: name.as_str(),
                source,
            })?;
        output.calls.add(calls);
        let elapsed = began.elapsed();
        for (code, message) in &output.warnings {
            self.warn(phase, Some(name), code, message.clone());
        }
        let (record, used) = self.book(phase, name, &output, (provider, model), elapsed);
        self.done_in_phase.fetch_add(1, Ordering::Relaxed);
        self.emit(
            Event::AgentCompleted(api::AgentCompleted {
                agent: record.agent,
                phase: record.phase,
                duration: record.duration,
                usage: record.usage,
                cache_hit: record.cache_hit,
                attempts: record.attempts,
                provider: record.provider,
                model: record.model,
                summary: output.summary,
                estimated_cost_usd: record.estimated_cost_usd,
                calls: record.calls,
                cached_calls: record.cached_calls,
            }),
            self.progress(phase, phase_agents),
        );
        if let Some(budget) = self.request().max_total_tokens
            && used > budget
        {
            return Err(PipelineError::Budget { budget, used });
        }
        Ok(output.value)
    }

    /// Books a finished agent into the run metrics and Prometheus: who really produced its
    /// output (the offline version, when it stood in, is also a degraded part), its tokens
    /// and cost. Returns its record and the job's tokens so far.
    fn book<O>(
        &self,
        phase: Phase,
        name: AgentName,
        output: &AgentOutput<O>,
        (provider, model): (String, String),
        elapsed: Duration,
    ) -> (api::AgentMetrics, u64) {
        let (provider, model) = match &output.degraded {
            Some(degraded) => {
                lock(&self.metrics).degraded.push(api::DegradedPart {
                    agent: name.as_str().into(),
                    phase: phase.as_str().into(),
                    cause: degraded.cause.into(),
                    message: degraded.message.clone(),
                });
                (degraded.provider.clone(), degraded.model.clone())
            }
            None => (provider, model),
        };
        let cost = self.settings.prices.cost(
            &model,
            output.usage.input_tokens,
            output.usage.output_tokens,
        );
        self.record_agent_metrics(name, &provider, &model, output.usage, cost, elapsed);
        let record = api::AgentMetrics {
            agent: name.as_str().into(),
            phase: phase.as_str().into(),
            duration: proto_duration(elapsed),
            usage: Some(output.usage),
            provider,
            model,
            cache_hit: output.cache_hit(),
            attempts: output.attempts,
            estimated_cost_usd: cost,
            calls: output.calls.total,
            cached_calls: output.calls.cached,
        };
        let mut metrics = lock(&self.metrics);
        metrics.estimated_cost_usd += cost;
        // Saturating: token counts come from upstreams.
        metrics.total_input_tokens = metrics
            .total_input_tokens
            .saturating_add(output.usage.input_tokens);
        metrics.total_output_tokens = metrics
            .total_output_tokens
            .saturating_add(output.usage.output_tokens);
        metrics.cache_hits += u32::from(output.cache_hit());
        metrics.calls = metrics.calls.saturating_add(output.calls.total);
        metrics.cached_calls = metrics.cached_calls.saturating_add(output.calls.cached);
        metrics.agents.push(record.clone());
        (
            record,
            metrics
                .total_input_tokens
                .saturating_add(metrics.total_output_tokens),
        )
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
                    self.warn(Phase::Research, Some(name), "WEB_SEARCH_FAILED", message);
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
                "INSUFFICIENT_MATERIAL",
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

    /// Revisions while the contract or the fact check fails and a revision could help, at
    /// most `max` of them: the writer repairs, then the draft is analysed again. A draft cut
    /// off at the model's token limit after them fails the job.
    async fn revise(
        &self,
        synthesis: &Arc<Synthesis>,
        sources: &Arc<Vec<SourceDoc>>,
        mut analysed: Analysed,
        max: u32,
    ) -> Result<(Analysed, Vec<contract::Problem>, u32), PipelineError> {
        let target = self.request().word_count;
        let mut problems = problems(&analysed.draft, sources, target, &analysed.fact_check);
        let mut revisions = 0;
        while needs_revision(&problems, &analysed.draft) && revisions < max {
            revisions += 1;
            let brief = WritingBrief {
                synthesis: synthesis.clone(),
                revision: Some(Revision {
                    iteration: revisions + 1,
                    previous: analysed.draft.markdown.clone(),
                    problems: problems.clone(),
                }),
            };
            analysed = self
                .phase(Phase::Revision, revisions, async {
                    let revised = self
                        .write(Phase::Revision, revisions + 1, &brief, sources)
                        .await?;
                    self.analyse(Phase::Revision, 4, revised, sources).await
                })
                .await?;
            problems = self::problems(&analysed.draft, sources, target, &analysed.fact_check);
        }
        let writer = AgentName::ContentWriter.as_str();
        if analysed.draft.cut_off {
            // Half an article is not an article: the writer failed, however often it tried.
            return Err(PipelineError::Agent {
                agent: writer,
                source: AgentError::InvalidAnswer {
                    agent: writer,
                    message: format!(
                        "every draft was cut off at the model's token limit ({revisions} revision(s))"
                    ),
                },
            });
        }
        if needs_revision(&problems, &analysed.draft) {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            self.warn(
                Phase::Revision,
                Some(AgentName::ContentWriter),
                "CONTRACT_NOT_MET",
                format!(
                    "after {revisions} revision(s) the article still has problems: {}",
                    list.join("; ")
                ),
            );
        }
        Ok((analysed, problems, revisions))
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
        let agents = &self.agents;
        let social = async {
            if !request.include_social {
                return Ok(None);
            }
            let agent = &*agents.social_promoter;
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
            let agent = &*agents.summary_writer;
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

    /// The finished `Article`, with its metadata and run metrics.
    fn assemble(&self, parts: Assembly<'_>) -> api::Article {
        let request = self.request();
        let Assembly {
            final_article,
            analysed,
            problems,
            revisions,
            synthesis,
            related,
            social,
            summary,
        } = parts;
        let Analysed {
            draft,
            content,
            seo,
            fact_check,
        } = analysed;
        let quality = metrics_analyzer::quality(&content, &problems, &fact_check, revisions);
        let mut metrics = lock(&self.metrics).clone();
        metrics.total_duration = proto_duration(self.started.elapsed());
        metrics.upstream_calls = self.cx.upstream.snapshot();
        metrics.revision_iterations = revisions;
        api::Article {
            job_id: self.job.id().to_string(),
            topic: request.topic.clone(),
            slug: request.slug.clone(),
            title: final_article.title,
            markdown: draft.markdown,
            metadata: Some(api::ArticleMetadata {
                seo: Some(seo),
                content: Some(content),
                quality: Some(quality),
                key_themes: synthesis.key_themes.clone(),
                outline: synthesis
                    .outline
                    .iter()
                    .map(|s| s.heading.clone())
                    .collect(),
                related_articles: related,
                audience: request.audience.clone(),
                tone: request.tone.clone(),
                target_word_count: request.word_count as u32,
                custom_instructions: request.custom_instructions.clone(),
            }),
            social,
            summary,
            fact_check: Some(fact_check),
            sources: synthesis.sources.iter().map(|s| s.source.clone()).collect(),
            metrics: Some(metrics),
            created_at: Some(SystemTime::now().into()),
        }
    }

    /// The writer's draft with its `[S<n>]` markers rendered as links to the sources.
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
        let draft = self
            .agent(
                phase,
                total,
                AgentName::ContentWriter,
                &*self.agents.content_writer,
                brief,
            )
            .await?;
        let rendered = contract::render_citations(&draft.markdown, sources);
        // Citations resolve only to the job's sources, whatever the text asked for.
        let (markdown, foreign) = contract::unlink_foreign(&rendered, sources);
        if foreign > 0 {
            self.warn(
                phase,
                Some(AgentName::ContentWriter),
                "FOREIGN_LINKS_REMOVED",
                format!(
                    "{foreign} link(s) to URLs research did not return were reduced to their text"
                ),
            );
        }
        Ok(Draft {
            markdown,
            reachable_words: draft.reachable_words,
            cut_off: draft.cut_off,
        })
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

impl JobRun {
    fn record_agent_metrics(
        &self,
        agent: AgentName,
        provider: &str,
        model: &str,
        usage: api::TokenUsage,
        cost: f64,
        elapsed: Duration,
    ) {
        let metrics = &self.settings.metrics;
        metrics.observe_agent(agent.as_str(), provider, elapsed);
        let agent = agent.as_str();
        for (kind, tokens) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            if tokens > 0 {
                metrics
                    .llm_tokens
                    .get_or_create(&metrics::TokenLabels {
                        agent,
                        model: model.to_string(),
                        kind,
                    })
                    .inc_by(tokens);
            }
        }
        if cost > 0.0 {
            metrics
                .llm_cost
                .get_or_create(&metrics::AgentModel {
                    agent,
                    model: model.to_string(),
                })
                .inc_by(cost);
        }
    }

    /// The sources with the pages of the web sources the draft cites read in place of their
    /// snippets, and the fetches made for them (a page this job has read is not asked
    /// again). A page that cannot be read leaves no text, so its claims are unverifiable,
    /// and the job goes on with a warning.
    async fn with_fetched_pages(
        &self,
        phase: Phase,
        draft: &Draft,
        sources: &Arc<Vec<SourceDoc>>,
    ) -> (Arc<Vec<SourceDoc>>, Calls) {
        let Some(fetcher) = &self.settings.fetcher else {
            return (sources.clone(), Calls::default());
        };
        let cited: Vec<String> = text::links(&draft.markdown)
            .iter()
            .map(|l| l.url.to_string())
            .collect();
        let web: Vec<&SourceDoc> = sources
            .iter()
            .filter(|s| s.source.kind() == api::SourceKind::Web && cited.contains(&s.source.url))
            .collect();
        if web.is_empty() {
            return (sources.clone(), Calls::default());
        }
        let mut fetched = self.fetched.lock().await;
        let missing: Vec<&str> = web
            .iter()
            .map(|s| s.source.url.as_str())
            .filter(|u| !fetched.contains_key(*u))
            .collect();
        let scope = CallScope {
            pool: Pool::Analysis,
            ..self.cx.scope
        };
        let pages = futures_util::future::join_all(
            missing.iter().map(|url| fetcher.fetch_page(&scope, url)),
        )
        .await;
        let calls = pages.iter().map(Called::calls).sum();
        for (url, page) in missing.into_iter().zip(pages) {
            self.cx.upstream.record("fetch", page.result.is_ok());
            let text = page.result.unwrap_or_else(|error| {
                self.warn(
                    phase,
                    Some(AgentName::FactChecker),
                    "SOURCE_FETCH_FAILED",
                    format!("{url}: {error}; its claims are unverifiable"),
                );
                String::new()
            });
            fetched.insert(url.to_string(), text);
        }
        let sources = Arc::new(
            sources
                .iter()
                .map(|s| match fetched.get(&s.source.url) {
                    Some(page) => SourceDoc {
                        text: page.clone(),
                        ..s.clone()
                    },
                    None => s.clone(),
                })
                .collect(),
        );
        (sources, calls)
    }
}

/// Whether a revision could fix something: not a draft that is short only because the
/// sources ran out (already reported as `INSUFFICIENT_MATERIAL`).
fn needs_revision(problems: &[contract::Problem], draft: &Draft) -> bool {
    problems.iter().any(|problem| match problem {
        contract::Problem::WordCount { actual, target } => {
            draft.reachable_words.is_none() || actual > target
        }
        _ => true,
    })
}

/// Contract violations plus the claims the fact check found unsupported.
fn problems(
    draft: &Draft,
    sources: &[SourceDoc],
    target: usize,
    fact_check: &api::FactCheckReport,
) -> Vec<contract::Problem> {
    let mut problems = contract::check(&draft.markdown, sources, target);
    if draft.cut_off {
        problems.push(contract::Problem::CutOff);
    }
    problems.extend(
        fact_check
            .claims
            .iter()
            .filter(|c| c.verdict() == api::Verdict::Unsupported)
            .map(|c| contract::Problem::UnsupportedClaim(c.text.clone())),
    );
    problems
}

pub fn proto_duration(duration: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(duration).ok()
}
