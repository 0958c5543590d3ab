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

/// Sentences worth lifting: complete prose, not leaning on a previous sentence.
pub(super) fn usable_sentences(text: &str) -> Vec<String> {
    text::sentences(&prose_of(text))
        .into_iter()
        .filter(|s| {
            let lower = s.to_lowercase();
            text::count_words(s) >= 6
                && s.ends_with(['.', '!', '?'])
                && !s.starts_with(['-', '#', '|'])
                && !DANGLING_STARTS.iter().any(|d| lower.starts_with(d))
        })
        .collect()
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
