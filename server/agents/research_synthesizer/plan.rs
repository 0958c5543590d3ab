//! `research_synthesizer` in the research phase: the article's sections planned from the
//! topic alone, before research returns (fixed headings offline, the model's with an LLM).
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;

use super::{HEADING_CHARS, MAX_SECTIONS, MIN_SECTIONS, unusable_heading};
use crate::{
    agents::{
        Agent, AgentContext, AgentFuture, AgentOutput, OutlinePlan,
        llm::{Checked, LlmAgent, llm_agent, object, parsed},
        offline::extractive,
    },
    domain::JobRequest,
    text,
};

/// The most tokens the model's plan may use (see the table in [`crate::agents::llm`]).
pub(crate) const ANSWER_TOKENS: u32 = 200;

/// Angles of any topic, after its own themes: what a reader asks of an investment subject.
const ANGLES: [&str; 4] = [
    "Strategy and Allocation",
    "Risks and Trade-offs",
    "What the Figures Show",
    "Outlook and Next Steps",
];

/// Section headings planned from the topic alone: its themes (its clauses: "The top family
/// offices in California and how they invest" -> "Top Family Offices in California", "How
/// They Invest"), then angles on it, four in all.
pub(super) fn planned_sections(topic: &str) -> Vec<String> {
    let mut sections: Vec<String> = Vec::new();
    let clauses = topic
        .split([',', ';', ':'])
        .flat_map(|part| part.split(" and "))
        .map(|clause| {
            let clause = clause.trim();
            let clause = ["The ", "the ", "A ", "a ", "An ", "an "]
                .iter()
                .find_map(|article| clause.strip_prefix(article))
                .unwrap_or(clause);
            text::title_case(clause)
        })
        .filter(|c| text::count_words(c) >= 2 && !unusable_heading(c));
    for heading in clauses.take(2).chain(ANGLES.iter().map(|a| a.to_string())) {
        if sections.len() < MAX_SECTIONS
            && !sections.iter().any(|s| s.eq_ignore_ascii_case(&heading))
        {
            sections.push(heading);
        }
    }
    sections
}

extractive!(JobRequest => OutlinePlan, |_cx, request| {
    let plan = OutlinePlan {
        sections: planned_sections(&request.topic),
    };
    let summary = summary_line(&plan);
    Ok(AgentOutput::local(plan, summary))
});

/// The plan in one line, for `agent_completed`.
fn summary_line(plan: &OutlinePlan) -> String {
    format!("{} planned sections", plan.sections.len())
}

/// `research_synthesizer` in the research phase: the planned outline.
pub struct LlmOutlinePlanner {
    pub llm: LlmAgent,
}

#[derive(Deserialize)]
struct Sections {
    sections: Vec<String>,
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
    if (MIN_SECTIONS..=MAX_SECTIONS).contains(&n) && bad.is_none() && distinct {
        return Checked::Fits(headings.iter().map(|h| h.trim().to_string()).collect());
    }
    let problem = match bad {
        Some(bad) => {
            format!("the heading `{bad}` is empty, one of the fixed sections, or forbidden")
        }
        None if !distinct => "the same heading appears twice".into(),
        None => format!("{n} sections, expected {MIN_SECTIONS}-{MAX_SECTIONS}"),
    };
    let mut fixed: Vec<String> = Vec::new();
    for heading in headings
        .iter()
        .chain(&planned_sections(topic))
        .map(|h| h.trim().to_string())
    {
        if fixed.len() < MIN_SECTIONS
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
            let schema = object(
                json!({"sections": self.llm.texts(MIN_SECTIONS, MAX_SECTIONS, HEADING_CHARS, "a section heading")}),
            );
            let answer = self
                .llm
                .ask(
                    cx,
                    "research_synthesizer.plan",
                    &[],
                    schema,
                    ANSWER_TOKENS,
                    parsed(|answer: Sections| {
                        check_headings(&request.topic, answer.sections)
                            .map(|sections| OutlinePlan { sections })
                    }),
                )
                .await?;
            let summary = summary_line(&answer.completion.value);
            Ok(self.llm.output(answer, summary))
        })
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest =
        crate::agents::llm::longest_answer_tokens(&[(super::MAX_SECTIONS, HEADING_CHARS)], 16);
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
