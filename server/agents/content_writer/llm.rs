//! The `content_writer` with an LLM: the model writes the article (or repairs it, in revision).
use crate::domain::WarningCode;
use crate::{
    agents::{
        Agent, AgentContext, AgentError, AgentFuture, Draft, WritingBrief,
        llm::{Asked, LlmAgent, describe_sources, llm_agent, request_vars, unavailable},
    },
    domain::contract,
    resilience::Calls,
    text,
    upstream::{UpstreamError, llm::Completion},
};

/// The most tokens the draft may use: about 1.3 tokens a word up to the contract's +15%,
/// with room for headings, bullets and `[S<n>]` markers (see the table in
/// [`crate::agents::llm`]).
pub(crate) fn max_tokens(words: usize) -> u32 {
    // At most what common models can return in one answer (16,384 for many).
    u32::try_from(words.saturating_mul(3) / 2 + 500)
        .unwrap_or(u32::MAX)
        .clamp(800, 16_000)
}

/// `content_writer`: streams Markdown; deltas reach the client as they arrive.
pub struct LlmWriter {
    pub llm: LlmAgent,
}

impl LlmWriter {
    async fn prompt(
        &self,
        cx: &AgentContext,
        brief: &WritingBrief,
        max_tokens: u32,
    ) -> crate::upstream::llm::Prompt {
        let synthesis = &brief.synthesis;
        let outline = synthesis
            .outline
            .iter()
            .map(|s| format!("- {} (sources: {})", s.heading, s.source_ids.join(", ")))
            .collect::<Vec<_>>()
            .join("\n");
        let revision = match &brief.revision {
            None => String::new(),
            Some(revision) => format!(
                "This is revision {}. The previous draft failed these checks:\n{}\n\nRepair only what failed and keep everything else as it is. Previous draft:\n\n{}\n",
                revision.iteration,
                revision
                    .problems
                    .iter()
                    .map(|p| format!("- {p}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                revision.previous
            ),
        };
        let mut vars = request_vars(&cx.request);
        vars.extend([
            ("outline", outline),
            ("key_themes", synthesis.key_themes.join("; ")),
            ("sources", describe_sources(&synthesis.sources)),
            ("revision", revision),
        ]);
        self.llm
            .render_fitted("content_writer", &vars, max_tokens)
            .await
    }
}

/// The writer's streamed draft, with what it cost and whether it was started over.
struct Written {
    streamed: crate::upstream::llm::Streamed,
    usage: crate::upstream::llm::Usage,
    attempts: u32,
    /// One per stream asked, the broken one too; a stream is never cached.
    calls: Calls,
    /// Why the first stream broke midway, when the draft was asked again.
    restarted: Option<String>,
    /// Set when the call's time budget cut the model off while it was still writing: its
    /// text so far is the draft, cut off (as one cut at `max_tokens` is).
    over_budget: Option<String>,
}

impl LlmWriter {
    /// Streams the draft to the client as it comes. An empty answer streamed nothing, so it
    /// can be asked again without repeating text (a second empty answer is the model's
    /// failure, not the network's); a stream that broke midway is asked again once, as a new
    /// iteration whose text replaces what the client got so far.
    async fn stream_draft(
        &self,
        cx: &AgentContext,
        prompt: &crate::upstream::llm::Prompt,
        max_tokens: u32,
    ) -> Result<Written, AgentError> {
        let deltas = cx.deltas.clone();
        // Whether this attempt's text reached the client.
        let reached = std::sync::atomic::AtomicBool::new(false);
        // This attempt's text, kept for when the time budget cuts it.
        let text = std::sync::Mutex::new(String::new());
        let on_delta = |delta: &str| {
            reached.store(true, std::sync::atomic::Ordering::Relaxed);
            crate::lock(&text).push_str(delta);
            deltas(delta)
        };
        let mut usage = crate::upstream::llm::Usage::default();
        let mut attempts = 0;
        let mut calls = Calls::default();
        let mut restarted = None;
        let mut over_budget = None;
        let mut streamed = None;
        for round in 0..2 {
            reached.store(false, std::sync::atomic::Ordering::Relaxed);
            crate::lock(&text).clear();
            let result = self
                .llm
                .client
                .stream(&cx.scope, &self.llm.model, prompt, max_tokens, &on_delta)
                .await;
            cx.upstream
                .record(crate::domain::Upstream::Llm, result.is_ok());
            calls.add(Calls::one(false));
            let completion = match result {
                Err(error)
                    if round == 0
                        && error.retryable()
                        && reached.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    cx.text_iteration
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    restarted = Some(error.to_string());
                    continue;
                }
                // Slow, not down: minutes of a local model's text are not thrown away.
                Err(error @ UpstreamError::OverBudget { .. })
                    if !crate::lock(&text).trim().is_empty() =>
                {
                    over_budget = Some(error.to_string());
                    let text = std::mem::take(&mut *crate::lock(&text));
                    streamed = Some(crate::upstream::llm::Streamed {
                        text,
                        truncated: true,
                    });
                    break;
                }
                result => result.map_err(unavailable)?,
            };
            usage.add(completion.usage);
            attempts += completion.attempts;
            if !completion.value.text.trim().is_empty() {
                streamed = Some(completion.value);
                break;
            }
        }
        let Some(streamed) = streamed else {
            return Err(AgentError::InvalidAnswer {
                agent: self.llm.name.as_str(),
                message: "the model answered with no text, twice".into(),
            });
        };
        Ok(Written {
            streamed,
            usage,
            attempts,
            calls,
            restarted,
            over_budget,
        })
    }
}

impl Agent<WritingBrief, Draft> for LlmWriter {
    llm_agent!(llm);
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
            let max_tokens = max_tokens(cx.request.word_count);
            let prompt = self.prompt(cx, brief, max_tokens).await;
            let Written {
                streamed,
                usage,
                attempts,
                calls,
                restarted,
                over_budget,
            } = self.stream_draft(cx, &prompt, max_tokens).await?;
            let (markdown, leaked) =
                contract::without_instructions(streamed.text.trim(), &prompt.system);
            let mut summary = format!("{} words streamed", text::markdown_word_count(&markdown));
            match &over_budget {
                Some(error) => summary.push_str(&format!(", cut off by its time budget ({error})")),
                None if streamed.truncated => {
                    summary.push_str(&format!(", cut off at {max_tokens} tokens"))
                }
                None => {}
            }
            let asked = Asked {
                completion: Completion {
                    value: Draft {
                        markdown,
                        reachable_words: None,
                        cut_off: streamed.truncated,
                    },
                    usage,
                    attempts,
                    cached: false,
                },
                repaired: None,
                calls,
            };
            let mut output = self.llm.output(asked, summary);
            if let Some(error) = restarted {
                output.warnings.push((
                    WarningCode::WriterRestarted,
                    format!(
                        "the writer's stream broke midway ({error}); the draft was written again, its text (a new iteration) replacing the broken one"
                    ),
                ));
            }
            if leaked > 0 {
                output.warnings.push((
                    WarningCode::PromptTextRemoved,
                    format!("{leaked} line(s) repeating the writer's instructions were removed"),
                ));
            }
            Ok(output)
        })
    }
}
