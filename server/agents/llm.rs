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
use crate::{
    domain::{JobRequest, contract},
    kb::KnowledgeSource,
    resilience::Calls,
    text,
    upstream::{
        UpstreamError,
        llm::{Answer, Ask, Completion, LlmClient},
    },
};
use dakota::api::{self, Verdict};

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

/// The most tokens each structured answer may use: room for what is asked, not for a model
/// that rambles until the server's own limit.
mod budget {
    pub const QUERIES: u32 = 300;
    pub const OUTLINE_PLAN: u32 = 300;
    pub const SYNTHESIS: u32 = 1_200;
    pub const SEO: u32 = 400;
    pub const SOCIAL: u32 = 2_500;
    pub const SUMMARY: u32 = 600;
    /// Fact check: a base plus this much per claim, up to the cap.
    pub const VERDICT_BASE: u32 = 200;
    pub const PER_VERDICT: u32 = 120;
    pub const VERDICTS_CAP: u32 = 4_000;

    /// The writer: about 1.3 tokens a word, with room for Markdown, citation markers and
    /// slack.
    pub fn writer(words: usize) -> u32 {
        // At most what common models can return in one answer (16,384 for many).
        u32::try_from(words.saturating_mul(2).saturating_add(1_000))
            .unwrap_or(u32::MAX)
            .clamp(1_000, 16_000)
    }
}

/// How an answer measures up against what was asked.
pub enum Checked<T> {
    Fits(T),
    /// It bends a limit; `repaired` is the safe deterministic fix, used when the corrective
    /// re-ask does not fit either.
    Repairable {
        problem: String,
        repaired: T,
    },
    Unfit(String),
}

impl<T> From<Result<T, String>> for Checked<T> {
    fn from(result: Result<T, String>) -> Self {
        match result {
            Ok(value) => Checked::Fits(value),
            Err(problem) => Checked::Unfit(problem),
        }
    }
}

/// The JSON object in a model's answer: the whole answer, or the object inside a Markdown
/// fence or surrounding prose (what models say when no schema is enforced).
fn json_in(content: &str) -> Option<Value> {
    let content = content.trim();
    if let Ok(value @ Value::Object(_)) = serde_json::from_str(content) {
        return Some(value);
    }
    let start = content.find('{')?;
    let end = content.rfind('}')?;
    match serde_json::from_str(content.get(start..=end)?) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    }
}

/// Judges one answer: cut off, not JSON, or whatever `check` says of it.
fn judge<T>(answer: &Answer, max_tokens: u32, check: &impl Fn(Value) -> Checked<T>) -> Checked<T> {
    if answer.truncated {
        return Checked::Unfit(format!(
            "the answer was cut off at the limit of {max_tokens} tokens; answer briefly, within the limits stated"
        ));
    }
    match json_in(&answer.content) {
        Some(value) => check(value),
        None if answer.content.trim().is_empty() => Checked::Unfit("the answer was empty".into()),
        None => Checked::Unfit("the answer was not one JSON object".into()),
    }
}

/// How much of a rejected answer is shown back to the model in the re-ask.
const ECHOED_ANSWER_CHARS: usize = 2_000;

/// An answer accepted by [`LlmAgent::ask`], and how it was obtained.
pub struct Asked<T> {
    pub completion: Completion<T>,
    /// Set when the answer was repaired by code: what was wrong with it.
    pub repaired: Option<String>,
    /// Every round asked (a re-ask is a call of its own), and those the cache answered.
    pub calls: Calls,
}

impl<T> Asked<T> {
    /// The same accounting with another value (what the agent made of the answer).
    pub fn with<U>(self, value: U) -> Asked<U> {
        Asked {
            completion: self.completion.with(value),
            repaired: self.repaired,
            calls: self.calls,
        }
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

/// An array of strings with `min..=max` items.
fn strings(min: usize, max: usize) -> Value {
    json!({"type": "array", "items": {"type": "string"}, "minItems": min, "maxItems": max})
}

fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("the answer does not fit the schema: {e}"))
}

impl LlmAgent {
    /// A string of at most `max` characters: the limit in the description always (models read
    /// it), and as `maxLength` where the provider enforces it.
    fn text(&self, max: usize, what: &str) -> Value {
        let mut schema =
            json!({"type": "string", "description": format!("{what}, at most {max} characters")});
        if self.client.accepts_max_length() {
            schema["maxLength"] = json!(max);
        }
        schema
    }

    pub fn output<T>(&self, asked: Asked<T>, summary: String) -> AgentOutput<T> {
        let (completion, calls) = (asked.completion, asked.calls);
        let mut warnings = Vec::new();
        if let Some(problem) = asked.repaired {
            warnings.push((
                "ANSWER_REPAIRED",
                format!(
                    "{}: the model's answer still bent a limit after a corrective re-ask ({problem}); repaired by code",
                    self.name.as_str()
                ),
            ));
        }
        AgentOutput {
            value: completion.value,
            usage: api::TokenUsage {
                input_tokens: completion.usage.input_tokens,
                output_tokens: completion.usage.output_tokens,
            },
            calls,
            attempts: completion.attempts,
            summary,
            warnings,
            degraded: None,
        }
    }

