//! The LLM-backed agents: each asks an OpenAI-compatible model with its prompt file and,
//! except the writer, a strict JSON schema; answers are validated before they are used.
use std::{collections::BTreeSet, sync::Arc};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Agent, AgentContext, AgentError, AgentFuture, AgentName, AgentOutput, Draft, FactCheckInput,
    FinalArticle, KbResearch, OutlinePlan, OutlineSection, SourceDoc, Synthesis, SynthesisInput,
    WritingBrief, fact_check, offline, prompts::Prompts,
};
use crate::api::{self, Verdict};
use crate::server::{
    kb::KnowledgeSource,
    pipeline::{JobRequest, contract},
    text,
    upstream::{
        UpstreamError,
        llm::{Completion, LlmClient},
    },
};

/// Characters of each source's text shown to the synthesizer and the writer.
const SOURCE_EXCERPT_CHARS: usize = 1500;

/// What every LLM agent holds: the client, the prompts, and its model.
#[derive(Clone)]
pub struct LlmAgent {
    pub client: Arc<LlmClient>,
    pub prompts: Arc<Prompts>,
    pub model: String,
    pub name: AgentName,
}

fn unavailable(error: UpstreamError) -> AgentError {
    AgentError::Unavailable {
        upstream: error.upstream(),
        message: error.to_string(),
    }
}

/// The placeholders every prompt may use.
fn request_vars(request: &JobRequest) -> Vec<(&'static str, String)> {
    let instructions = if request.custom_instructions.is_empty() {
        "none".to_string()
    } else {
        request.custom_instructions.clone()
    };
    vec![
        ("topic", request.topic.clone()),
        ("audience", request.audience.clone()),
        ("tone", request.tone.clone()),
        ("word_count", request.word_count.to_string()),
        ("custom_instructions", instructions),
    ]
}

/// Schema of an object whose properties are all required and nothing else is allowed
/// (what strict structured outputs demand).
fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

impl LlmAgent {
    fn output<T>(&self, completion: Completion<T>, summary: String) -> AgentOutput<T> {
        AgentOutput {
            value: completion.value,
            usage: api::TokenUsage {
                input_tokens: completion.usage.input_tokens,
                output_tokens: completion.usage.output_tokens,
            },
            cache_hit: false,
            attempts: completion.attempts,
            summary,
            warnings: Vec::new(),
        }
    }

    /// One structured call with the agent's prompt, `extra` placeholders, and `schema`.
    async fn ask<T>(
        &self,
        cx: &AgentContext,
        prompt: &str,
        extra: &[(&'static str, String)],
        schema: Value,
        check: impl Fn(Value) -> Result<T, String>,
    ) -> Result<Completion<T>, AgentError> {
        let mut vars = request_vars(&cx.request);
        vars.extend(extra.iter().cloned());
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let prompt = self.prompts.render(prompt, &vars);
        let result = self
            .client
            .structured(
                &cx.scope,
                &self.model,
                &prompt,
                self.name.as_str(),
                &schema,
                check,
            )
            .await;
        cx.upstream.record("llm", result.is_ok());
        result.map_err(unavailable)
    }
}

macro_rules! llm_agent {
    ($agent:ident) => {
        fn provider(&self) -> &str {
            self.$agent.client.provider
        }
        fn model(&self) -> &str {
            &self.$agent.model
        }
    };
}

#[derive(Deserialize)]
struct Queries {
    queries: Vec<String>,
}

fn check_queries(value: Value) -> Result<Vec<String>, String> {
    let queries: Vec<String> = parse::<Queries>(value)?
        .queries
        .into_iter()
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect();
    if !(1..=6).contains(&queries.len()) {
        return Err(format!(
            "{} queries, expected 1-6 (3-4 asked)",
            queries.len()
        ));
    }
    Ok(queries.into_iter().take(4).collect())
}

/// Asks the model for search queries (`{"queries": [...]}`).
pub async fn ask_queries(
    agent: &LlmAgent,
    cx: &AgentContext,
    prompt: &str,
) -> Result<Completion<Vec<String>>, AgentError> {
    agent
        .ask(
            cx,
            prompt,
            &[],
            object(json!({"queries": strings()})),
            check_queries,
        )
        .await
}

/// `kb_researcher`: the model writes the queries; the batch search and ranking are code.
pub struct LlmKbResearcher {
    pub llm: LlmAgent,
    pub kb: KnowledgeSource,
}

impl Agent<JobRequest, KbResearch> for LlmKbResearcher {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        request: &'a JobRequest,
    ) -> AgentFuture<'a, KbResearch> {
        Box::pin(async move {
            let asked = ask_queries(&self.llm, cx, "kb_researcher").await?;
            // The topic itself leads: it decides whether the knowledge base covers it at all.
            let mut queries = vec![request.topic.clone()];
            queries.extend(
                asked
                    .value
                    .iter()
                    .filter(|q| !q.eq_ignore_ascii_case(&request.topic))
                    .cloned(),
            );
            let searched = offline::search_kb(cx, &self.kb, queries).await?;
            let completion = Completion {
                value: searched.value,
                usage: asked.usage,
                attempts: asked.attempts,
            };
            let mut output = self.llm.output(completion, searched.summary);
            output.attempts += searched.attempts.saturating_sub(1);
            Ok(output)
        })
    }
}

