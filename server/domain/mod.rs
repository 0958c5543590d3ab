//! The service's own vocabulary, below every mechanism: the request a job runs, its phases and
//! their plan, the agents' names, a source as research returns it, the article contract, who
//! is calling, and where a running job's events go ([`JobEvents`], which the job implements
//! and the pipeline writes to).
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use dakota::api::{self, generate_event::Event};

pub mod contract;

/// A validated `GenerateRequest`, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub topic: String,
    pub slug: String,
    pub word_count: usize,
    pub audience: String,
    pub tone: String,
    pub custom_instructions: String,
    pub include_social: bool,
    pub include_summary: bool,
    pub skip_web_search: bool,
    pub idempotency_key: Option<String>,
    pub max_total_tokens: Option<u64>,
}

/// Phases in the order they run; names as in events, spans and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Research,
    Synthesis,
    Writing,
    Analysis,
    Revision,
    Distribution,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Research => "research",
            Self::Synthesis => "synthesis",
            Self::Writing => "writing",
            Self::Analysis => "analysis",
            Self::Revision => "revision",
            Self::Distribution => "distribution",
        }
    }

    /// The share of overall progress (0-100) the phase covers.
    pub fn progress_range(self) -> (u32, u32) {
        match self {
            Self::Setup => (0, 2),
            Self::Research => (2, 30),
            Self::Synthesis => (30, 40),
            Self::Writing => (40, 70),
            Self::Analysis => (70, 82),
            Self::Revision => (82, 88),
            Self::Distribution => (88, 99),
        }
    }

    pub fn depends_on(self) -> &'static [Phase] {
        match self {
            Self::Setup => &[],
            Self::Research => &[Self::Setup],
            Self::Synthesis => &[Self::Research],
            Self::Writing => &[Self::Synthesis],
            Self::Analysis => &[Self::Writing],
            Self::Revision => &[Self::Analysis],
            // The final article: after analysis, and after revision when it runs.
            Self::Distribution => &[Self::Analysis, Self::Revision],
        }
    }
}

/// The phases and agents a request will run (the `job_started` plan).
pub fn plan(request: &JobRequest) -> Vec<(Phase, Vec<AgentName>)> {
    use AgentName::*;
    let mut research = vec![KbResearcher];
    if !request.skip_web_search {
        research.push(WebResearcher);
    }
    research.push(ResearchSynthesizer);
    let mut distribution = Vec::new();
    if request.include_social {
        distribution.push(SocialPromoter);
    }
    if request.include_summary {
        distribution.push(SummaryWriter);
    }
    let mut phases = vec![
        (Phase::Setup, vec![]),
        (Phase::Research, research),
        (Phase::Synthesis, vec![ResearchSynthesizer]),
        (Phase::Writing, vec![ContentWriter]),
        (
            Phase::Analysis,
            vec![MetricsAnalyzer, SeoSpecialist, FactChecker],
        ),
        (
            Phase::Revision,
            vec![ContentWriter, MetricsAnalyzer, SeoSpecialist, FactChecker],
        ),
    ];
    if !distribution.is_empty() {
        phases.push((Phase::Distribution, distribution));
    }
    phases
}

/// Agent names as they appear in events, spans and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentName {
    KbResearcher,
    WebResearcher,
    ResearchSynthesizer,
    ContentWriter,
    MetricsAnalyzer,
    SeoSpecialist,
    FactChecker,
    SocialPromoter,
    SummaryWriter,
}

impl AgentName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KbResearcher => "kb_researcher",
            Self::WebResearcher => "web_researcher",
            Self::ResearchSynthesizer => "research_synthesizer",
            Self::ContentWriter => "content_writer",
            Self::MetricsAnalyzer => "metrics_analyzer",
            Self::SeoSpecialist => "seo_specialist",
            Self::FactChecker => "fact_checker",
            Self::SocialPromoter => "social_promoter",
            Self::SummaryWriter => "summary_writer",
        }
    }
}

/// The four upstreams every call goes to; their names label metrics, spans, flags
/// (`--rate-limits llm=...`) and the run metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Llm,
    Kb,
    Web,
    Fetch,
}

