//! `summary_writer`: key value, overview and takeaways. Offline from the article's lead and
//! lists; with an LLM by the model, repaired from the offline version where it falls short.
use serde::Deserialize;
use serde_json::json;

use super::{
    Agent, AgentContext, AgentFuture, AgentOutput, FinalArticle,
    extract::{lead_sentences, section_bullets},
    llm::{Checked, LlmAgent, llm_agent, object, parsed},
    offline::extractive,
};
use crate::{
    domain::contract::{KEY_INSIGHTS, KEY_TAKEAWAYS},
    text::cut_at_word,
};
use dakota::api;

/// The limits kept by both versions and asked of the model (SPEC §4: up to 4 takeaways).
pub(super) const KEY_VALUE_CHARS: usize = 200;
const OVERVIEW_CHARS: usize = 600;
const MAX_TAKEAWAYS: usize = 4;

/// The most tokens the model's answer may use (see the table in [`super::llm`]).
pub(super) const ANSWER_TOKENS: u32 = 500;
/// The longest takeaway ("short").
const TAKEAWAY_CHARS: usize = 150;

extractive!(FinalArticle => api::Summary, |_cx, article| {
    let summary = summary(article);
    let line = format!("{} takeaways", summary.takeaways.len());
    Ok(AgentOutput::local(summary, line))
});

fn summary(article: &FinalArticle) -> api::Summary {
    let insights = section_bullets(&article.markdown, KEY_INSIGHTS);
    let lead = lead_sentences(&article.markdown);
    let mut overview: Vec<String> = lead.into_iter().take(2).collect();
    if let Some(insight) = insights.first() {
        overview.push(insight.clone());
    }
    overview.truncate(3);
    api::Summary {
        key_value: insights
            .first()
            .cloned()
            .unwrap_or_else(|| article.seo.meta_description.clone()),
        overview: overview.join(" "),
        takeaways: section_bullets(&article.markdown, KEY_TAKEAWAYS)
            .into_iter()
            .take(MAX_TAKEAWAYS)
            .collect(),
    }
}

/// `summary_writer`.
pub struct LlmSummary {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
pub(super) struct SummaryAnswer {
    pub(super) key_value: String,
    pub(super) overview: String,
    pub(super) takeaways: Vec<String>,
}

/// Key value (1-200 characters) and overview (1-600), 1-4 takeaways. Repairs: long parts cut
/// at a word, takeaways cut to four, missing parts from the offline summary.
pub(super) fn check_summary(a: SummaryAnswer, fallback: &api::Summary) -> Checked<api::Summary> {
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
    if !(1..=MAX_TAKEAWAYS).contains(&takeaways.len()) {
        problems.push(format!("{} takeaways (1-{MAX_TAKEAWAYS})", takeaways.len()));
    }
    if problems.is_empty() {
        return Checked::Fits(api::Summary {
            key_value,
            overview,
            takeaways,
        });
    }
    takeaways.truncate(MAX_TAKEAWAYS);
    if takeaways.is_empty() {
        takeaways = fallback
            .takeaways
            .iter()
            .take(MAX_TAKEAWAYS)
            .cloned()
            .collect();
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
                "takeaways": self.llm.texts(1, MAX_TAKEAWAYS, TAKEAWAY_CHARS, "a short takeaway"),
            }));
            let extra = [
                ("title", article.title.clone()),
                ("article", article.markdown.clone()),
            ];
            let fallback = summary(article);
            let answer = self
                .llm
                .ask(
                    cx,
                    "summary_writer",
                    &extra,
                    schema,
                    ANSWER_TOKENS,
                    parsed(|answer: SummaryAnswer| check_summary(answer, &fallback)),
                )
                .await?;
            let summary = format!("{} takeaways", answer.completion.value.takeaways.len());
            Ok(self.llm.output(answer, summary))
        })
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest = super::llm::longest_answer_tokens(
        &[
            (1, KEY_VALUE_CHARS),
            (1, OVERVIEW_CHARS),
            (MAX_TAKEAWAYS, TAKEAWAY_CHARS),
        ],
        40,
    );
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
