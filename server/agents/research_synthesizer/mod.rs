//! `research_synthesizer`: merges the research into at most ten ranked sources (code, for
//! both versions), then outlines the article and names its key themes: offline from the best
//! sources' own sections, with an LLM by the model. Its research-phase part, the outline
//! planned from the topic alone, is [`plan`].
use crate::domain::WarningCode;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;

use super::{
    Agent, AgentContext, AgentError, AgentFuture, AgentOutput, OutlineSection, SourceDoc,
    Synthesis, SynthesisInput,
    llm::{Checked, LlmAgent, describe_sources, llm_agent, object, parsed},
    offline::extractive,
};
use crate::{
    domain::{JobRequest, contract},
    text::{self, cut_at_word},
};
use dakota::api;

pub mod plan;

/// The warning of sources that do not all cover the topic.
const OFF_TOPIC: WarningCode = WarningCode::OffTopicSources;

/// Sources kept after synthesis (SPEC §4).
const MAX_SOURCES: usize = 10;

/// Sources below this share of the best one's relevance supply sentences, not sections.
const MIN_SECTION_RELEVANCE: f64 = 0.2;

/// The outline's main sections and key themes (SPEC §4), kept by both versions (and the
/// plan) and asked of the model.
const MIN_SECTIONS: usize = 3;
const MAX_SECTIONS: usize = 4;
const MIN_THEMES: usize = 3;
const MAX_THEMES: usize = 4;
/// Sources a section of the model's outline may name.
const MAX_SECTION_SOURCES: usize = 4;

/// The most tokens the model's outline may use (see the table in [`super::llm`]).
pub(super) const ANSWER_TOKENS: u32 = 450;
/// The longest key theme ("a short phrase").
const THEME_CHARS: usize = 40;

extractive!(SynthesisInput => Synthesis, |cx, input| synthesize(&cx.request, input));

/// Whether `word` names something (a place, a firm, an acronym) in these texts: it is written
/// with a capital nearly every time it occurs, as "Texas" is and "private" is not.
fn is_proper(word: &str, texts: &[&str]) -> bool {
    let (mut total, mut capital) = (0usize, 0usize);
    for text in texts {
        for token in text.split(|c: char| !c.is_alphanumeric()) {
            if token.eq_ignore_ascii_case(word) {
                total += 1;
                capital += usize::from(token.starts_with(char::is_uppercase));
            }
        }
    }
    total > 0 && capital * 5 >= total * 4
}

/// The names of a topic (places, firms, acronyms, years), as the sources write them: words the
/// topic writes with a capital (its first word aside) or the sources nearly always do, that
/// some source writes so. "California" is one; "top" and "private" are not.
fn topic_names(topic: &str, texts: &[&str]) -> BTreeSet<String> {
    let capitalised = |word: &str| {
        let mut chars = word.chars();
        chars.next().map_or(String::new(), |first| {
            first.to_uppercase().chain(chars).collect::<String>()
        })
    };
    let written: Vec<&str> = topic
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut names = BTreeSet::new();
    for (i, word) in written.iter().enumerate() {
        let lower = word.to_lowercase();
        // A year names a period as a place names a region: "June 2025" is not June 2024.
        if is_year(word) {
            if texts.iter().any(|t| names_word(t, word)) {
                names.insert(word.to_string());
            }
            continue;
        }
        if word.chars().count() < 2
            || text::is_stopword(&lower)
            || word.chars().all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let capital_in_topic = i > 0 && word.starts_with(char::is_uppercase);
        if !capital_in_topic && !is_proper(word, texts) {
            continue;
        }
        // As written: an acronym as the topic writes it, any other name capitalised.
        let form = if word.chars().filter(|c| c.is_uppercase()).count() > 1 {
            word.to_string()
        } else {
            capitalised(&lower)
        };
        if texts.iter().any(|t| names_word(t, &form)) {
            names.insert(form);
        }
    }
    names
}

/// `1987`, `2025`: four digits from 1900 to 2099.
fn is_year(word: &str) -> bool {
    word.len() == 4
        && (word.starts_with("19") || word.starts_with("20"))
        && word.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `text` writes `name` as a word, as written (case and all).
fn names_word(text: &str, name: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|token| token == name)
}

