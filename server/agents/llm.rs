//! What the LLM agents share: each asks an OpenAI-compatible model with its prompt file and,
//! except the writer, a strict JSON schema. An answer with a safe deterministic repair is
//! repaired at once (`ANSWER_REPAIRED`); one that does not fit at all is asked again once,
//! naming what was wrong. An answer cut off at `max_tokens` is closed after its last
//! complete value when that is safe ([`super::truncated`]), else asked again.
//!
//! Every generated token is seconds on a local model (13-25 tokens/s for a 135M model on
//! two cores), so each agent's `max_tokens` is what the longest answer its schema allows
//! needs (every string at its `maxLength`, every array at its `maxItems`, at 3 characters a
//! token; each agent's test `the_token_budget_covers_the_longest_answer` checks it), and no
//! more:
//!
//! | agent | `max_tokens` | what it is for |
//! |---|---|---|
//! | `kb_researcher`, `web_researcher` | 160 (was 300) | 3-4 queries of at most 80 characters: ~120 tokens |
//! | `research_synthesizer` (plan) | 200 (was 300) | 3-4 headings of at most 80 characters: ~120 |
//! | `research_synthesizer` | 450 (was 1,200) | 3-4 sections (heading ≤ 80 characters, 1-4 ids from an enum) and 3-4 themes ≤ 40 characters: ~250 |
//! | `seo_specialist` | 200 (was 400) | title ≤ 60, meta description ≤ 155, 5-7 keywords ≤ 40 characters: ~190 |
//! | `fact_checker` | 60 + 90 a claim, at most 2,500 (was 200 + 120, at most 4,000) | a verdict: number, verdict, evidence ≤ 200 characters: ~85 (a longer list is cut and closed after its last whole verdict) |
//! | `summary_writer` | 500 (was 600) | key value ≤ 200, overview ≤ 600, 1-4 takeaways ≤ 150 characters: ~490 |
//! | `social_promoter` | 1,800 (was 2,500) | 3 LinkedIn posts ≤ 500, 10 thread posts ≤ 280, email ≤ 250, Instagram ≤ 400, Facebook ≤ 300 characters: ~1,800 |
//! | `content_writer` | 1.5 × words + 500, 800-16,000 (was 2 × words + 1,000, 1,000-16,000) | ~1.3 tokens a word up to the contract's +15%, headings, bullets and `[S<n>]` markers |
//!
//! The tokens every round really generated (a re-ask's too, and a writer's empty first
//! answer) are added up in the agent's usage, and so in the run metrics.
use crate::domain::WarningCode;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AgentContext, AgentError, AgentName, AgentOutput, SourceDoc, prompts::Prompts, truncated,
};
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
    /// It bends a limit; `repaired` is the safe deterministic fix, used at once (with an
    /// `ANSWER_REPAIRED` warning), without a re-ask.
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

