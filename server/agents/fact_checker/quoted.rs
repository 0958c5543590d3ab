//! Quotations: an extractive article lifts its sources' sentences, and a claim that is one of
//! them, word for word, is reported as quoted (with its source), not as supported.
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
        let sentence = evidence
            .sentences()
            .iter()
            .find(|s| quotation_key(&s.text) == key)
            .map(|s| s.text.as_str())
            .or_else(|| {
                evidence
                    .source
                    .text
                    .lines()
                    .map(|line| line.trim_start_matches(['-', ' ']))
                    .map(|line| {
                        line.split_once(". ")
                            .filter(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()))
                            .map_or(line, |(_, rest)| rest)
                    })
                    .find(|line| quotation_key(line) == key)
            })?;
        Some((evidence.source, sentence))
    })
}
