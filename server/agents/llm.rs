//! What the LLM agents share: each asks an OpenAI-compatible model with its prompt file and,
//! except the writer, a strict JSON schema; an answer that does not fit is asked again once,
//! naming what was wrong, and else repaired by code. Each agent's answer budget (its
//! `max_tokens`) leaves room for what is asked, not for a model that rambles until the
//! server's own limit.
use crate::domain::WarningCode;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{AgentContext, AgentError, AgentName, AgentOutput, SourceDoc, prompts::Prompts};
use crate::{
    domain::JobRequest,
    resilience::Calls,
    upstream::{
        UpstreamError,
        llm::{Answer, Ask, Completion, LlmClient},
    },
};
use dakota::api;

/// Characters of each source's text shown to the synthesizer, the writer and the fact checker.
pub(super) const SOURCE_EXCERPT_CHARS: usize = 1500;

/// What every LLM agent holds: the client, the prompts, and its model.
#[derive(Clone)]
pub struct LlmAgent {
    pub client: Arc<LlmClient>,
    pub prompts: Arc<Prompts>,
    pub model: String,
    pub name: AgentName,
}

/// An upstream failure as the agent's: a prompt too long for the model is a problem of the
/// call's content (the part degrades as for an unusable answer), anything else the
/// upstream's.
pub(super) fn unavailable(error: UpstreamError) -> AgentError {
    match error {
        UpstreamError::ContextExceeded { .. } => AgentError::InvalidAnswer {
            agent: "llm",
            message: error.to_string(),
        },
        error => AgentError::Unavailable {
            upstream: error.upstream(),
            message: error.to_string(),
        },
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

impl<T> Checked<T> {
    /// The same verdict on `f` of the value (of the repair, when repairable).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Checked<U> {
        match self {
            Checked::Fits(value) => Checked::Fits(f(value)),
            Checked::Repairable { problem, repaired } => Checked::Repairable {
                problem,
                repaired: f(repaired),
            },
            Checked::Unfit(problem) => Checked::Unfit(problem),
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
pub(super) fn request_vars(request: &JobRequest) -> Vec<(&'static str, String)> {
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
pub(super) fn object(properties: Value) -> Value {
    let required: Vec<String> = properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// An array of strings with `min..=max` items.
pub(super) fn strings(min: usize, max: usize) -> Value {
    json!({"type": "array", "items": {"type": "string"}, "minItems": min, "maxItems": max})
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("the answer does not fit the schema: {e}"))
}

/// A check of answers that must first deserialize into `A` (else they are unfit).
pub(super) fn parsed<A: for<'de> Deserialize<'de>, T>(
    check: impl Fn(A) -> Checked<T>,
) -> impl Fn(Value) -> Checked<T> {
    move |value| match parse::<A>(value) {
        Ok(answer) => check(answer),
        Err(problem) => Checked::Unfit(problem),
    }
}

impl LlmAgent {
    /// A string of at most `max` characters: the limit in the description always (models read
    /// it), and as `maxLength` where the provider enforces it.
    pub(super) fn text(&self, max: usize, what: &str) -> Value {
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
                WarningCode::AnswerRepaired,
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
    pub(super) async fn ask<T>(
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
        let prompt = self.render_fitted(prompt, &vars, max_tokens).await;
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
            cx.upstream
                .record(crate::domain::Upstream::Llm, result.is_ok());
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

/// The `provider` and `model` of an [`super::Agent`] whose LLM agent is field `$agent`.
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

pub(super) use llm_agent;

/// Sources as the prompts list them: id, tier, date, title, excerpt.
pub(super) fn describe_sources(sources: &[SourceDoc]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{
        kb_researcher::check_queries,
        seo_specialist::{META_DESCRIPTION_CHARS, SEO_TITLE_CHARS, SeoAnswer, check_seo},
        social_promoter::{SocialAnswer, THREAD_POST_CHARS, check_social},
        summary_writer::{KEY_VALUE_CHARS, SummaryAnswer, check_summary},
    };
    use crate::text::cut_at_word;

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
