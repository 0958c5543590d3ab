//! `content_writer`: the article. Offline, it is assembled from source sentences: the lead,
//! lists and conclusion ([`fixed_parts`]), the main sections filled up to the word budget
//! ([`sections`]), each run of sentences cited ([`citations`]); in revision it leaves out the
//! unsupported sentences and rescales its length. With an LLM, the model writes it, streamed,
//! and repairs what failed ([`LlmWriter`]).
use std::collections::{HashMap, HashSet};

use super::{
    AgentOutput, Draft, OutlineSection, SourceDoc, Synthesis, WritingBrief,
    extract::{Termed, best_of, with_terms},
    offline::extractive,
};
use crate::{
    domain::{
        JobRequest,
        contract::{CONCLUSION, KEY_INSIGHTS, KEY_TAKEAWAYS, Problem, WORD_COUNT_TOLERANCE},
    },
    text,
};
use citations::{paragraphs, prose_words};
use lists::SectionList;
use sections::{fill_sections, section_pools, short_headings};

mod citations;
mod fixed_parts;
mod lists;
mod llm;
mod sections;

pub use llm::LlmWriter;

extractive!(WritingBrief => Draft, |cx, brief| {
    let mut excluded: HashSet<String> = HashSet::new();
    let mut scale = 1.0;
    if let Some(revision) = &brief.revision {
        for problem in &revision.problems {
            match problem {
                Problem::UnsupportedClaim(sentence) => {
                    excluded.insert(sentence.clone());
                }
                Problem::WordCount { actual, target } if *actual > 0 => {
                    scale = (*target as f64 / *actual as f64).clamp(0.5, 2.0);
                }
                _ => {}
            }
        }
    }
    let draft = write_article(&cx.request, &brief.synthesis, &excluded, scale);
    for paragraph in draft.markdown.split_inclusive("\n\n") {
        (cx.deltas)(paragraph);
    }
    let words = prose_words(&draft.markdown);
    Ok(AgentOutput::local(draft, format!("{words} words")))
});

/// Text of the audience up to its first "and", for headings: "Institutional Investors".
fn audience_head(audience: &str) -> String {
    text::title_case(audience.split(" and ").next().unwrap_or(audience).trim())
}

/// Below this target, each part of the article gets one short sentence and the title no
/// subtitle: the fixed structure alone would otherwise exceed the length.
const COMPACT_TARGET: usize = 400;

/// Below this target, the conclusion is a closing line rather than another source sentence.
const TINY_TARGET: usize = 150;

/// Below this target, three main sections instead of four.
const THREE_SECTION_TARGET: usize = 700;

