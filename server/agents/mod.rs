//! The agents of SPEC §4 behind one trait, so that the offline (extractive) implementations
//! and LLM-backed ones are interchangeable per agent.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

pub use crate::domain::{AgentName, SourceDoc, Upstream, WarningCode};
use crate::{domain::JobRequest, kb::KnowledgeSource, resilience::Calls};
use dakota::api;

// One module per agent of SPEC §4 (a folder where it is large), its offline and LLM versions
// side by side; beneath them what the versions of every agent share.
pub mod content_writer;
pub mod fact_checker;
pub mod kb_researcher;
pub mod metrics_analyzer;
pub mod research_synthesizer;
pub mod seo_specialist;
pub mod social_promoter;
pub mod summary_writer;
pub mod web_researcher;

mod extract;
pub(crate) mod fit;
pub mod llm;
mod offline;
pub mod pricing;
pub mod prompts;
pub mod select;
mod truncated;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Research found nothing to write from.
    #[error("{0}")]
    NoSources(String),
    #[error("knowledge base: {0}")]
    Kb(#[from] crate::kb::KbError),
    /// A dependency is down or answered garbage after every retry.
    #[error("{upstream} unavailable: {message}")]
    Unavailable {
        upstream: &'static str,
        message: String,
    },
    /// The model answered, but not with anything usable, even after a corrective re-ask.
    #[error("{agent}: {message}")]
    InvalidAnswer {
        agent: &'static str,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// The model answered, but nothing usable (not that it was unreachable).
    pub fn is_invalid_answer(&self) -> bool {
        matches!(self, Self::InvalidAnswer { .. })
    }

    /// The LLM was unreachable or its answers unusable.
    pub fn is_llm_failure(&self) -> bool {
        matches!(
            self,
            Self::InvalidAnswer { .. }
                | Self::Unavailable {
                    upstream: "llm",
                    ..
                }
        )
    }

    /// Low-cardinality cause, for warnings and the run metrics of degraded parts.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NoSources(_) => "no_sources",
            Self::Kb(_) => "knowledge_base",
            Self::Unavailable { .. } => "unavailable",
            Self::InvalidAnswer { .. } => "invalid_answer",
            Self::Internal(_) => "internal",
        }
    }
}

/// What every agent run returns besides its value: the accounting shown in
/// `agent_completed` events and the article's run metrics.
#[derive(Debug, Clone, Default)]
pub struct AgentOutput<T> {
    pub value: T,
    pub usage: api::TokenUsage,
    /// The upstream calls the agent asked for, and those the cache answered.
    pub calls: Calls,
    pub attempts: u32,
    /// One line on what was produced.
    pub summary: String,
    /// Degraded steps, reported as `warning` events: (code, message).
    pub warnings: Vec<(WarningCode, String)>,
    /// Set when this output came from the agent's offline fallback: why the primary failed.
    pub degraded: Option<Degraded>,
}

/// Why an agent's output came from its fallback.
#[derive(Debug, Clone)]
pub struct Degraded {
    /// [`AgentError::cause`] of the primary's failure.
    pub cause: &'static str,
    pub message: String,
    /// Provider and model that produced the output instead.
    pub provider: String,
    pub model: String,
}

impl<T> AgentOutput<T> {
    /// A local, single-attempt result (offline agents).
    pub fn local(value: T, summary: impl Into<String>) -> Self {
        Self {
            value,
            usage: api::TokenUsage::default(),
            calls: Calls::default(),
            attempts: 1,
            summary: summary.into(),
            warnings: Vec::new(),
            degraded: None,
        }
    }

    /// The calls, attempts and tokens the resilience stack counted for this run, when it
    /// made any (an offline agent makes none and keeps its own single attempt). A part whose
    /// LLM version failed before its offline version stood in keeps what that failure cost.
    pub fn take_counted(&mut self, counted: crate::resilience::Counted) {
        if counted.calls.total == 0 {
            return;
        }
        self.calls = counted.calls;
        self.attempts = counted.attempts;
        self.usage = api::TokenUsage {
            input_tokens: counted.input_tokens,
            output_tokens: counted.output_tokens,
        };
    }

    /// Every call answered by the cache (`agent_completed`'s `cache_hit`).
    pub fn cache_hit(&self) -> bool {
        self.calls.all_cached()
    }
}