impl Upstream {
    /// In the order the run metrics list them.
    pub const ALL: [Upstream; 4] = [Self::Kb, Self::Web, Self::Llm, Self::Fetch];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::Kb => "kb",
            Self::Web => "web",
            Self::Fetch => "fetch",
        }
    }

    /// The upstream of a flag's name (`llm`, `kb`, `web`, `fetch`).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.as_str() == name)
    }
}

/// The machine-readable codes of `Warning` events: what a client may act on. Written here
/// once; an event carries [`WarningCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningCode {
    /// Every job slot is taken: the job waits in the queue.
    Queued,
    /// No web search is configured: the article draws on the knowledge base only.
    WebSearchUnavailable,
    /// Web search failed: the job goes on without it.
    WebSearchFailed,
    /// Some of the web searches failed.
    WebSearchDegraded,
    /// A cited page could not be fetched for the fact check.
    SourceFetchFailed,
    /// Research returned sources about something else than the topic.
    OffTopicSources,
    /// The sources hold fewer words than the article asks for.
    InsufficientMaterial,
    /// The revisions did not make the draft meet the article contract.
    ContractNotMet,
    /// The deadline left no time for a revision at the job's pace.
    RevisionsSkipped,
    /// Links to URLs research never returned were removed from the article.
    ForeignLinksRemoved,
    /// Text reciting the agent's own instructions was removed.
    PromptTextRemoved,
    /// The writer's stream broke midway and was asked again.
    WriterRestarted,
    /// A structured answer bent a limit (or was cut off at `max_tokens`): repaired by code.
    AnswerRepaired,
    /// The agent's offline version stood in for its LLM version.
    Degraded(AgentName),
}

impl WarningCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::WebSearchUnavailable => "WEB_SEARCH_UNAVAILABLE",
            Self::WebSearchFailed => "WEB_SEARCH_FAILED",
            Self::WebSearchDegraded => "WEB_SEARCH_DEGRADED",
            Self::SourceFetchFailed => "SOURCE_FETCH_FAILED",
            Self::OffTopicSources => "OFF_TOPIC_SOURCES",
            Self::InsufficientMaterial => "INSUFFICIENT_MATERIAL",
            Self::ContractNotMet => "CONTRACT_NOT_MET",
            Self::RevisionsSkipped => "REVISIONS_SKIPPED",
            Self::ForeignLinksRemoved => "FOREIGN_LINKS_REMOVED",
            Self::PromptTextRemoved => "PROMPT_TEXT_REMOVED",
            Self::WriterRestarted => "WRITER_RESTARTED",
            Self::AnswerRepaired => "ANSWER_REPAIRED",
            Self::Degraded(agent) => match agent {
                AgentName::KbResearcher => "KB_RESEARCHER_DEGRADED",
                AgentName::WebResearcher => "WEB_RESEARCHER_DEGRADED",
                AgentName::ResearchSynthesizer => "RESEARCH_SYNTHESIZER_DEGRADED",
                AgentName::ContentWriter => "CONTENT_WRITER_DEGRADED",
                AgentName::MetricsAnalyzer => "METRICS_ANALYZER_DEGRADED",
                AgentName::SeoSpecialist => "SEO_SPECIALIST_DEGRADED",
                AgentName::FactChecker => "FACT_CHECKER_DEGRADED",
                AgentName::SocialPromoter => "SOCIAL_PROMOTER_DEGRADED",
                AgentName::SummaryWriter => "SUMMARY_WRITER_DEGRADED",
            },
        }
    }
}

/// Who is calling: an opaque, stable id of the API key used (not the key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

/// A source as research returned it, with the text the fact checker checks against.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDoc {
    pub source: api::Source,
    pub section: String,
    pub text: String,
}

/// A running job as the pipeline sees it: what it asks for, its cancellation, and where its
/// events go. The job's log implements it; the pipeline knows nothing else of jobs.
pub trait JobEvents: Send + Sync {
    fn id(&self) -> &str;
    fn request(&self) -> &Arc<JobRequest>;
    /// Cancels every agent and upstream call of the job.
    fn cancel(&self) -> &CancellationToken;
    /// Appends an event; progress never decreases, nothing follows the final event.
    fn emit(&self, event: Event, progress: u32);
}