/// Builds the article: title, lead, key insights, the outlined sections filled with source
/// sentences up to the word budget, key takeaways and conclusion. Cites with `[S<n>]`.
/// Short targets get fewer, shorter parts; when the sources run out before a long target,
/// the draft says how far they reach.
fn write_article(
    request: &JobRequest,
    synthesis: &Synthesis,
    excluded: &HashSet<String>,
    scale: f64,
) -> Draft {
    let target = (request.word_count as f64 * scale).round() as usize;
    let mut w = Writer {
        request,
        synthesis,
        target,
        compact: target < COMPACT_TARGET,
        used: excluded.clone(),
        usable: Usable::of(&synthesis.sources),
    };
    let sections = w.sections();
    let headings: Vec<String> = if w.compact {
        short_headings(sections.iter().map(|(s, _)| s.heading.as_str()))
    } else {
        sections.iter().map(|(s, _)| s.heading.clone()).collect()
    };
    // Each main section's first sentence before the lead and the lists take theirs, so that
    // scarce material never leaves a section empty.
    let mut pools = section_pools(&request.topic, synthesis, &sections, &w);
    let (first, _) = fill_sections(&mut pools, &mut w.used, (Vec::new(), 0));
    let title = w.title();
    let lists = w.section_lists(&sections);
    let (insights, takeaways) = w.lists(&sections);
    let lead = w.lead(&headings);
    let conclusion = w.conclusion();
    let fixed = format!(
        "{title} {KEY_INSIGHTS} {KEY_TAKEAWAYS} {CONCLUSION}\n{}\n{}\n{}\n{}",
        lead.join(" "),
        insights.join("\n"),
        takeaways.join("\n"),
        conclusion.join(" ")
    );
    let first_words: usize = first
        .iter()
        .flatten()
        .map(|(s, _)| text::count_words(s))
        .sum();
    let list_words: usize = lists.iter().flatten().map(SectionList::words).sum();
    let fixed_words = prose_words(&fixed)
        + first_words
        + list_words
        + headings.iter().map(|h| text::count_words(h)).sum::<usize>();
    let budget = target.saturating_sub(fixed_words);
    let (bodies, exhausted) = fill_sections(&mut pools, &mut w.used, (first, budget));

    let mut md = format!("# {title}\n\n");
    if !lead.is_empty() {
        md.push_str(&format!("{}\n\n", lead.join(" ")));
    }
    md.push_str(&format!("## {KEY_INSIGHTS}\n\n{}\n\n", insights.join("\n")));
    for ((heading, body), list) in headings.iter().zip(&bodies).zip(&lists) {
        md.push_str(&format!("## {heading}\n\n"));
        for (i, paragraph) in paragraphs(body).iter().enumerate() {
            md.push_str(paragraph);
            md.push_str("\n\n");
            // A section's list after its first paragraph.
            if let (0, Some(list)) = (i, list) {
                md.push_str(&list.markdown());
                md.push_str("\n\n");
            }
        }
    }
    md.push_str(&format!(
        "## {KEY_TAKEAWAYS}\n\n{}\n\n## {CONCLUSION}\n\n{}\n",
        takeaways.join("\n"),
        conclusion.join(" ")
    ));
    let words = prose_words(&md);
    let short = (words as f64) < target as f64 * (1.0 - WORD_COUNT_TOLERANCE);
    Draft {
        markdown: md,
        reachable_words: (exhausted && short).then_some(words),
        cut_off: false,
    }
}

/// The offline writer's state while it builds one article: what it writes for, and the
/// sentences already used (each is used once).
struct Writer<'a> {
    request: &'a JobRequest,
    synthesis: &'a Synthesis,
    target: usize,
    /// A short target: one short sentence a part, no subtitle.
    compact: bool,
    used: HashSet<String>,
    usable: Usable,
}

impl<'a> Writer<'a> {
    /// The most relevant unused sentences of `text`; in a compact article, the shortest
    /// (then most relevant).
    fn pick(&self, doc: &SourceDoc, query: &str, n: usize) -> Vec<String> {
        let mut best = best_of(&self.usable.get(doc), query, usize::MAX, &self.used);
        if self.compact {
            best.sort_by_key(|s| text::count_words(s));
        }
        best.truncate(n);
        best
    }

    /// The outline's sections that have a source, three of them for a short target.
    fn sections(&self) -> Vec<(&'a OutlineSection, &'a SourceDoc)> {
        let synthesis = self.synthesis;
        let source = |id: &str| synthesis.sources.iter().find(|s| s.source.id == id);
        let max_sections = if self.target < THREE_SECTION_TARGET {
            3
        } else {
            4
        };
        synthesis
            .outline
            .iter()
            .filter_map(|s| {
                s.source_ids
                    .first()
                    .and_then(|id| source(id))
                    .map(|d| (s, d))
            })
            .take(max_sections)
            .collect()
    }

    fn title(&self) -> String {
        let topic = text::title_case(&self.request.topic);
        if self.compact {
            topic
        } else {
            format!(
                "{topic}: A Briefing for {}",
                audience_head(&self.request.audience)
            )
        }
    }
}

/// Each source's usable sentences with their terms, split once per article: the writer
/// draws on the same sources for every section, list and paragraph.
struct Usable(HashMap<String, Termed>);

impl Usable {
    fn of(sources: &[SourceDoc]) -> Self {
        let split = sources
            .iter()
            .map(|s| (s.source.id.clone(), with_terms(&s.text)));
        Self(split.collect())
    }

    fn get(&self, doc: &SourceDoc) -> std::borrow::Cow<'_, Termed> {
        match self.0.get(&doc.source.id) {
            Some(sentences) => std::borrow::Cow::Borrowed(sentences),
            None => std::borrow::Cow::Owned(with_terms(&doc.text)),
        }
    }
}