/// An LLM agent with its offline implementation behind it: when the LLM agent fails in a
/// way `when` accepts (its answers unusable after a re-ask and repair, or the upstream
/// down), the job goes on with the offline output and a warning instead of failing.
pub struct WithFallback<I: ?Sized, O> {
    pub name: AgentName,
    pub primary: Arc<dyn Agent<I, O>>,
    pub fallback: Arc<dyn Agent<I, O>>,
    /// The failures of the primary the fallback stands in for, e.g.
    /// [`AgentError::is_llm_failure`].
    pub when: fn(&AgentError) -> bool,
}

impl<I: ?Sized + Sync, O: Send> Agent<I, O> for WithFallback<I, O> {
    fn provider(&self) -> &str {
        self.primary.provider()
    }
    fn model(&self) -> &str {
        self.primary.model()
    }
    fn run<'a>(&'a self, cx: &'a AgentContext, input: &'a I) -> AgentFuture<'a, O> {
        Box::pin(async move {
            let error = match self.primary.run(cx, input).await {
                Ok(output) => return Ok(output),
                // Only the model's failures: the offline version would meet a failing
                // knowledge base just the same.
                Err(error) if cx.cancel.is_cancelled() || !(self.when)(&error) => {
                    return Err(error);
                }
                Err(error) => error,
            };
            tracing::warn!(agent = self.name.as_str(), %error, "agent failed; using its offline version");
            let mut output = self.fallback.run(cx, input).await?;
            let message = format!(
                "{} failed ({error}); its offline version stood in",
                self.name.as_str()
            );
            output
                .warnings
                .push((WarningCode::Degraded(self.name), message.clone()));
            output.degraded = Some(Degraded {
                cause: error.cause(),
                message,
                provider: self.fallback.provider().to_string(),
                model: self.fallback.model().to_string(),
            });
            Ok(output)
        })
    }
}

/// An agent's offline version run instead of its LLM version because the job's deadline
/// leaves the model no time for it: the part is degraded (cause `deadline`), with a warning
/// saying why.
pub struct Hurried<I: ?Sized, O> {
    pub name: AgentName,
    pub offline: Arc<dyn Agent<I, O>>,
    pub why: String,
}

impl<I: ?Sized + Sync, O: Send> Agent<I, O> for Hurried<I, O> {
    fn provider(&self) -> &str {
        self.offline.provider()
    }
    fn model(&self) -> &str {
        self.offline.model()
    }
    fn run<'a>(&'a self, cx: &'a AgentContext, input: &'a I) -> AgentFuture<'a, O> {
        Box::pin(async move {
            let mut output = self.offline.run(cx, input).await?;
            let message = format!("{}: {}", self.name.as_str(), self.why);
            output
                .warnings
                .push((WarningCode::Degraded(self.name), message.clone()));
            output.degraded = Some(Degraded {
                cause: "deadline",
                message,
                provider: self.offline.provider().to_string(),
                model: self.offline.model().to_string(),
            });
            Ok(output)
        })
    }
}

pub type AgentResult<T> = Result<AgentOutput<T>, AgentError>;
pub type AgentFuture<'a, T> = Pin<Box<dyn Future<Output = AgentResult<T>> + Send + 'a>>;

/// Receives the writer's text as it is produced (`content_delta` events).
pub type DeltaSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Per-job context handed to every agent run.
#[derive(Clone)]
pub struct AgentContext {
    pub request: Arc<JobRequest>,
    pub cancel: CancellationToken,
    pub deltas: DeltaSink,
    /// The iteration the `deltas` carry: a higher one replaces the text so far (a revision,
    /// or a writer's stream started over after it broke midway).
    pub text_iteration: Arc<AtomicU32>,
    pub upstream: Arc<UpstreamCounters>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The pool this agent's upstream calls count against, and the job's deadline.
    pub scope: crate::resilience::CallScope,
}

/// Upstream calls made by a job, by upstream.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// (calls, errors), indexed by the upstream.
    counts: [(AtomicU32, AtomicU32); 4],
}

impl UpstreamCounters {
    pub fn record(&self, upstream: Upstream, ok: bool) {
        let i = upstream as usize;
        self.counts[i].0.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.counts[i].1.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<api::UpstreamCalls> {
        Upstream::ALL
            .iter()
            .map(|&upstream| {
                let (calls, errors) = &self.counts[upstream as usize];
                api::UpstreamCalls {
                    upstream: upstream.as_str().to_string(),
                    calls: calls.load(Ordering::Relaxed),
                    errors: errors.load(Ordering::Relaxed),
                }
            })
            .filter(|u| u.calls > 0)
            .collect()
    }
}

/// One agent: typed input and output, provider and model for the record.
pub trait Agent<I: ?Sized, O>: Send + Sync {
    /// `offline`, or the LLM provider.
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
    fn run<'a>(&'a self, cx: &'a AgentContext, input: &'a I) -> AgentFuture<'a, O>;
}

