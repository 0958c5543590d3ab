//! `research_synthesizer` in the research phase: the article's sections planned from the
//! topic alone, before research returns (fixed headings offline, the model's with an LLM).
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;

use super::unusable_heading;
use crate::{
    agents::{
        Agent, AgentContext, AgentFuture, AgentOutput, OutlinePlan,
        llm::{Checked, LlmAgent, llm_agent, object, parse, strings},
        offline::extractive,
    },
    domain::JobRequest,
    text,
};

/// The most tokens the model's plan may use.
const ANSWER_TOKENS: u32 = 300;

/// Section headings planned from the topic alone.
pub(super) fn planned_sections(topic: &str) -> Vec<String> {
    let topic = text::title_case(topic);
    vec![
        format!("Why {topic} Matters Now"),
        format!("How {topic} Works in Practice"),
        "Risks and Trade-offs".to_string(),
        "Putting It into Practice".to_string(),
    ]
}

extractive!(JobRequest => OutlinePlan, |_cx, request| {
    Ok(AgentOutput::local(
        OutlinePlan {
            sections: planned_sections(&request.topic),
        },
        "4 planned sections",
    ))
});

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
        .chain(&planned_sections(topic))
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
                    ANSWER_TOKENS,
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
