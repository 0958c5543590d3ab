//! What the offline agents share: deterministic, extractive implementations that build every
//! artifact from the retrieved sources, the embedded default when no LLM is configured. Each
//! agent's offline version lives in the agent's own file, next to its LLM version.
use std::sync::Arc;

use super::{
    AgentError, AgentFuture, AgentOutput, Agents, kb_researcher::KbResearcher,
    metrics_analyzer::MetricsAnalyzer, web_researcher::UnconfiguredWebResearcher,
};
use crate::kb::KnowledgeSource;

/// The provider and model the offline agents report (events, run metrics).
pub(super) const PROVIDER: &str = "offline";
pub(super) const MODEL: &str = "extractive";

/// The offline version of every agent: [`Agents::offline`].
pub fn agents(kb: KnowledgeSource) -> Agents {
    Agents {
        kb_researcher: Arc::new(KbResearcher { kb }),
        web_researcher: Arc::new(UnconfiguredWebResearcher),
        outline_planner: Arc::new(ExtractiveAgent),
        research_synthesizer: Arc::new(ExtractiveAgent),
        content_writer: Arc::new(ExtractiveAgent),
        offline: None,
        metrics_analyzer: Arc::new(MetricsAnalyzer),
        seo_specialist: Arc::new(ExtractiveAgent),
        fact_checker: Arc::new(ExtractiveAgent),
        social_promoter: Arc::new(ExtractiveAgent),
        summary_writer: Arc::new(ExtractiveAgent),
    }
}

/// A result that is already there, as an agent future.
pub(super) fn ready<'a, T: Send + 'a>(
    result: Result<AgentOutput<T>, AgentError>,
) -> AgentFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

/// Runs CPU-bound agent work on the blocking pool, so agents of one phase really run in
/// parallel and never stall the async executor.
pub(super) fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<AgentOutput<T>, AgentError> + Send + 'static,
) -> AgentFuture<'static, T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
    })
}

/// The offline agents that are pure functions of their input: all but the researchers.
pub(super) struct ExtractiveAgent;

/// Implements [`super::Agent`] for [`ExtractiveAgent`] in an agent's file:
/// `extractive!(Input => Output, |cx, input| body)`, the body run on the blocking pool.
macro_rules! extractive {
    ($input:ty => $output:ty, |$cx:ident, $arg:ident| $body:expr) => {
        impl $crate::agents::Agent<$input, $output> for $crate::agents::offline::ExtractiveAgent {
            fn provider(&self) -> &str {
                $crate::agents::offline::PROVIDER
            }
            fn model(&self) -> &str {
                $crate::agents::offline::MODEL
            }
            fn run<'a>(
                &'a self,
                cx: &'a $crate::agents::AgentContext,
                input: &'a $input,
            ) -> $crate::agents::AgentFuture<'a, $output> {
                let (cx, input) = (cx.clone(), input.clone());
                $crate::agents::offline::blocking(move || {
                    let ($cx, $arg) = (&cx, &input);
                    $body
                })
            }
        }
    };
}

pub(super) use extractive;