/// `research_synthesizer` in the research phase: the planned outline.
pub struct LlmOutlinePlanner {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct Sections {
    sections: Vec<String>,
}

fn check_headings(headings: &[String]) -> Result<(), String> {
    if !(3..=4).contains(&headings.len()) {
        return Err(format!("{} sections, expected 3-4", headings.len()));
    }
    if let Some(bad) = headings.iter().find(|h| {
        h.trim().is_empty()
            || contract::is_forbidden_heading(h)
            || contract::FIXED_SECTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(h.trim()))
    }) {
        return Err(format!("heading `{bad}` is empty, fixed or forbidden"));
    }
    Ok(())
}

impl Agent<JobRequest, OutlinePlan> for LlmOutlinePlanner {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        _request: &'a JobRequest,
    ) -> AgentFuture<'a, OutlinePlan> {
        Box::pin(async move {
            let schema = object(json!({"sections": strings()}));
            let answer = self
                .llm
                .ask(cx, "research_synthesizer.plan", &[], schema, |v| {
                    let sections = parse::<Sections>(v)?.sections;
                    check_headings(&sections)?;
                    Ok(OutlinePlan { sections })
                })
                .await?;
            let summary = format!("{} planned sections", answer.value.sections.len());
            Ok(self.llm.output(answer, summary))
        })
    }
}