/// Judges one answer: not JSON, or whatever `check` says of it. An answer cut off at
/// `max_tokens` is unfit, unless it can be closed after its last complete value within
/// `schema` and that fits or has a repair: then it is repairable (its complete part is the
/// model's; nothing is guessed).
fn judge<T>(
    answer: &Answer,
    max_tokens: u32,
    schema: &Value,
    check: &impl Fn(Value) -> Checked<T>,
) -> Checked<T> {
    if answer.truncated {
        let cut = format!("the answer was cut off at the limit of {max_tokens} tokens");
        let closed = truncated::close(&answer.content)
            .filter(|value| truncated::within_schema(value, schema))
            .map(check);
        return match closed {
            Some(Checked::Fits(repaired) | Checked::Repairable { repaired, .. }) => {
                Checked::Repairable {
                    problem: format!("{cut}; kept up to its last complete item"),
                    repaired,
                }
            }
            _ => Checked::Unfit(format!("{cut}; answer briefly, within the limits stated")),
        };
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

    /// An array of `min..=max` strings of at most `chars` characters each ([`Self::text`]).
    pub(super) fn texts(&self, min: usize, max: usize, chars: usize, what: &str) -> Value {
        json!({"type": "array", "items": self.text(chars, what), "minItems": min, "maxItems": max})
    }

    pub fn output<T>(&self, asked: Asked<T>, summary: String) -> AgentOutput<T> {
        let (completion, calls) = (asked.completion, asked.calls);
        let mut warnings = Vec::new();
        if let Some(problem) = asked.repaired {
            warnings.push((
                WarningCode::AnswerRepaired,
                format!(
                    "{}: the model's answer bent a limit ({problem}); repaired by code",
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
    /// with a safe deterministic repair is repaired at once (a re-ask would cost a whole
    /// answer more, seconds a token on a local model); one that does not fit at all gets one
    /// corrective re-ask naming what was wrong, and if that does not fit either (nor has a
    /// repair) the agent fails with [`AgentError::InvalidAnswer`]. Only transport failures
    /// are [`AgentError::Unavailable`].
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
            let (value, repaired) = match judge(&answer.value, max_tokens, &schema, &check) {
                Checked::Fits(value) => (value, None),
                // A safe repair costs nothing; a re-ask costs a whole answer more.
                Checked::Repairable {
                    problem,
                    repaired: value,
                } => (value, Some(problem)),
                Checked::Unfit(found) => {
                    tracing::info!(agent = self.name.as_str(), round, problem = %found, "answer does not fit");
                    if round == 0 {
                        turns.extend(corrective_turns(&answer.value.content, &found));
                    }
                    problem = found;
                    continue;
                }
            };
            return Ok(Asked {
                completion: total.with(value),
                repaired,
                calls,
            });
        }
        Err(AgentError::InvalidAnswer {
            agent: self.name.as_str(),
            message: format!("the answer did not fit after a corrective re-ask: {problem}"),
        })
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

/// The tokens of the longest answer a schema allows: `(items, characters)` per kind of
/// string (each quoted, with a comma), and `other` characters of keys, numbers and
/// punctuation, at 3 characters a token (JSON tokenizes denser than prose's 4).
#[cfg(test)]
pub(super) fn longest_answer_tokens(strings: &[(usize, usize)], other: usize) -> u32 {
    let chars: usize = strings.iter().map(|(n, c)| n * (c + 3)).sum::<usize>() + other;
    u32::try_from(chars.div_ceil(3)).unwrap_or(u32::MAX)
}

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
            let _ = judge(&answer, 300, &json!({}), &|v| check_queries("ESG", v));
            let _ = json_in(&answer.content);
        }
    }

    #[test]
    fn an_answer_cut_off_inside_its_queries_is_closed_not_reasked() {
        let schema = json!({"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}}});
        let cut = |content: &str| Answer {
            content: content.into(),
            truncated: true,
        };
        let check = |v| check_queries("ESG", v);
        // Three complete queries and one cut in half: the three are the model's answer.
        match judge(
            &cut(r#"{"queries": ["esg a", "esg b", "esg c", "esg and so"#),
            160,
            &schema,
            &check,
        ) {
            Checked::Repairable { problem, repaired } => {
                assert_eq!(repaired, ["esg a", "esg b", "esg c"]);
                assert!(
                    problem.contains("cut off at the limit of 160 tokens"),
                    "{problem}"
                );
            }
            _ => unreachable!("a closable answer is repaired"),
        }
        // One complete query: padded from the topic, as any short answer is.
        assert_eq!(
            repaired(judge(
                &cut(r#"{"queries": ["esg a", "esg b"#),
                160,
                &schema,
                &check
            ))
            .len(),
            3
        );
        // Off the schema before it was cut (what a rambling model does), or nothing
        // complete: asked again.
        for content in [
            r#"{"queries": ["a", "b", "c"], "more": "x", "more": "and mo"#,
            r#"{"quer"#,
        ] {
            assert!(matches!(
                judge(&cut(content), 160, &schema, &check),
                Checked::Unfit(_)
            ));
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