/// Knowledge-base sources on topic: a document about Sweden is not evidence for an article
/// about California. The topic's names (see [`topic_names`]) must all appear, as written, in
/// a source; one that does not name them is not used, even when the rest hold less than the
/// target (the article is then shorter, and the writer says so). Only when no document names
/// them all are the others used, and the warning says so. Web results are left as the search
/// engine ranked them.
fn on_topic(topic: &str, sources: Vec<SourceDoc>) -> (Vec<SourceDoc>, Option<String>) {
    let is_kb = |doc: &SourceDoc| doc.source.kind() == api::SourceKind::KnowledgeBase;
    let texts: Vec<&str> = sources
        .iter()
        .filter(|d| is_kb(d))
        .map(|d| d.text.as_str())
        .collect();
    let names = topic_names(topic, &texts);
    if names.is_empty() {
        return (sources, None);
    }
    let names_all = |doc: &SourceDoc| {
        !is_kb(doc) || {
            let text = format!("{} {} {}", doc.source.title, doc.section, doc.text);
            names.iter().all(|name| names_word(&text, name))
        }
    };
    let (on, off): (Vec<SourceDoc>, Vec<SourceDoc>) = sources.into_iter().partition(names_all);
    if off.is_empty() || on.iter().any(is_kb) {
        return (on, None);
    }
    let warning = format!(
        "no knowledge-base document names {}; the article draws on sources that do not",
        names.into_iter().collect::<Vec<_>>().join(" and ")
    );
    (on.into_iter().chain(off).collect(), Some(warning))
}

/// Merges research (dedupe by URL, sources on topic, rank by relevance, authority and
/// freshness, keep the best ten, ids S1..) and says when the sources are off topic.
fn merge_sources(
    request: &JobRequest,
    input: &SynthesisInput,
) -> Result<(Vec<SourceDoc>, Option<String>), AgentError> {
    let mut merged: Vec<SourceDoc> = Vec::new();
    for doc in input.kb.sources.iter().chain(&input.web.sources) {
        if !merged.iter().any(|m| m.source.url == doc.source.url) {
            merged.push(doc.clone());
        }
    }
    if merged.is_empty() {
        return Err(AgentError::NoSources(format!(
            "research found no sources for \"{}\": add documents to the knowledge base (--kb-dir) or configure web search",
            request.topic
        )));
    }
    let newest = merged
        .iter()
        .map(|d| d.source.published.clone())
        .max()
        .unwrap_or_default();
    let rank = |d: &SourceDoc| {
        let authority = 1.0 + 0.1 * f64::from(d.source.authority_tier);
        let fresh = if !newest.is_empty() && d.source.published.get(..4) == newest.get(..4) {
            1.05
        } else {
            1.0
        };
        d.source.relevance * authority * fresh
    };
    merged.sort_by(|a, b| {
        rank(b)
            .total_cmp(&rank(a))
            .then(a.source.url.cmp(&b.source.url))
    });
    // Sources on topic first, in rank order; the rest only if needed.
    let (mut merged, off_topic) = on_topic(&request.topic, merged);
    merged.truncate(MAX_SOURCES);
    for (i, doc) in merged.iter_mut().enumerate() {
        doc.source.id = format!("S{}", i + 1);
    }
    Ok((merged, off_topic))
}

/// The synthesis in one line, for `agent_completed`.
fn summary_line(synthesis: &Synthesis) -> String {
    format!(
        "{} sources, {} sections",
        synthesis.sources.len(),
        synthesis.outline.len()
    )
}