/// Sources as the prompts list them: id, tier, date, title, excerpt.
fn describe_sources(sources: &[SourceDoc]) -> String {
    sources
        .iter()
        .map(|s| {
            let excerpt: String = s.text.chars().take(SOURCE_EXCERPT_CHARS).collect();
            let excerpt = if excerpt.trim().is_empty() {
                s.source.snippet.clone()
            } else {
                excerpt
            };
            format!(
                "[{}] {} (tier {}, {}, {})\n{}",
                s.source.id,
                s.source.title,
                s.source.authority_tier,
                if s.source.published.is_empty() {
                    "undated"
                } else {
                    &s.source.published
                },
                s.source.url,
                excerpt.replace("\n\n", "\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `research_synthesizer`: merging and ranking are code (as offline); the model writes the
/// outline and the key themes from the ranked sources.
pub struct LlmSynthesizer {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct SynthesisAnswer {
    outline: Vec<SectionAnswer>,
    key_themes: Vec<String>,
}

#[derive(Deserialize)]
struct SectionAnswer {
    heading: String,
    source_ids: Vec<String>,
}

impl Agent<SynthesisInput, Synthesis> for LlmSynthesizer {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        input: &'a SynthesisInput,
    ) -> AgentFuture<'a, Synthesis> {
        Box::pin(async move {
            let sources = offline::merge_sources(&cx.request, input)?;
            let ids: BTreeSet<String> = sources.iter().map(|s| s.source.id.clone()).collect();
            let schema = object(json!({
                "outline": {"type": "array", "items": object(json!({"heading": {"type": "string"}, "source_ids": strings()}))},
                "key_themes": strings(),
            }));
            let extra = [
                (
                    "outline",
                    input
                        .plan
                        .sections
                        .iter()
                        .map(|s| format!("- {s}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                ("sources", describe_sources(&sources)),
            ];
            let answer = self
                .llm
                .ask(cx, "research_synthesizer", &extra, schema, |v| {
                    let answer: SynthesisAnswer = parse(v)?;
                    let headings: Vec<String> =
                        answer.outline.iter().map(|s| s.heading.clone()).collect();
                    check_headings(&headings)?;
                    if let Some(unknown) = answer
                        .outline
                        .iter()
                        .flat_map(|s| &s.source_ids)
                        .find(|id| !ids.contains(*id))
                    {
                        return Err(format!("source id {unknown} is not one of the sources"));
                    }
                    if !(3..=4).contains(&answer.key_themes.len()) {
                        return Err(format!(
                            "{} key themes, expected 3-4",
                            answer.key_themes.len()
                        ));
                    }
                    Ok(answer)
                })
                .await?;
            let synthesis = Synthesis {
                outline: answer
                    .value
                    .outline
                    .iter()
                    .map(|s| OutlineSection {
                        heading: s.heading.trim().to_string(),
                        source_ids: s.source_ids.clone(),
                    })
                    .collect(),
                key_themes: answer.value.key_themes.clone(),
                sources,
            };
            let summary = format!(
                "{} sources, {} sections",
                synthesis.sources.len(),
                synthesis.outline.len()
            );
            Ok(self.llm.output(
                Completion {
                    value: synthesis,
                    usage: answer.usage,
                    attempts: answer.attempts,
                },
                summary,
            ))
        })
    }
}

/// `content_writer`: streams Markdown; deltas reach the client as they arrive.
pub struct LlmWriter {
    pub llm: LlmAgent,
}

impl Agent<WritingBrief, Draft> for LlmWriter {
    llm_agent!(llm);
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
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
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let prompt = self.llm.prompts.render("content_writer", &vars);
            let deltas = cx.deltas.clone();
            let result = self
                .llm
                .client
                .stream(&cx.scope, &self.llm.model, &prompt, &move |delta: &str| {
                    deltas(delta)
                })
                .await;
            cx.upstream.record("llm", result.is_ok());
            let completion = result.map_err(unavailable)?;
            let markdown = completion.value.trim().to_string();
            let summary = format!("{} words streamed", text::markdown_word_count(&markdown));
            let completion = Completion {
                value: Draft {
                    markdown,
                    reachable_words: None,
                },
                usage: completion.usage,
                attempts: completion.attempts,
            };
            Ok(self.llm.output(completion, summary))
        })
    }
}

/// `seo_specialist`: one call; limits are checked, an answer over them is asked again.
pub struct LlmSeo {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct SeoAnswer {
    title: String,
    meta_description: String,
    keywords: Vec<String>,
}

impl Agent<Draft, api::SeoMetadata> for LlmSeo {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        draft: &'a Draft,
    ) -> AgentFuture<'a, api::SeoMetadata> {
        Box::pin(async move {
            let schema = object(
                json!({"title": {"type": "string"}, "meta_description": {"type": "string"}, "keywords": strings()}),
            );
            let answer = self
                .llm
                .ask(
                    cx,
                    "seo_specialist",
                    &[("article", draft.markdown.clone())],
                    schema,
                    |v| {
                        let a: SeoAnswer = parse(v)?;
                        let (title, meta) = (
                            a.title.trim().to_string(),
                            a.meta_description.trim().to_string(),
                        );
                        if title.is_empty() || title.chars().count() > 60 {
                            return Err(format!(
                                "title of {} characters (1-60)",
                                title.chars().count()
                            ));
                        }
                        if meta.is_empty() || meta.chars().count() > 155 {
                            return Err(format!(
                                "meta description of {} characters (1-155)",
                                meta.chars().count()
                            ));
                        }
                        if !(5..=7).contains(&a.keywords.len()) {
                            return Err(format!("{} keywords (5-7)", a.keywords.len()));
                        }
                        Ok(api::SeoMetadata {
                            title,
                            meta_description: meta,
                            keywords: a.keywords,
                        })
                    },
                )
                .await?;
            let summary = format!(
                "title of {} chars, {} keywords",
                answer.value.title.chars().count(),
                answer.value.keywords.len()
            );
            Ok(self.llm.output(answer, summary))
        })
    }
}

/// `fact_checker`: claims are extracted by code; the model judges each against excerpts of
/// the sources it cites; a "supported" verdict stands only if its quoted evidence really is
/// in the source text, and citations to unknown sources always fail.
pub struct LlmFactChecker {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct VerdictsAnswer {
    verdicts: Vec<VerdictAnswer>,
}

#[derive(Deserialize)]
struct VerdictAnswer {
    claim: usize,
    verdict: String,
    evidence: String,
}

fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl Agent<FactCheckInput, api::FactCheckReport> for LlmFactChecker {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        input: &'a FactCheckInput,
    ) -> AgentFuture<'a, api::FactCheckReport> {
        Box::pin(async move {
            // The code check first: it finds the candidate sources and evidence of each claim.
            let mut report = fact_check::check_article(&input.markdown, &input.sources);
            if report.claims.is_empty() {
                return Ok(AgentOutput::local(report, "no checkable claims"));
            }
            let candidates = fact_check::extract_claims(&input.markdown);
            let listing = candidates
                .iter()
                .enumerate()
                .map(|(i, claim)| {
                    let excerpts = fact_check::candidate_sources(claim, &input.sources)
                        .iter()
                        .map(|s| {
                            format!(
                                "  [{}] {}",
                                s.source.id,
                                s.text
                                    .chars()
                                    .take(SOURCE_EXCERPT_CHARS)
                                    .collect::<String>()
                                    .replace('\n', " ")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    format!(
                        "{}. {}\n{}",
                        i + 1,
                        claim.text,
                        if excerpts.is_empty() {
                            "  (no source text)".into()
                        } else {
                            excerpts
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n\n");
            let schema = object(json!({"verdicts": {"type": "array", "items": object(json!({
                "claim": {"type": "integer"},
                "verdict": {"type": "string", "enum": ["supported", "unsupported", "unverifiable"]},
                "evidence": {"type": "string"},
            }))}}));
            let count = candidates.len();
            let answer = self
                .llm
                .ask(cx, "fact_checker", &[("claims", listing)], schema, |v| {
                    let answer: VerdictsAnswer = parse(v)?;
                    if let Some(bad) = answer
                        .verdicts
                        .iter()
                        .find(|v| v.claim == 0 || v.claim > count)
                    {
                        return Err(format!("verdict for claim {} of {count}", bad.claim));
                    }
                    Ok(answer)
                })
                .await?;
            for verdict in &answer.value.verdicts {
                let Some(claim) = report.claims.get_mut(verdict.claim - 1) else {
                    continue;
                };
                let candidate = &candidates[verdict.claim - 1];
                let sources = fact_check::candidate_sources(candidate, &input.sources);
                let invalid_citation = candidate
                    .cited_urls
                    .iter()
                    .any(|u| !input.sources.iter().any(|s| &s.source.url == u));
                let evidence_source = sources.iter().find(|s| {
                    !verdict.evidence.trim().is_empty()
                        && normalise(&s.text).contains(&normalise(&verdict.evidence))
                });
                match (verdict.verdict.as_str(), evidence_source) {
                    ("supported", Some(source)) if !invalid_citation => {
                        claim.set_verdict(Verdict::Supported);
                        claim.source_id = source.source.id.clone();
                        claim.source_url = source.source.url.clone();
                        claim.evidence = verdict.evidence.trim().to_string();
                    }
                    ("unverifiable", _) if sources.iter().all(|s| s.text.trim().is_empty()) => {
                        claim.set_verdict(Verdict::Unverifiable)
                    }
                    // "Supported" without evidence found in the source is not taken on trust.
                    _ => {
                        claim.set_verdict(Verdict::Unsupported);
                        claim.evidence.clear();
                    }
                }
            }
            fact_check::recount(&mut report);
            let summary = format!(
                "{} claims: {} supported, {} unsupported, {} unverifiable",
                report.claims.len(),
                report.supported,
                report.unsupported,
                report.unverifiable
            );
            Ok(self.llm.output(
                Completion {
                    value: report,
                    usage: answer.usage,
                    attempts: answer.attempts,
                },
                summary,
            ))
        })
    }
}

/// `social_promoter`.
pub struct LlmSocial {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct SocialAnswer {
    linkedin_posts: Vec<String>,
    thread: Vec<String>,
    email_snippet: String,
    instagram_post: String,
    facebook_post: String,
}

impl Agent<FinalArticle, api::SocialContent> for LlmSocial {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        article: &'a FinalArticle,
    ) -> AgentFuture<'a, api::SocialContent> {
        Box::pin(async move {
            let schema = object(json!({
                "linkedin_posts": strings(), "thread": strings(), "email_snippet": {"type": "string"},
                "instagram_post": {"type": "string"}, "facebook_post": {"type": "string"},
            }));
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let answer = self
                .llm
                .ask(cx, "social_promoter", &extra, schema, |v| {
                    let a: SocialAnswer = parse(v)?;
                    if a.linkedin_posts.len() != 3 || a.thread.len() != 10 {
                        return Err(format!(
                            "{} LinkedIn posts and {} thread posts (3 and 10)",
                            a.linkedin_posts.len(),
                            a.thread.len()
                        ));
                    }
                    if let Some(long) = a.thread.iter().find(|p| p.chars().count() > 280) {
                        return Err(format!(
                            "thread post of {} characters (at most 280)",
                            long.chars().count()
                        ));
                    }
                    Ok(api::SocialContent {
                        linkedin_posts: a.linkedin_posts,
                        thread: a.thread,
                        email_snippet: a.email_snippet,
                        instagram_post: a.instagram_post,
                        facebook_post: a.facebook_post,
                    })
                })
                .await?;
            Ok(self.llm.output(
                answer,
                "3 LinkedIn posts, a 10-post thread, email, Instagram, Facebook".into(),
            ))
        })
    }
}

/// `summary_writer`.
pub struct LlmSummary {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct SummaryAnswer {
    key_value: String,
    overview: String,
    takeaways: Vec<String>,
}

impl Agent<FinalArticle, api::Summary> for LlmSummary {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        article: &'a FinalArticle,
    ) -> AgentFuture<'a, api::Summary> {
        Box::pin(async move {
            let schema = object(
                json!({"key_value": {"type": "string"}, "overview": {"type": "string"}, "takeaways": strings()}),
            );
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let answer = self
                .llm
                .ask(cx, "summary_writer", &extra, schema, |v| {
                    let a: SummaryAnswer = parse(v)?;
                    if a.key_value.trim().is_empty()
                        || a.overview.trim().is_empty()
                        || a.takeaways.len() > 4
                    {
                        return Err(
                            "key_value and overview are required, takeaways at most 4".into()
                        );
                    }
                    Ok(api::Summary {
                        key_value: a.key_value,
                        overview: a.overview,
                        takeaways: a.takeaways,
                    })
                })
                .await?;
            let summary = format!("{} takeaways", answer.value.takeaways.len());
            Ok(self.llm.output(answer, summary))
        })
    }
}