#[derive(Debug, Clone, Default)]
pub struct KbResearch {
    pub queries: Vec<String>,
    pub sources: Vec<SourceDoc>,
    pub insights: Vec<String>,
    pub related: Vec<api::RelatedArticle>,
}

#[derive(Debug, Clone, Default)]
pub struct WebResearch {
    pub queries: Vec<String>,
    pub sources: Vec<SourceDoc>,
    pub summary: String,
}

/// Section headings planned from the topic alone, before research returns.
#[derive(Debug, Clone, Default)]
pub struct OutlinePlan {
    pub sections: Vec<String>,
}

#[derive(Clone)]
pub struct SynthesisInput {
    pub plan: OutlinePlan,
    pub kb: KbResearch,
    pub web: WebResearch,
}

#[derive(Debug, Clone, Default)]
pub struct OutlineSection {
    pub heading: String,
    /// Source ids (`S1` ...) the section draws on, best first.
    pub source_ids: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Synthesis {
    /// Merged, deduplicated by URL, ranked, at most 10; ids `S1`, `S2`, ... in rank order.
    pub sources: Vec<SourceDoc>,
    pub outline: Vec<OutlineSection>,
    pub key_themes: Vec<String>,
}

/// What the writer is asked for: a first draft, or a repair of the failing parts of one.
#[derive(Clone)]
pub struct WritingBrief {
    pub synthesis: Arc<Synthesis>,
    pub revision: Option<Revision>,
}

#[derive(Clone)]
pub struct Revision {
    pub iteration: u32,
    pub previous: String,
    pub problems: Vec<crate::domain::contract::Problem>,
}

/// The article as finally written: Markdown whose citations are links to source URLs.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub markdown: String,
    /// Set when the sources ran out before the target length: about the most words they
    /// support. A revision cannot add material, so none is spent on the length.
    pub reachable_words: Option<usize>,
    /// The model stopped at its `max_tokens` before the article ended.
    pub cut_off: bool,
}

#[derive(Clone)]
pub struct FactCheckInput {
    pub markdown: String,
    pub sources: Arc<Vec<SourceDoc>>,
}

/// The finished article the distribution agents work from.
#[derive(Clone)]
pub struct FinalArticle {
    pub title: String,
    pub markdown: String,
    pub seo: api::SeoMetadata,
    pub key_themes: Vec<String>,
}

/// Builds the agents once the knowledge base is ready ([`Agents::build`] in production).
pub type AgentsFactory = Arc<dyn Fn(KnowledgeSource, &select::Upstreams) -> Agents + Send + Sync>;

/// One implementation chosen per agent.
#[derive(Clone)]
pub struct Agents {
    pub kb_researcher: Arc<dyn Agent<JobRequest, KbResearch>>,
    pub web_researcher: Arc<dyn Agent<JobRequest, WebResearch>>,
    /// `research_synthesizer` in the research phase: the outline from the topic.
    pub outline_planner: Arc<dyn Agent<JobRequest, OutlinePlan>>,
    pub research_synthesizer: Arc<dyn Agent<SynthesisInput, Synthesis>>,
    pub content_writer: Arc<dyn Agent<WritingBrief, Draft>>,
    /// The offline agents, when the model writes the others: the writer whose draft replaces
    /// one that still misses the article contract after the revisions, and the parts a job
    /// short of time has written offline. `None` when these agents are the offline ones.
    pub offline: Option<Arc<Agents>>,
    pub metrics_analyzer: Arc<dyn Agent<Draft, api::ContentMetrics>>,
    pub seo_specialist: Arc<dyn Agent<Draft, api::SeoMetadata>>,
    pub fact_checker: Arc<dyn Agent<FactCheckInput, api::FactCheckReport>>,
    pub social_promoter: Arc<dyn Agent<FinalArticle, api::SocialContent>>,
    pub summary_writer: Arc<dyn Agent<FinalArticle, api::Summary>>,
}

impl Agents {
    /// The embedded default: deterministic, extractive agents working from the knowledge base.
    pub fn offline(kb: KnowledgeSource) -> Self {
        offline::agents(kb)
    }
}
