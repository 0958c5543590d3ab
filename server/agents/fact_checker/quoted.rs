//! Quotations: an extractive article lifts its sources' sentences, and a claim that is one of
//! them, word for word, is reported as quoted (with its source), not as supported.
use std::collections::HashMap;

use super::{ClaimCandidate, Evidence, SourceDoc};

/// A claim's text, as a quotation is compared: lower case, whitespace collapsed, no final
/// punctuation.
fn quotation_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(['.', '!', '?'])
        .to_lowercase()
}

/// A list line without its marker (`- `, `3. `).
fn list_item(line: &str) -> &str {
    let line = line.trim_start_matches(['-', ' ']);
    line.split_once(". ")
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(line, |(_, rest)| rest)
}

impl Evidence<'_> {
    /// The source's sentences, then its list lines, by quotation key (made once a check).
    fn quotations(&self) -> &HashMap<String, String> {
        self.quotations.get_or_init(|| {
            let mut keys = HashMap::new();
            for sentence in self.sentences() {
                keys.entry(quotation_key(&sentence.text))
                    .or_insert_with(|| sentence.text.clone());
            }
            for line in self.source.text.lines().map(list_item) {
                keys.entry(quotation_key(line))
                    .or_insert_with(|| line.to_string());
            }
            keys
        })
    }
}

/// The source (among `candidates`) and sentence that `claim` is, word for word, if any. A
/// list item quotes its source when its text is one of the source's lines.
pub(super) fn quoted_in<'a>(
    claim: &ClaimCandidate,
    candidates: &[&'a Evidence<'a>],
) -> Option<(&'a SourceDoc, &'a str)> {
    let key = quotation_key(&claim.text);
    if key.is_empty() {
        return None;
    }
    candidates.iter().find_map(|evidence| {
        let sentence = evidence.quotations().get(&key)?;
        Some((evidence.source, sentence.as_str()))
    })
}
