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
    extract::usable_sentences,
    llm::{Checked, LlmAgent, describe_sources, llm_agent, object, parsed},
    offline::extractive,
};
use crate::{
    domain::{JobRequest, contract},
    kb,
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

/// Knowledge-base sources on topic: a document about Australia is not evidence for an
/// article about Texas. The topic's names (words the sources write with a capital: places,
/// firms, acronyms) must all appear in a source. Only when the documents that name them hold
/// too little prose for `target_words` do the others follow them, and the warning says so.
/// Web results are left as the search engine ranked them.
fn on_topic(
    topic: &str,
    target_words: usize,
    sources: Vec<SourceDoc>,
) -> (Vec<SourceDoc>, Option<String>) {
    let is_kb = |doc: &SourceDoc| doc.source.kind() == api::SourceKind::KnowledgeBase;
    let texts: Vec<&str> = sources
        .iter()
        .filter(|d| is_kb(d))
        .map(|d| d.text.as_str())
        .collect();
    let names: BTreeSet<String> = text::terms(topic)
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()) && is_proper(w, &texts))
        .collect();
    if names.is_empty() {
        return (sources, None);
    }
    let names_all = |doc: &SourceDoc| {
        !is_kb(doc) || {
            let has: BTreeSet<String> = text::terms(&format!(
                "{} {} {}",
                doc.source.title, doc.section, doc.text
            ))
            .collect();
            names.is_subset(&has)
        }
    };
    let (on, off): (Vec<SourceDoc>, Vec<SourceDoc>) = sources.into_iter().partition(names_all);
    let material: usize = on
        .iter()
        .flat_map(|d| usable_sentences(&d.text))
        .map(|s| text::count_words(&s))
        .sum();
    if off.is_empty() || material >= target_words {
        return (on, None);
    }
    let named = on.iter().filter(|d| is_kb(d)).count();
    let warning = format!(
        "{named} knowledge-base document(s) mention {} (about {material} words of prose); the article also draws on sources that do not",
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
    let (mut merged, off_topic) = on_topic(&request.topic, request.word_count, merged);
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
    // Main sections: the sections of the best sources, one per source while they last.
    let mut outline: Vec<OutlineSection> = Vec::new();
    for doc in merged
        .iter()
        .filter(|d| d.source.relevance >= MIN_SECTION_RELEVANCE)
    {
        if outline.len() == MAX_SECTIONS {
            break;
        }
        let heading = if doc.section == doc.source.title || kb::is_generic_heading(&doc.section) {
            doc.source.title.clone()
        } else {
            doc.section.clone()
        };
        if is_fixed_heading(&heading)
            || outline
                .iter()
                .any(|s| s.heading.eq_ignore_ascii_case(&heading))
        {
            continue;
        }
        outline.push(OutlineSection {
            heading,
            source_ids: vec![doc.source.id.clone()],
        });
    }
    // Fewer than three sources: the planned sections, drawing on every source.
    for planned in &input.plan.sections {
        if outline.len() >= MIN_SECTIONS {
            break;
        }
        outline.push(OutlineSection {
            heading: planned.clone(),
            source_ids: merged.iter().map(|d| d.source.id.clone()).collect(),
        });
    }
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