    /// One structured question with the agent's prompt and `extra` placeholders. An answer
    /// that does not fit gets one corrective re-ask naming what was wrong; if that does not
    /// fit either, the safe repair of either answer is used; else the agent fails with
    /// [`AgentError::InvalidAnswer`]. Only transport failures are [`AgentError::Unavailable`].
    async fn ask<T>(
        &self,
        cx: &AgentContext,
        prompt: &str,
        extra: &[(&'static str, String)],
        schema: Value,
        max_tokens: u32,
        check: impl Fn(Value) -> Checked<T>,
    ) -> Result<Asked<T>, AgentError> {
        let mut vars = request_vars(&cx.request);
        vars.extend(extra.iter().cloned());
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let prompt = self.prompts.render(prompt, &vars);
        let question = Ask {
            model: &self.model,
            name: self.name.as_str(),
            schema: &schema,
            max_tokens,
        };
        let mut turns: Vec<(&str, String)> = Vec::new();
        // The accounting of both rounds together.
        let mut total = Completion {
            value: (),
            usage: crate::upstream::llm::Usage::default(),
            attempts: 0,
            cached: true,
        };
        let mut calls = Calls::default();
        let mut repaired: Option<(String, T)> = None;
        let mut problem = String::new();
        for round in 0..2 {
            let result = self
                .client
                .structured(&cx.scope, question, &prompt, &turns)
                .await;
            cx.upstream.record("llm", result.is_ok());
            let answer = result.map_err(unavailable)?;
            total.usage.add(answer.usage);
            total.attempts += answer.attempts;
            total.cached &= answer.cached;
            calls.add(Calls::one(answer.cached));
            match judge(&answer.value, max_tokens, &check) {
                Checked::Fits(value) => {
                    return Ok(Asked {
                        completion: total.with(value),
                        repaired: None,
                        calls,
                    });
                }
                Checked::Repairable {
                    problem: found,
                    repaired: value,
                } => {
                    problem = found.clone();
                    repaired = Some((found, value));
                }
                Checked::Unfit(found) => problem = found,
            }
            tracing::info!(agent = self.name.as_str(), round, %problem, "answer does not fit");
            if round == 0 {
                turns.extend(corrective_turns(&answer.value.content, &problem));
            }
        }
        match repaired {
            Some((found, value)) => Ok(Asked {
                completion: total.with(value),
                repaired: Some(found),
                calls,
            }),
            None => Err(AgentError::InvalidAnswer {
                agent: self.name.as_str(),
                message: format!("the answer did not fit after a corrective re-ask: {problem}"),
            }),
        }
    }
}

/// The re-ask after an answer that did not fit: the answer (its start) and what was wrong.
fn corrective_turns(answer: &str, problem: &str) -> [(&'static str, String); 2] {
    let shown: String = answer.chars().take(ECHOED_ANSWER_CHARS).collect();
    [
        ("assistant", shown),
        (
            "user",
            format!(
                "Your answer was not accepted: {problem}. Answer again with one JSON object that follows the schema and fixes exactly this."
            ),
        ),
    ]
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

/// 3-4 distinct, non-empty queries; too few are padded from the topic's own queries, too many
/// cut to four.
fn check_queries(topic: &str, value: Value) -> Checked<Vec<String>> {
    let mut queries: Vec<String> = match parse::<Queries>(value) {
        Ok(q) => q.queries,
        Err(problem) => return Checked::Unfit(problem),
    };
    queries = queries.iter().map(|q| q.trim().to_string()).collect();
    queries.retain(|q| !q.is_empty());
    let mut seen = BTreeSet::new();
    queries.retain(|q| seen.insert(q.to_lowercase()));
    let n = queries.len();
    if (3..=4).contains(&n) {
        return Checked::Fits(queries);
    }
    let problem = format!("{n} queries, expected 3-4 distinct, non-empty queries");
    for padding in offline::kb_queries(topic) {
        if queries.len() >= 3 {
            break;
        }
        if seen.insert(padding.to_lowercase()) {
            queries.push(padding);
        }
    }
    queries.truncate(4);
    Checked::Repairable {
        problem,
        repaired: queries,
    }
}

/// Asks the model for search queries (`{"queries": [...]}`).
pub async fn ask_queries(
    agent: &LlmAgent,
    cx: &AgentContext,
    prompt: &str,
) -> Result<Asked<Vec<String>>, AgentError> {
    let topic = cx.request.topic.clone();
    agent
        .ask(
            cx,
            prompt,
            &[],
            object(json!({"queries": strings(3, 4)})),
            budget::QUERIES,
            |v| check_queries(&topic, v),
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
                    .completion
                    .value
                    .iter()
                    .filter(|q| !q.eq_ignore_ascii_case(&request.topic))
                    .cloned(),
            );
            let searched = offline::search_kb(cx, &self.kb, queries).await?;
            let mut asked = asked.with(searched.value);
            asked.calls.add(searched.calls);
            let mut output = self.llm.output(asked, searched.summary);
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

/// A heading the article may not use as a main section: empty, fixed, or forbidden.
fn unusable_heading(heading: &str) -> bool {
    heading.trim().is_empty()
        || contract::is_forbidden_heading(heading)
        || contract::FIXED_SECTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(heading.trim()))
}

/// 3-4 usable, distinct headings; otherwise the usable ones, padded from the headings
/// planned from the topic, or cut to four.
fn check_headings(topic: &str, headings: Vec<String>) -> Checked<Vec<String>> {
    let n = headings.len();
    let bad = headings.iter().find(|h| unusable_heading(h)).cloned();
    let mut seen = BTreeSet::new();
    let distinct = headings
        .iter()
        .all(|h| seen.insert(h.trim().to_lowercase()));
    if (3..=4).contains(&n) && bad.is_none() && distinct {
        return Checked::Fits(headings.iter().map(|h| h.trim().to_string()).collect());
    }
    let problem = match bad {
        Some(bad) => {
            format!("the heading `{bad}` is empty, one of the fixed sections, or forbidden")
        }
        None if !distinct => "the same heading appears twice".into(),
        None => format!("{n} sections, expected 3-4"),
    };
    let mut fixed: Vec<String> = Vec::new();
    for heading in headings
        .iter()
        .chain(&offline::planned_sections(topic))
        .map(|h| h.trim().to_string())
    {
        if fixed.len() < 3
            && !unusable_heading(&heading)
            && !fixed.iter().any(|f| f.eq_ignore_ascii_case(&heading))
        {
            fixed.push(heading);
        }
    }
    Checked::Repairable {
        problem,
        repaired: fixed,
    }
}

impl Agent<JobRequest, OutlinePlan> for LlmOutlinePlanner {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        request: &'a JobRequest,
    ) -> AgentFuture<'a, OutlinePlan> {
        Box::pin(async move {
            let schema = object(json!({"sections": strings(3, 4)}));
            let answer = self
                .llm
                .ask(
                    cx,
                    "research_synthesizer.plan",
                    &[],
                    schema,
                    budget::OUTLINE_PLAN,
                    |v| match parse::<Sections>(v) {
                        Ok(answer) => match check_headings(&request.topic, answer.sections) {
                            Checked::Fits(sections) => Checked::Fits(OutlinePlan { sections }),
                            Checked::Repairable { problem, repaired } => Checked::Repairable {
                                problem,
                                repaired: OutlinePlan { sections: repaired },
                            },
                            Checked::Unfit(problem) => Checked::Unfit(problem),
                        },
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
                .await?;
            let summary = format!(
                "{} planned sections",
                answer.completion.value.sections.len()
            );
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

/// The longest section heading.
const HEADING_CHARS: usize = 80;

/// The outline and themes, checked against the sources and the planned headings. Repairs:
/// unknown source ids dropped, a section without sources given the best one, usable sections
/// merged into the fourth beyond four or padded from the plan below three, themes cut to four
/// or padded from the headings.
fn check_synthesis(
    answer: SynthesisAnswer,
    ids: &[String],
    plan: &[String],
) -> Checked<(Vec<OutlineSection>, Vec<String>)> {
    let mut problems = Vec::new();
    let mut outline = usable_sections(answer.outline, ids, &mut problems);
    let n = outline.len();
    if !(3..=4).contains(&n) {
        problems.push(format!("{n} usable sections, expected 3-4"));
    }
    if outline.iter().any(|s| s.source_ids.is_empty()) {
        problems.push("a section names no source".into());
    }
    let mut themes: Vec<String> = answer
        .key_themes
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if !(3..=4).contains(&themes.len()) {
        problems.push(format!("{} key themes, expected 3-4", themes.len()));
    }
    if problems.is_empty() {
        return Checked::Fits((outline, themes));
    }
    repair_outline(&mut outline, ids, plan);
    themes.truncate(4);
    for section in &outline {
        if themes.len() >= 3 {
            break;
        }
        themes.push(section.heading.clone());
    }
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: (outline, themes),
    }
}

/// The model's sections with usable headings (cut to [`HEADING_CHARS`]; neither empty,
/// fixed, forbidden nor repeated) and only known source ids; what was wrong goes to
/// `problems`.
fn usable_sections(
    sections: Vec<SectionAnswer>,
    ids: &[String],
    problems: &mut Vec<String>,
) -> Vec<OutlineSection> {
    let mut outline: Vec<OutlineSection> = Vec::new();
    for section in sections {
        let mut heading = section.heading.trim().to_string();
        if heading.chars().count() > HEADING_CHARS {
            problems.push(format!(
                "a heading of {} characters (at most {HEADING_CHARS})",
                heading.chars().count()
            ));
            heading = cut_at_word(&heading, HEADING_CHARS);
        }
        if unusable_heading(&heading) {
            problems.push(format!(
                "the heading `{heading}` is empty, fixed or forbidden"
            ));
            continue;
        }
        if let Some(unknown) = section.source_ids.iter().find(|id| !ids.contains(id)) {
            problems.push(format!("source id {unknown} is not one of the sources"));
        }
        if outline
            .iter()
            .any(|s| s.heading.eq_ignore_ascii_case(&heading))
        {
            problems.push(format!("the heading `{heading}` appears twice"));
            continue;
        }
        let known = section.source_ids.into_iter().filter(|id| ids.contains(id));
        outline.push(OutlineSection {
            heading,
            source_ids: known.collect(),
        });
    }
    outline
}

/// Three or four sections: extras merged into the fourth, missing ones from the planned
/// headings; each with one to four distinct sources (the best one when it named none).
fn repair_outline(outline: &mut Vec<OutlineSection>, ids: &[String], plan: &[String]) {
    while outline.len() > 4 {
        if let Some(extra) = outline.pop()
            && let Some(last) = outline.last_mut()
        {
            last.source_ids.extend(extra.source_ids);
        }
    }
    for heading in plan {
        if outline.len() >= 3 {
            break;
        }
        if !outline
            .iter()
            .any(|s| s.heading.eq_ignore_ascii_case(heading))
        {
            outline.push(OutlineSection {
                heading: heading.clone(),
                source_ids: Vec::new(),
            });
        }
    }
    for (i, section) in outline.iter_mut().enumerate() {
        let mut seen = BTreeSet::new();
        section.source_ids.retain(|id| seen.insert(id.clone()));
        section.source_ids.truncate(4);
        if section.source_ids.is_empty()
            && let Some(id) = ids.get(i % ids.len().max(1))
        {
            section.source_ids.push(id.clone());
        }
    }
}

impl Agent<SynthesisInput, Synthesis> for LlmSynthesizer {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        input: &'a SynthesisInput,
    ) -> AgentFuture<'a, Synthesis> {
        Box::pin(async move {
            let (sources, off_topic) = offline::merge_sources(&cx.request, input)?;
            let ids: Vec<String> = sources.iter().map(|s| s.source.id.clone()).collect();
            let schema = object(json!({
                "outline": {
                    "type": "array", "minItems": 3, "maxItems": 4,
                    "items": object(json!({"heading": self.llm.text(HEADING_CHARS, "the section heading"), "source_ids": strings(1, 4)})),
                },
                "key_themes": strings(3, 4),
            }));
            let mut plan = input.plan.sections.clone();
            plan.extend(offline::planned_sections(&cx.request.topic));
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
                .ask(
                    cx,
                    "research_synthesizer",
                    &extra,
                    schema,
                    budget::SYNTHESIS,
                    |v| match parse::<SynthesisAnswer>(v) {
                        Ok(answer) => check_synthesis(answer, &ids, &plan),
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
                .await?;
            let (outline, key_themes) = answer.completion.value.clone();
            let synthesis = Synthesis {
                outline,
                key_themes,
                sources,
            };
            let summary = format!(
                "{} sources, {} sections",
                synthesis.sources.len(),
                synthesis.outline.len()
            );
            let mut output = self.llm.output(answer.with(synthesis), summary);
            output
                .warnings
                .extend(off_topic.map(|w| (offline::OFF_TOPIC, w)));
            Ok(output)
        })
    }
}

/// `content_writer`: streams Markdown; deltas reach the client as they arrive.
pub struct LlmWriter {
    pub llm: LlmAgent,
}

impl LlmWriter {
    fn prompt(&self, cx: &AgentContext, brief: &WritingBrief) -> crate::upstream::llm::Prompt {
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
        self.llm.prompts.render("content_writer", &vars)
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
        let on_delta = |delta: &str| {
            reached.store(true, std::sync::atomic::Ordering::Relaxed);
            deltas(delta)
        };
        let mut usage = crate::upstream::llm::Usage::default();
        let mut attempts = 0;
        let mut calls = Calls::default();
        let mut restarted = None;
        let mut streamed = None;
        for round in 0..2 {
            reached.store(false, std::sync::atomic::Ordering::Relaxed);
            let result = self
                .llm
                .client
                .stream(&cx.scope, &self.llm.model, prompt, max_tokens, &on_delta)
                .await;
            cx.upstream.record("llm", result.is_ok());
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
        })
    }
}

impl Agent<WritingBrief, Draft> for LlmWriter {
    llm_agent!(llm);
    fn run<'a>(&'a self, cx: &'a AgentContext, brief: &'a WritingBrief) -> AgentFuture<'a, Draft> {
        Box::pin(async move {
            let prompt = self.prompt(cx, brief);
            let max_tokens = budget::writer(cx.request.word_count);
            let Written {
                streamed,
                usage,
                attempts,
                calls,
                restarted,
            } = self.stream_draft(cx, &prompt, max_tokens).await?;
            let (markdown, leaked) =
                contract::without_instructions(streamed.text.trim(), &prompt.system);
            let mut summary = format!("{} words streamed", text::markdown_word_count(&markdown));
            if streamed.truncated {
                summary.push_str(&format!(", cut off at {max_tokens} tokens"));
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
                    "WRITER_RESTARTED",
                    format!(
                        "the writer's stream broke midway ({error}); the draft was written again, its text (a new iteration) replacing the broken one"
                    ),
                ));
            }
            if leaked > 0 {
                output.warnings.push((
                    "PROMPT_TEXT_REMOVED",
                    format!("{leaked} line(s) repeating the writer's instructions were removed"),
                ));
            }
            Ok(output)
        })
    }
}

/// `seo_specialist`: one call; limits are in the schema and checked by code.
pub struct LlmSeo {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct SeoAnswer {
    title: String,
    meta_description: String,
    keywords: Vec<String>,
}

const SEO_TITLE_CHARS: usize = 60;
const META_DESCRIPTION_CHARS: usize = 155;

/// Cuts `text` to at most `max` characters at a word boundary, without an ellipsis (a title
/// or description that ends in "…" reads as broken).
fn cut_at_word(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() + word.chars().count() + usize::from(!out.is_empty()) > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_empty() {
        out = text.chars().take(max).collect();
    }
    let trimmed = out.trim_end_matches([',', ';', ':', '-', '–']);
    if trimmed.is_empty() {
        out
    } else {
        trimmed.to_string()
    }
}

/// Title 1-60 characters, description 1-155, 5-7 keywords. Repairs: cut at a word boundary,
/// extra keywords dropped, missing parts from the offline SEO of the same article.
fn check_seo(answer: SeoAnswer, fallback: &api::SeoMetadata) -> Checked<api::SeoMetadata> {
    let title = answer.title.trim().to_string();
    let meta = answer.meta_description.trim().to_string();
    let mut keywords: Vec<String> = answer
        .keywords
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let mut problems = Vec::new();
    let (title_len, meta_len) = (title.chars().count(), meta.chars().count());
    if title_len == 0 || title_len > SEO_TITLE_CHARS {
        problems.push(format!(
            "a title of {title_len} characters (1-{SEO_TITLE_CHARS})"
        ));
    }
    if meta_len == 0 || meta_len > META_DESCRIPTION_CHARS {
        problems.push(format!(
            "a meta description of {meta_len} characters (1-{META_DESCRIPTION_CHARS})"
        ));
    }
    if !(5..=7).contains(&keywords.len()) {
        problems.push(format!("{} keywords (5-7)", keywords.len()));
    }
    if problems.is_empty() {
        return Checked::Fits(api::SeoMetadata {
            title,
            meta_description: meta,
            keywords,
        });
    }
    keywords.truncate(7);
    for extra in &fallback.keywords {
        if keywords.len() >= 5 {
            break;
        }
        if !keywords.iter().any(|k| k.eq_ignore_ascii_case(extra)) {
            keywords.push(extra.clone());
        }
    }
    let or_fallback = |text: String, fallback: &str| {
        if text.is_empty() {
            fallback.to_string()
        } else {
            text
        }
    };
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: api::SeoMetadata {
            title: cut_at_word(&or_fallback(title, &fallback.title), SEO_TITLE_CHARS),
            meta_description: cut_at_word(
                &or_fallback(meta, &fallback.meta_description),
                META_DESCRIPTION_CHARS,
            ),
            keywords,
        },
    }
}

impl Agent<Draft, api::SeoMetadata> for LlmSeo {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        draft: &'a Draft,
    ) -> AgentFuture<'a, api::SeoMetadata> {
        Box::pin(async move {
            let schema = object(json!({
                "title": self.llm.text(SEO_TITLE_CHARS, "the SEO title"),
                "meta_description": self.llm.text(META_DESCRIPTION_CHARS, "the meta description"),
                "keywords": strings(5, 7),
            }));
            let fallback = offline::seo(&cx.request, &draft.markdown);
            let answer = self
                .llm
                .ask(
                    cx,
                    "seo_specialist",
                    &[("article", draft.markdown.clone())],
                    schema,
                    budget::SEO,
                    |v| match parse::<SeoAnswer>(v) {
                        Ok(answer) => check_seo(answer, &fallback),
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
                .await?;
            let seo = &answer.completion.value;
            let summary = format!(
                "title of {} chars, {} keywords",
                seo.title.chars().count(),
                seo.keywords.len()
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

/// Verdicts for claims 1..=`count`; verdicts for claims that do not exist are dropped (the
/// claims without a verdict keep the code check's).
fn check_verdicts(answer: VerdictsAnswer, count: usize) -> Checked<VerdictsAnswer> {
    match answer
        .verdicts
        .iter()
        .find(|v| v.claim == 0 || v.claim > count)
        .map(|bad| bad.claim)
    {
        None => Checked::Fits(answer),
        Some(bad) => Checked::Repairable {
            problem: format!("a verdict for claim {bad}, but the claims are numbered 1-{count}"),
            repaired: VerdictsAnswer {
                verdicts: answer
                    .verdicts
                    .into_iter()
                    .filter(|v| (1..=count).contains(&v.claim))
                    .collect(),
            },
        },
    }
}

/// The numbered claims of the fact checker's prompt, each with excerpts of its candidate
/// sources.
fn claims_listing(candidates: &[fact_check::ClaimCandidate], sources: &[SourceDoc]) -> String {
    let excerpt = |s: &&SourceDoc| {
        let text: String = s.text.chars().take(SOURCE_EXCERPT_CHARS).collect();
        format!("  [{}] {}", s.source.id, text.replace('\n', " "))
    };
    candidates
        .iter()
        .enumerate()
        .map(|(i, claim)| {
            let excerpts = fact_check::candidate_sources(claim, sources)
                .iter()
                .map(excerpt)
                .collect::<Vec<_>>()
                .join("\n");
            let excerpts = if excerpts.is_empty() {
                "  (no source text)".into()
            } else {
                excerpts
            };
            format!("{}. {}\n{}", i + 1, claim.text, excerpts)
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The fact checker's answer: at most one verdict per claim of `count`.
fn verdicts_schema(count: usize) -> Value {
    object(
        json!({"verdicts": {"type": "array", "maxItems": count, "items": object(json!({
            "claim": {"type": "integer", "minimum": 1, "maximum": count},
            "verdict": {"type": "string", "enum": ["supported", "unsupported", "unverifiable"]},
            "evidence": {"type": "string"},
        }))}}),
    )
}

/// The model's verdict on one claim, taken only as far as the sources bear it out:
/// "supported" needs its evidence in a candidate source and no invalid citation, and
/// "unverifiable" needs the candidates to have no text.
fn apply_verdict(
    claim: &mut api::Claim,
    candidate: &fact_check::ClaimCandidate,
    verdict: &VerdictAnswer,
    all: &[SourceDoc],
) {
    let sources = fact_check::candidate_sources(candidate, all);
    let invalid_citation = candidate
        .cited_urls
        .iter()
        .any(|u| !all.iter().any(|s| &s.source.url == u));
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
            let count = candidates.len();
            let max_tokens = u32::try_from(count)
                .unwrap_or(u32::MAX)
                .saturating_mul(budget::PER_VERDICT)
                .saturating_add(budget::VERDICT_BASE)
                .min(budget::VERDICTS_CAP);
            let answer = self
                .llm
                .ask(
                    cx,
                    "fact_checker",
                    &[("claims", claims_listing(&candidates, &input.sources))],
                    verdicts_schema(count),
                    max_tokens,
                    |v| match parse::<VerdictsAnswer>(v) {
                        Ok(answer) => check_verdicts(answer, count),
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
                .await?;
            for verdict in &answer.completion.value.verdicts {
                if let Some(claim) = report.claims.get_mut(verdict.claim - 1) {
                    let candidate = &candidates[verdict.claim - 1];
                    apply_verdict(claim, candidate, verdict, &input.sources);
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
            Ok(self.llm.output(answer.with(report), summary))
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

const THREAD_POST_CHARS: usize = 280;

/// 3 LinkedIn posts, 10 thread posts of at most 280 characters, the rest non-empty. Repairs:
/// extra posts dropped, long posts cut, missing ones from the offline social content.
fn check_social(a: SocialAnswer, fallback: &api::SocialContent) -> Checked<api::SocialContent> {
    let problems = social_problems(&a);
    if problems.is_empty() {
        return Checked::Fits(api::SocialContent {
            linkedin_posts: a.linkedin_posts,
            thread: a.thread,
            email_snippet: a.email_snippet,
            instagram_post: a.instagram_post,
            facebook_post: a.facebook_post,
        });
    }
    let pointer = format!("Read the full article: {}", fallback.email_snippet.trim());
    let or = |text: String, fallback: &str| {
        if text.trim().is_empty() {
            fallback.to_string()
        } else {
            text
        }
    };
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: api::SocialContent {
            linkedin_posts: fill(a.linkedin_posts, &fallback.linkedin_posts, 3, &pointer),
            thread: numbered(fill(a.thread, &fallback.thread, 10, &pointer)),
            email_snippet: or(a.email_snippet, &fallback.email_snippet),
            instagram_post: or(a.instagram_post, &fallback.instagram_post),
            facebook_post: or(a.facebook_post, &fallback.facebook_post),
        },
    }
}

/// What the social answer gets wrong, for the re-ask.
fn social_problems(a: &SocialAnswer) -> Vec<String> {
    let mut problems = Vec::new();
    if a.linkedin_posts.len() != 3 {
        problems.push(format!("{} LinkedIn posts (3)", a.linkedin_posts.len()));
    }
    if a.thread.len() != 10 {
        problems.push(format!("{} thread posts (10)", a.thread.len()));
    }
    if let Some(long) = a
        .thread
        .iter()
        .find(|p| p.chars().count() > THREAD_POST_CHARS)
    {
        problems.push(format!(
            "a thread post of {} characters (at most {THREAD_POST_CHARS})",
            long.chars().count()
        ));
    }
    let empty = [&a.email_snippet, &a.instagram_post, &a.facebook_post]
        .into_iter()
        .chain(&a.linkedin_posts)
        .chain(&a.thread)
        .any(|t| t.trim().is_empty());
    if empty {
        problems.push("an empty post or snippet".into());
    }
    problems
}

/// Exactly `n` non-empty items: the model's, then the offline version's, then `pointer` (a
/// pointer to the article; the offline version may itself have fewer).
fn fill(mut items: Vec<String>, from: &[String], n: usize, pointer: &str) -> Vec<String> {
    items.retain(|p| !p.trim().is_empty());
    items.truncate(n);
    for extra in from.iter().filter(|p| !p.trim().is_empty()) {
        if items.len() >= n {
            break;
        }
        if !items.contains(extra) {
            items.push(extra.clone());
        }
    }
    items.resize(n.max(items.len()), pointer.to_string());
    items
}

/// Thread posts numbered anew, "1/10 ...", whatever numbering they came with.
fn numbered(posts: Vec<String>) -> Vec<String> {
    let total = posts.len();
    posts
        .iter()
        .enumerate()
        .map(|(i, post)| {
            let text = post
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '/')
                .trim_start();
            cut_at_word(&format!("{}/{total} {text}", i + 1), THREAD_POST_CHARS)
        })
        .collect()
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
                "linkedin_posts": strings(3, 3),
                "thread": {"type": "array", "minItems": 10, "maxItems": 10, "items": self.llm.text(THREAD_POST_CHARS, "one post of the thread")},
                "email_snippet": {"type": "string"},
                "instagram_post": {"type": "string"},
                "facebook_post": {"type": "string"},
            }));
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let fallback = offline::social(&cx.request, article);
            let answer = self
                .llm
                .ask(
                    cx,
                    "social_promoter",
                    &extra,
                    schema,
                    budget::SOCIAL,
                    |v| match parse::<SocialAnswer>(v) {
                        Ok(answer) => check_social(answer, &fallback),
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
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

const KEY_VALUE_CHARS: usize = 200;
const OVERVIEW_CHARS: usize = 600;

/// Key value (1-200 characters) and overview (1-600), 1-4 takeaways. Repairs: long parts cut
/// at a word, takeaways cut to four, missing parts from the offline summary.
fn check_summary(a: SummaryAnswer, fallback: &api::Summary) -> Checked<api::Summary> {
    let mut takeaways: Vec<String> = a
        .takeaways
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .collect();
    let (key_value, overview) = (
        a.key_value.trim().to_string(),
        a.overview.trim().to_string(),
    );
    let mut problems = Vec::new();
    for (what, text, max) in [
        ("key value", &key_value, KEY_VALUE_CHARS),
        ("overview", &overview, OVERVIEW_CHARS),
    ] {
        let n = text.chars().count();
        if n == 0 || n > max {
            problems.push(format!("a {what} of {n} characters (1-{max})"));
        }
    }
    if !(1..=4).contains(&takeaways.len()) {
        problems.push(format!("{} takeaways (1-4)", takeaways.len()));
    }
    if problems.is_empty() {
        return Checked::Fits(api::Summary {
            key_value,
            overview,
            takeaways,
        });
    }
    takeaways.truncate(4);
    if takeaways.is_empty() {
        takeaways = fallback.takeaways.iter().take(4).cloned().collect();
    }
    if takeaways.is_empty() {
        takeaways.push(fallback.key_value.clone());
    }
    let or = |text: String, fallback: &str, max: usize| {
        cut_at_word(if text.is_empty() { fallback } else { &text }, max)
    };
    Checked::Repairable {
        problem: problems.join("; "),
        repaired: api::Summary {
            key_value: or(key_value, &fallback.key_value, KEY_VALUE_CHARS),
            overview: or(overview, &fallback.overview, OVERVIEW_CHARS),
            takeaways,
        },
    }
}

impl Agent<FinalArticle, api::Summary> for LlmSummary {
    llm_agent!(llm);
    fn run<'a>(
        &'a self,
        cx: &'a AgentContext,
        article: &'a FinalArticle,
    ) -> AgentFuture<'a, api::Summary> {
        Box::pin(async move {
            let schema = object(json!({
                "key_value": self.llm.text(KEY_VALUE_CHARS, "the article's key value in one sentence"),
                "overview": self.llm.text(OVERVIEW_CHARS, "a 2-3 sentence overview"),
                "takeaways": strings(1, 4),
            }));
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let fallback = offline::summary(article);
            let answer = self
                .llm
                .ask(
                    cx,
                    "summary_writer",
                    &extra,
                    schema,
                    budget::SUMMARY,
                    |v| match parse::<SummaryAnswer>(v) {
                        Ok(answer) => check_summary(answer, &fallback),
                        Err(problem) => Checked::Unfit(problem),
                    },
                )
                .await?;
            let summary = format!("{} takeaways", answer.completion.value.takeaways.len());
            Ok(self.llm.output(answer, summary))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired<T>(checked: Checked<T>) -> T {
        match checked {
            Checked::Repairable { repaired, .. } => repaired,
            Checked::Fits(_) => unreachable!("expected a repair, the answer fits"),
            Checked::Unfit(problem) => unreachable!("expected a repair: {problem}"),
        }
    }

    #[test]
    fn too_few_queries_are_padded_from_the_topic_and_too_many_cut() {
        let queries = repaired(check_queries("ESG", json!({"queries": []})));
        assert_eq!(queries.len(), 3);
        assert!(queries.iter().all(|q| q.contains("ESG")));
        let many: Vec<String> = (0..9).map(|i| format!("q{i}")).collect();
        assert_eq!(
            repaired(check_queries("ESG", json!({"queries": many}))).len(),
            4
        );
        assert!(matches!(
            check_queries("ESG", json!({"queries": ["a", "b", "c"]})),
            Checked::Fits(_)
        ));
    }

    #[test]
    fn repairs_stay_within_every_limit() {
        let seo = repaired(check_seo(
            SeoAnswer {
                title: "word ".repeat(60),
                meta_description: "x".repeat(300),
                keywords: (0..12).map(|i| format!("k{i}")).collect(),
            },
            &api::SeoMetadata {
                keywords: vec!["a".into(); 5],
                ..Default::default()
            },
        ));
        assert!(!seo.title.is_empty() && seo.title.chars().count() <= SEO_TITLE_CHARS);
        assert!(!seo.title.ends_with(' '));
        assert!(seo.meta_description.chars().count() <= META_DESCRIPTION_CHARS);
        assert_eq!(seo.keywords.len(), 7);

        // The offline version has fewer posts than asked: padding still reaches the counts.
        let social = repaired(check_social(
            SocialAnswer {
                linkedin_posts: vec!["one".into()],
                thread: vec!["3/7 a point".into(), "y".repeat(400)],
                email_snippet: String::new(),
                instagram_post: "i".into(),
                facebook_post: "f".into(),
            },
            &api::SocialContent {
                linkedin_posts: vec!["two".into()],
                thread: vec!["1/2 first".into()],
                email_snippet: "Our briefing".into(),
                ..Default::default()
            },
        ));
        assert_eq!(social.linkedin_posts.len(), 3);
        assert_eq!(social.thread.len(), 10);
        assert!(
            social.thread[0].starts_with("1/10 a point"),
            "{}",
            social.thread[0]
        );
        assert!(
            social
                .thread
                .iter()
                .all(|p| p.chars().count() <= THREAD_POST_CHARS)
        );
        assert_eq!(social.email_snippet, "Our briefing");

        let summary = repaired(check_summary(
            SummaryAnswer {
                key_value: "k".repeat(500),
                overview: String::new(),
                takeaways: Vec::new(),
            },
            &api::Summary {
                key_value: "Value".into(),
                overview: "Overview.".into(),
                takeaways: Vec::new(),
            },
        ));
        assert!(summary.key_value.chars().count() <= KEY_VALUE_CHARS);
        assert_eq!(summary.overview, "Overview.");
        assert_eq!(summary.takeaways.len(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Whatever a model answers, the checks answer too: fits, a repair, or a problem.
        #[test]
        fn any_answer_is_judged(content in "(\\{|\\}|\\[|\\]|\"queries\"|:|,|\"|\\PC{0,12}){0,40}", truncated: bool) {
            let answer = Answer { content, truncated };
            let _ = judge(&answer, 300, &|v| check_queries("ESG", v));
            let _ = json_in(&answer.content);
        }
    }

    #[test]
    fn answers_are_found_in_fences_and_prose() {
        assert!(json_in("```json\n{\"a\": 1}\n```").is_some());
        assert!(json_in("Sure! Here it is: {\"a\": [1, 2]} Hope it helps.").is_some());
        assert!(json_in("no json here").is_none());
        assert!(json_in("[1, 2]").is_none());
        assert_eq!(cut_at_word("....", 2), "..");
    }
}