/// Merges the sources, then outlines the article from the best distinct passages.
fn synthesize(
    request: &JobRequest,
    input: &SynthesisInput,
) -> Result<AgentOutput<Synthesis>, AgentError> {
    let (merged, off_topic) = merge_sources(request, input)?;
    // Main sections: the themes planned from the topic (never a source's own title), the
    // best sources in rank order behind them, one each while they last, then every source.
    let planned = match input.plan.sections.as_slice() {
        [] => plan::planned_sections(&request.topic),
        sections => sections.to_vec(),
    };
    let ids: Vec<String> = merged.iter().map(|d| d.source.id.clone()).collect();
    let leading: Vec<&String> = merged
        .iter()
        .filter(|d| d.source.relevance >= MIN_SECTION_RELEVANCE)
        .map(|d| &d.source.id)
        .collect();
    let outline: Vec<OutlineSection> = planned
        .iter()
        .filter(|h| !is_fixed_heading(h))
        .take(MAX_SECTIONS)
        .enumerate()
        .map(|(i, heading)| {
            let own = leading.get(i).map(|id| id.to_string());
            let rest = ids.iter().filter(|id| Some(*id) != own.as_ref()).cloned();
            let source_ids: Vec<String> = own.clone().into_iter().chain(rest).collect();
            OutlineSection {
                heading: heading.clone(),
                source_ids,
            }
        })
        .collect();
    let key_themes = outline
        .iter()
        .map(|s| s.heading.clone())
        .take(MAX_THEMES)
        .collect();
    let synthesis = Synthesis {
        sources: merged,
        outline,
        key_themes,
    };
    let summary = summary_line(&synthesis);
    let mut output = AgentOutput::local(synthesis, summary);
    output.warnings.extend(off_topic.map(|w| (OFF_TOPIC, w)));
    Ok(output)
}

/// A heading that starts like a fixed or a forbidden section's: a source's own "Conclusion"
/// is no main section.
fn is_fixed_heading(heading: &str) -> bool {
    let lower = heading.to_lowercase();
    contract::FIXED_SECTIONS
        .iter()
        .chain(&contract::FORBIDDEN_HEADINGS)
        .any(|h| lower.starts_with(&h.to_lowercase()))
}

