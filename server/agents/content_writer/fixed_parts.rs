//! The offline writer's parts around the main sections: the key insights and takeaways
//! lists, the lead paragraph and the conclusion.
use super::{OutlineSection, SourceDoc, TINY_TARGET, Writer, citations::cite_run};
use crate::text;

impl Writer<'_> {
    /// A bullet from `doc`, or from any source once `doc` has no sentence left. A tiny
    /// article's bullets are the main clause of their sentence, where it stands alone.
    fn bullet(&mut self, doc: &SourceDoc, query: &str) -> Option<String> {
        let synthesis = self.synthesis;
        let (sentence, id) = std::iter::once(doc)
            .chain(&synthesis.sources)
            .find_map(|d| Some((self.pick(d, query, 1).pop()?, d.source.id.clone())))?;
        self.used.insert(sentence.clone());
        let sentence = match self.target < TINY_TARGET {
            true => main_clause(&sentence).unwrap_or(sentence),
            false => sentence,
        };
        Some(format!("- {}", cite_run(&[sentence], &id)))
    }

    /// Key insights and key takeaways (sentences that advise), one bullet per section each,
    /// the first of each list before the rest, so scarce material fills both lists.
    pub(super) fn lists(
        &mut self,
        sections: &[(&OutlineSection, &SourceDoc)],
    ) -> (Vec<String>, Vec<String>) {
        let topic = self.request.topic.clone();
        let bullets = if self.compact { 1 } else { sections.len() };
        let takeaway_query = format!("{topic} should must can consider need");
        let (mut insights, mut takeaways) = (Vec::new(), Vec::new());
        for (i, (section, doc)) in sections.iter().take(bullets).enumerate() {
            let insight_query = format!("{topic} {}", section.heading);
            if i == 0 || !insights.is_empty() {
                insights.extend(self.bullet(doc, &insight_query));
            }
            if i == 0 || !takeaways.is_empty() {
                takeaways.extend(self.bullet(doc, &takeaway_query));
            }
        }
        (insights, takeaways)
    }

    /// The lead paragraph. The writer's own sentences carry no user text: a figure in a topic
    /// ("... in 2026") would otherwise become a claim no source can support.
    pub(super) fn lead(&mut self, headings: &[String]) -> Vec<String> {
        let mut lead = Vec::new();
        if self.compact {
            return lead;
        }
        lead.push(coverage(&self.request.topic, headings));
        if let Some(first) = self.synthesis.sources.first() {
            let picked = self.pick(first, &self.request.topic, 2);
            self.used.extend(picked.iter().cloned());
            lead.push(cite_run(&picked, &first.source.id));
        }
        lead.retain(|l| !l.is_empty());
        lead
    }

    pub(super) fn conclusion(&mut self) -> Vec<String> {
        let mut conclusion = Vec::new();
        let sources = &self.synthesis.sources;
        if self.target < TINY_TARGET {
            // No room for one more source sentence: a closing line that claims nothing.
            conclusion.push("Each point above rests on the source it cites.".to_string());
        } else if let Some(last) = sources.get(1).or(sources.first()) {
            let picked = self.pick(last, &self.request.topic, 1);
            self.used.extend(picked.iter().cloned());
            conclusion.push(cite_run(&picked, &last.source.id));
        }
        if !self.compact {
            conclusion.push(
                "Taken together, the evidence points toward disciplined governance, patient implementation and regular review."
                    .to_string(),
            );
        }
        conclusion.retain(|c| !c.is_empty());
        conclusion
    }
}

/// The lead's first sentence: what the article covers, its sections' themes in prose case
/// (a word keeps its capital only where the topic writes one, as names are written), figures
/// left out (the writer's own words make no claim a source would have to support).
fn coverage(topic: &str, headings: &[String]) -> String {
    let names: Vec<&str> = topic
        .split_whitespace()
        .skip(1)
        .filter(|w| w.starts_with(char::is_uppercase))
        .collect();
    let themes: Vec<String> = headings
        .iter()
        .map(|h| {
            let words: Vec<String> = h
                .split_whitespace()
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .map(|w| {
                    let acronym = w.chars().skip(1).any(char::is_uppercase);
                    match acronym || names.contains(&w) {
                        true => w.to_string(),
                        false => w.to_lowercase(),
                    }
                })
                .collect();
            words.join(" ")
        })
        .filter(|t| !t.is_empty())
        .collect();
    match themes.split_last() {
        None => "What follows sets out the evidence, with a source for every statement.".into(),
        Some((last, [])) => {
            format!("This article covers {last}, with a source for every statement.")
        }
        Some((last, rest)) => format!(
            "This article covers {}; and {last}, with a source for every statement.",
            rest.join("; ")
        ),
    }
}

/// Openings of a clause that cannot stand alone as a sentence.
const SUBORDINATE_STARTS: &[&str] = &[
    "although", "though", "while", "because", "when", "if", "as", "since", "after", "before",
    "unless", "for", "in", "by", "with", "despite", "over", "under", "at", "on", "from",
];

/// The part of a sentence before its first comma, as a sentence of its own, when it has at
/// least five words and does not open with a subordinating word ("Although ...").
fn main_clause(sentence: &str) -> Option<String> {
    let clause = &sentence[..sentence.find(", ")?];
    let first = clause.split_whitespace().next()?.to_lowercase();
    (text::count_words(clause) >= 5 && !SUBORDINATE_STARTS.contains(&first.as_str()))
        .then(|| format!("{clause}."))
}
