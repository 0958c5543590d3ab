//! Extraction helpers of the offline agents: which sentences of a source can be lifted
//! (sentence filtering), which best match a query (term overlap), and what a finished
//! article's lead and lists say.
use std::collections::{BTreeSet, HashSet};

use crate::text;

/// Sentences that lean on a previous one read badly when lifted out; skip them.
const DANGLING_STARTS: &[&str] = &[
    "this ", "it ", "these ", "they ", "such ", "however", "also", "that ", "those ", "he ", "she ",
];

/// A line that is not prose: a list item, a table row, a heading.
fn is_structured_line(line: &str) -> bool {
    let line = line.trim_start();
    let numbered = line.split_once(['.', ')']).is_some_and(|(n, rest)| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with(' ')
    });
    numbered || line.starts_with(['-', '*', '+', '|', '#'])
}

/// The prose of a passage: list items, table rows and headings become paragraph breaks, so
/// that no two of them ever run together into one "sentence".
fn prose_of(text: &str) -> String {
    text.lines()
        .map(|line| if is_structured_line(line) { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sentences worth lifting: complete prose, not leaning on a previous sentence, not a list
/// or a run of records fused into one "sentence"; each once.
pub(super) fn usable_sentences(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text::sentences(&prose_of(text))
        .into_iter()
        .filter(|s| {
            let lower = s.to_lowercase();
            text::count_words(s) >= 6
                && s.ends_with(['.', '!', '?'])
                && !s.starts_with(['-', '#', '|'])
                && !DANGLING_STARTS.iter().any(|d| lower.starts_with(d))
                && !s.starts_with(char::is_lowercase)
                && !is_fused_list(s)
                && !speaks_of_itself(&lower)
                && seen.insert(lower)
        })
        .collect()
}

/// What a web page says of itself or asks of its reader, not of its subject: "In this
/// article we ...", "By the end of this list ...", "book a demo".
const SELF_REFERENCES: &[&str] = &[
    "this article",
    "this list",
    "this post",
    "this blog",
    "this guide",
    "by the end",
    "read on",
    "below we",
    "listed below",
    "see below",
    "book a demo",
    "request a demo",
    "schedule a demo",
    "sign up",
    "subscribe",
    "free trial",
    "contact us",
    "click here",
    "learn more",
];

/// A sentence (in lower case) about the page it stands on or a call to action.
fn speaks_of_itself(lower: &str) -> bool {
    SELF_REFERENCES.iter().any(|r| lower.contains(r))
}

/// A list marker standing as a word: `3.`, `3)`, `#3`.
pub fn is_list_marker(word: &str) -> bool {
    let digits = word
        .strip_prefix('#')
        .or_else(|| word.strip_suffix(['.', ')']))
        .unwrap_or("");
    !digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Text that is list items or records run together: two list markers, or two `Key:` labels
/// (a capitalised word before a colon), in one sentence.
pub fn is_fused_list(sentence: &str) -> bool {
    // One pass, no allocation but a reused buffer: it runs for every sentence of every source.
    let (mut words, mut markers, mut labels, mut money, mut stopwords) = (0usize, 0, 0, 0, 0);
    let mut after_marker = false;
    let mut lower = String::new();
    for word in sentence.split_whitespace() {
        words += 1;
        markers += usize::from(after_marker);
        after_marker = is_list_marker(word);
        labels += usize::from(
            word.len() > 2 && word.ends_with(':') && word.starts_with(char::is_uppercase),
        );
        money += usize::from(word.starts_with(['$', '€', '£']));
        if word.len() <= 7 {
            lower.clear();
            lower.extend(word.chars().flat_map(char::to_lowercase));
            stopwords += usize::from(text::is_stopword(&lower));
        }
    }
    // Records run together without markers ("$200,000,000 Fund A $300,000,000 Plan B ..."),
    // or names after names with hardly a stopword (one in ten words) between them.
    markers >= 2 || labels >= 2 || money >= 3 || (words >= 12 && stopwords * 10 < words)
}

/// A run of list lines in a source, with the line before it (what the list is of).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ListRun {
    pub(super) context: String,
    pub(super) items: Vec<String>,
}

/// The lists of a source's text: runs of at least three `- ` or `3. ` lines, each item
/// without its marker; table rows are not taken.
pub(super) fn list_runs(text: &str) -> Vec<ListRun> {
    let mut runs = Vec::new();
    let mut context = String::new();
    let mut items: Vec<String> = Vec::new();
    let mut close = |items: &mut Vec<String>, context: &str| {
        if items.len() >= 3 {
            runs.push(ListRun {
                context: context.to_string(),
                items: std::mem::take(items),
            });
        }
        items.clear();
    };
    for line in text.lines().map(str::trim) {
        let item = line.strip_prefix("- ").or_else(|| {
            let (n, rest) = line.split_once(". ")?;
            is_list_marker(&format!("{n}.")).then_some(rest)
        });
        match item {
            Some(item) if !item.trim().is_empty() => items.push(item.trim().to_string()),
            _ if line.is_empty() && !items.is_empty() => {}
            _ => {
                close(&mut items, &context);
                if !line.is_empty() {
                    context = line.trim_start_matches('#').trim().to_string();
                }
            }
        }
    }
    close(&mut items, &context);
    runs
}

/// The `n` sentences of `text` sharing most terms with `query`, not in `used`, best first.
pub(super) fn best_sentences(
    text: &str,
    query: &str,
    n: usize,
    used: &HashSet<String>,
) -> Vec<String> {
    best_of(&with_terms(text), query, n, used)
}

/// A text's usable sentences, each with its terms.
pub(super) type Termed = Vec<(String, Vec<String>)>;

pub(super) fn with_terms(text: &str) -> Termed {
    usable_sentences(text)
        .into_iter()
        .map(|s| {
            let terms = text::terms(&s).collect();
            (s, terms)
        })
        .collect()
}

/// [`best_sentences`] of sentences already split.
pub(super) fn best_of(
    sentences: &Termed,
    query: &str,
    n: usize,
    used: &HashSet<String>,
) -> Vec<String> {
    let query_terms: BTreeSet<String> = text::terms(query).collect();
    let mut scored: Vec<(usize, usize, &String)> = sentences
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| !used.contains(s))
        .map(|(i, (s, terms))| {
            let overlap = terms.iter().filter(|t| query_terms.contains(*t)).count();
            (overlap, i, s)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(n)
        .map(|(_, _, s)| s.clone())
        .collect()
}

/// Bullet items of a `##` section, citations removed.
pub(super) fn section_bullets(markdown: &str, heading: &str) -> Vec<String> {
    let mut inside = false;
    let mut bullets = Vec::new();
    for line in markdown.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.trim() == heading;
        } else if inside && let Some(item) = line.strip_prefix("- ") {
            bullets.push(text::strip_links(item).0);
        }
    }
    bullets
}

/// The lead paragraph (between the title and the first section), citations removed.
pub(super) fn lead_sentences(markdown: &str) -> Vec<String> {
    let lead = markdown
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty() && !p.starts_with('#'))
        .unwrap_or_default();
    text::sentences(&text::strip_links(lead).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_records_fused_into_a_sentence_are_not_lifted() {
        let text = "Families here often built their wealth in farming and real estate. \
                    Bayshore AUM: $9B Metro: Fresno 2. Emerson AUM: $2B Metro: Fresno 3. Alder. \
                    $200,000,000 Alder Fund $300,000,000 Birch Plan $150,000,000 Cedar Trust rose. \
                    In this article we list the largest family offices in the state. \
                    Families here often built their wealth in farming and real estate.";
        assert_eq!(
            usable_sentences(text),
            ["Families here often built their wealth in farming and real estate."]
        );
        assert!(is_fused_list("Ranked: 1. Alder Fund 2. Birch Fund."));
        assert!(!is_fused_list("Rates rose 2.5% in 2024, to 3.1% by March."));
    }

    #[test]
    fn list_runs_come_with_the_line_that_introduces_them() {
        let text = "The largest offices in the state:\n\n1. Alder — AUM: $2B\n2. Birch — AUM: $1B\n3. Cedar — AUM: $1B\n\nMore prose.\n- one\n- two\n";
        let runs = list_runs(text);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].context, "The largest offices in the state:");
        assert_eq!(runs[0].items[2], "Cedar — AUM: $1B");
    }
}