/// A heading the article may not use as a main section: empty, fixed, or forbidden.
fn unusable_heading(heading: &str) -> bool {
    heading.trim().is_empty()
        || contract::is_forbidden_heading(heading)
        || contract::FIXED_SECTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(heading.trim()))
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
pub(super) const HEADING_CHARS: usize = 80;

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
    if !(MIN_SECTIONS..=MAX_SECTIONS).contains(&n) {
        problems.push(format!(
            "{n} usable sections, expected {MIN_SECTIONS}-{MAX_SECTIONS}"
        ));
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
    if !(MIN_THEMES..=MAX_THEMES).contains(&themes.len()) {
        problems.push(format!(
            "{} key themes, expected {MIN_THEMES}-{MAX_THEMES}",
            themes.len()
        ));
    }
    if problems.is_empty() {
        return Checked::Fits((outline, themes));
    }
    repair_outline(&mut outline, ids, plan);
    themes.truncate(MAX_THEMES);
    for section in &outline {
        if themes.len() >= MIN_THEMES {
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
    while outline.len() > MAX_SECTIONS {
        if let Some(extra) = outline.pop()
            && let Some(last) = outline.last_mut()
        {
            last.source_ids.extend(extra.source_ids);
        }
    }
    for heading in plan {
        if outline.len() >= MIN_SECTIONS {
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
        section.source_ids.truncate(MAX_SECTION_SOURCES);
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
            let (sources, off_topic) = merge_sources(&cx.request, input)?;
            let ids: Vec<String> = sources.iter().map(|s| s.source.id.clone()).collect();
            let schema = object(json!({
                "outline": {
                    "type": "array", "minItems": MIN_SECTIONS, "maxItems": MAX_SECTIONS,
                    "items": object(json!({
                        "heading": self.llm.text(HEADING_CHARS, "the section heading"),
                        // Only the ids given: a model cannot invent one (nor a URL for one).
                        "source_ids": {"type": "array", "minItems": 1, "maxItems": MAX_SECTION_SOURCES, "items": {"type": "string", "enum": ids}},
                    })),
                },
                "key_themes": self.llm.texts(MIN_THEMES, MAX_THEMES, THEME_CHARS, "a key theme"),
            }));
            let mut plan = input.plan.sections.clone();
            plan.extend(plan::planned_sections(&cx.request.topic));
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
                    ANSWER_TOKENS,
                    parsed(|answer: SynthesisAnswer| check_synthesis(answer, &ids, &plan)),
                )
                .await?;
            let (outline, key_themes) = answer.completion.value.clone();
            let synthesis = Synthesis {
                outline,
                key_themes,
                sources,
            };
            let summary = summary_line(&synthesis);
            let mut output = self.llm.output(answer.with(synthesis), summary);
            output.warnings.extend(off_topic.map(|w| (OFF_TOPIC, w)));
            Ok(output)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb_doc(title: &str, text: &str) -> SourceDoc {
        SourceDoc {
            source: api::Source {
                title: title.into(),
                url: format!("https://kb.example/{}", text::slugify(title)),
                kind: api::SourceKind::KnowledgeBase as i32,
                relevance: 1.0,
                ..Default::default()
            },
            section: title.into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_source_that_does_not_name_the_topics_names_is_not_used_even_when_material_is_short() {
        let sources = vec![
            kb_doc(
                "Offices in California",
                "Offices in California favour farmland.",
            ),
            kb_doc(
                "Offices in Sweden",
                "Offices in Sweden favour forestry and top funds.",
            ),
            // Lower case in a link is not the name as written.
            kb_doc(
                "Offices in Oregon",
                "See https://x.example/offices-in-california for more.",
            ),
        ];
        let (kept, warning) = on_topic("The top family offices in California", sources);
        let titles: Vec<&str> = kept.iter().map(|d| d.source.title.as_str()).collect();
        assert_eq!(titles, ["Offices in California"]);
        assert_eq!(warning, None);
    }

    #[test]
    fn a_year_in_the_topic_is_a_name_another_years_report_does_not_carry() {
        let sources = vec![
            kb_doc("RFPs in June 2025", "In June 2025, pensions issued RFPs."),
            kb_doc("RFPs in June 2024", "In June 2024, pensions issued RFPs."),
        ];
        let (kept, _) = on_topic("Investment RFPs issued in June 2025", sources);
        let titles: Vec<&str> = kept.iter().map(|d| d.source.title.as_str()).collect();
        assert_eq!(titles, ["RFPs in June 2025"]);
    }

    #[test]
    fn only_when_no_source_names_them_do_the_others_stand_in_with_a_warning() {
        let sources = vec![
            kb_doc(
                "Offices in Utah",
                "Offices in Utah favour software. Offices in Texas grow.",
            ),
            kb_doc("Offices in Texas", "Offices in Texas favour energy."),
        ];
        let (kept, warning) = on_topic("Family offices in Utah and Texas", sources);
        assert_eq!(kept.len(), 1, "one names both");
        assert_eq!(warning, None);
        let sources = vec![
            kb_doc("Offices in Utah", "Offices in Utah favour software."),
            kb_doc("Offices in Texas", "Offices in Texas favour energy."),
        ];
        let (kept, warning) = on_topic("Family offices in Utah and Texas", sources);
        assert_eq!(kept.len(), 2);
        assert!(warning.is_some_and(|w| w.contains("Texas and Utah")));
    }

    #[test]
    fn sections_are_the_topics_themes_then_angles() {
        assert_eq!(
            plan::planned_sections("The top family offices in California and how they invest"),
            [
                "Top Family Offices in California",
                "How They Invest",
                "Strategy and Allocation",
                "Risks and Trade-offs"
            ]
        );
        assert_eq!(
            plan::planned_sections("Public pension plan commitments in October 2024")[0],
            "Public Pension Plan Commitments in October 2024"
        );
    }
}

/// The answer budget covers the longest answer the schema allows (see [`crate::agents::llm`]).
#[cfg(test)]
#[test]
fn the_token_budget_covers_the_longest_answer() {
    let longest = super::llm::longest_answer_tokens(
        &[
            (MAX_SECTIONS, HEADING_CHARS),
            (MAX_SECTIONS * MAX_SECTION_SOURCES, "S10".len()),
            (MAX_THEMES, THEME_CHARS),
        ],
        MAX_SECTIONS * "{\"heading\":,\"source_ids\":[]},".len() + 30,
    );
    assert!(longest <= ANSWER_TOKENS, "{longest} > {ANSWER_TOKENS}");
}
