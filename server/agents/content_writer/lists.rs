//! Lists in the offline article: a source's list (a ranking, a table of records) is evidence
//! as it stands, so it is rendered as a Markdown list under the section it serves, every item
//! cited, never lifted as a "sentence".
use std::collections::{BTreeSet, HashSet};

use super::{OutlineSection, SourceDoc, Writer, citations::cite_run};
use crate::{
    agents::extract::{ListRun, list_runs},
    text,
};

/// Items of one list in the article.
const MAX_ITEMS: usize = 10;
/// An item longer than this is prose, not a list line.
const MAX_ITEM_WORDS: usize = 40;

/// A list chosen for a section: its items, numbered or not, and the source it comes from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SectionList {
    pub(super) items: Vec<String>,
    pub(super) numbered: bool,
    pub(super) source_id: String,
}

impl SectionList {
    /// The list as Markdown lines, each item cited.
    pub(super) fn markdown(&self) -> String {
        let lines: Vec<String> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let cited = cite_run(std::slice::from_ref(item), &self.source_id);
                match self.numbered {
                    true => format!("{}. {cited}", i + 1),
                    false => format!("- {cited}"),
                }
            })
            .collect();
        lines.join("\n")
    }

    pub(super) fn words(&self) -> usize {
        self.items.iter().map(|i| text::count_words(i)).sum()
    }
}

/// Whether a source's list line was numbered there (`3. Firm`), judged from its text.
fn numbered_in(doc: &SourceDoc, item: &str) -> bool {
    doc.text.lines().any(|line| {
        line.split_once(". ")
            .is_some_and(|(n, rest)| n.bytes().all(|b| b.is_ascii_digit()) && rest == item)
    })
}

impl Writer<'_> {
    /// For each section, the list of its own source that best answers the topic and the
    /// section (by the terms of the line that introduces it and of its items), if one
    /// shares at least two of their terms; each list used once, together at most a third of
    /// the target. None in a compact article.
    pub(super) fn section_lists(
        &mut self,
        sections: &[(&OutlineSection, &SourceDoc)],
    ) -> Vec<Option<SectionList>> {
        let mut taken: HashSet<(String, usize)> = HashSet::new();
        let mut words = 0;
        let budget = self.target / 3;
        let topic = self.request.topic.clone();
        sections
            .iter()
            .map(|(section, doc)| {
                if self.compact {
                    return None;
                }
                let query: BTreeSet<String> =
                    text::terms(&format!("{topic} {}", section.heading)).collect();
                // A list of one entity's attributes ("- AUM: $3.4B") says nothing without
                // the entity it sits under: only lists of several things are taken.
                let runs: Vec<ListRun> = list_runs(&doc.text)
                    .into_iter()
                    .filter(|run| !run.items.iter().all(|item| is_attribute(item)))
                    .collect();
                let (index, run) = runs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !taken.contains(&(doc.source.id.clone(), *i)))
                    .map(|(i, run)| (score(run, &query), i, run))
                    .filter(|(score, _, _)| *score >= 2)
                    .max_by_key(|(score, i, _)| (*score, std::cmp::Reverse(*i)))
                    .map(|(_, i, run)| (i, run))?;
                let items: Vec<String> = run
                    .items
                    .iter()
                    .filter(|item| {
                        text::count_words(item) <= MAX_ITEM_WORDS && !self.used.contains(*item)
                    })
                    .take(MAX_ITEMS)
                    .cloned()
                    .collect();
                let list = SectionList {
                    numbered: items.first().is_some_and(|item| numbered_in(doc, item)),
                    items,
                    source_id: doc.source.id.clone(),
                };
                if list.items.len() < 3 || words + list.words() > budget {
                    return None;
                }
                words += list.words();
                taken.insert((doc.source.id.clone(), index));
                self.used.extend(list.items.iter().cloned());
                Some(list)
            })
            .collect()
    }
}

/// `Key: value`, the key a word or two: an attribute of something named elsewhere.
fn is_attribute(item: &str) -> bool {
    item.split_once(':')
        .is_some_and(|(key, _)| !key.is_empty() && key.split_whitespace().count() <= 2)
}

/// Terms of the query found in a list's introducing line and items.
fn score(run: &ListRun, query: &BTreeSet<String>) -> usize {
    let mut terms: BTreeSet<String> = text::terms(&run.context).collect();
    for item in &run.items {
        terms.extend(text::terms(item));
    }
    terms.intersection(query).count()
}
